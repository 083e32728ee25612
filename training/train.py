"""Train the reference fleet: tiny Llama tiers S < M < L, their quantized variants, the manifest.

Reproducible from a seed on CPU torch (two threads, deterministic algorithms)::

    autopilot fleet train [--out DIR] [--seed N] [--quick]
    python -m training.train [--out DIR] [--seed N] [--quick]

Steps (documented in ``docs/reference_fleet.md``):

1. Draw training tasks from ``workload.tasks`` (train split only, uniform over
   families x difficulties), format them with ``format_example`` and check that the
   character tokenizer covers every character.
2. Train each tier of ``TIER_SHAPES`` from ``seed + rank`` with AdamW, warm-up then cosine
   decay, loss only on the answer and its end marker. The ladder comes from both size and
   training steps.
3. Save the base variant (``bf16``) and the ``int8`` / ``int4`` weight round-trips of each
   tier under ``<out>/models/<tier>/<variant>/`` (config.json, generation_config.json,
   model.safetensors, tokenizer files).
4. Write ``<out>/fleet.yaml`` (a FleetManifest pinning every file by sha256, weights paths
   relative to the manifest) and load it back to validate it.
5. Measure the competence ladder on held-out tasks (``training.ladder``) and write
   ``<out>/ladder.json`` and ``<out>/ladder.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serving.testing import TINY_ECONOMICS
from training.model import (
    BOS,
    DEFAULT_SEED,
    EOS,
    PAD,
    TIER_SHAPES,
    VOCAB,
    TierShape,
    build_tokenizer,
    check_coverage,
    llama_config,
    optimizer_step,
    warmup_cosine_lr,
)
from training.quantize import QUANT_BITS, quantize_model_
from workload.tasks import format_example, iter_tasks

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_SEED",
    "ECONOMICS",
    "TrainConfig",
    "build_manifest",
    "encode_examples",
    "main",
    "quick_shapes",
    "run",
    "train_tier",
]

DEFAULT_OUT = Path(__file__).parent / "fleet"
BASE_VARIANT = "bf16"
STORAGE_DTYPE = "bfloat16"  # vLLM's CPU build loads bf16 on AVX2 (checked; docs say how)
THREADS = 2
TRAIN_TASKS = 120_000  # pool drawn once and sampled with replacement by every tier
MAX_LEN = 96  # <bos> + prompt (<= 64) + answer (<= 24) + "\n" + <eos> fits
IGNORE = -100

# The practice's illustrative tier table (serving.testing.TINY_ECONOMICS, stated as data in
# controlplane/starter/fleet.yaml): $2.50/GPU-hour, effective 6000 / 2200 / 700 tokens/s on
# 1 / 2 / 8 GPUs, as (gpus, tokens/s) per tier. Weight-only int8 / int4 variants get
# x1.6 / x2.2 effective tokens/s: stand-in figures for a GPU fleet, not measurements.
USD_PER_GPU_HOUR = TINY_ECONOMICS["S"]["usd_per_gpu_hour"]
ECONOMICS: dict[str, tuple[float, float]] = {
    tier: (e["gpus"], float(e["decode_tokens_per_s"])) for tier, e in TINY_ECONOMICS.items()}
VARIANT_SPEEDUP: dict[str, float] = {BASE_VARIANT: 1.0, "int8": 1.6, "int4": 2.2}


@dataclass(frozen=True)
class TrainConfig:
    out: Path = DEFAULT_OUT
    seed: int = DEFAULT_SEED
    quick: bool = False
    ladder_per_cell: int = 40  # held-out tasks per family x difficulty cell
    evaluator: str = "auto"  # "vllm", "transformers" or "auto" (vllm when importable)
    measure_ladder: bool = True
    # Retrain only these tiers and keep the others' saved variants (each tier depends only
    # on the seed, its shape and the task pool, so the result equals a full run's).
    only_tiers: tuple[str, ...] | None = None


def quick_shapes() -> tuple[TierShape, ...]:
    """The --quick ladder: the real shapes at a handful of steps (tests, smoke runs)."""
    return tuple(replace(s, steps=3 + 2 * i, batch_size=8) for i, s in enumerate(TIER_SHAPES))


def _log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------ data
def encode_examples(texts: list[str], prompt_lengths: list[int]) -> tuple[Any, Any]:
    """(input ids, labels) tensors [n, MAX_LEN]: <bos> text <eos>, right-padded with <pad>.

    Labels are IGNORE except on the answer, its end marker and <eos>: the loss teaches the
    answer, not the (random) prompt. Character ids are the tokenizer's (``VOCAB``); the
    tests check that ``build_tokenizer`` encodes identically.
    """
    import torch

    ids = torch.full((len(texts), MAX_LEN), VOCAB[PAD], dtype=torch.long)
    labels = torch.full((len(texts), MAX_LEN), IGNORE, dtype=torch.long)
    for row, (text, plen) in enumerate(zip(texts, prompt_lengths, strict=True)):
        seq = [VOCAB[BOS], *(VOCAB[ch] for ch in text), VOCAB[EOS]]
        if len(seq) > MAX_LEN:
            raise ValueError(f"example of {len(seq)} tokens exceeds MAX_LEN {MAX_LEN}: {text!r}")
        ids[row, : len(seq)] = torch.tensor(seq)
        # Position p predicts token p+1 (transformers shifts labels itself), so labels hold
        # the token ids of the answer part: everything after <bos> + prompt.
        start = 1 + plen
        labels[row, start : len(seq)] = ids[row, start : len(seq)]
    return ids, labels


def training_pool(seed: int, n: int,
                  difficulty_weights: tuple[float, float, float] | None = None
                  ) -> tuple[Any, Any, Any]:
    """``n`` train-split tasks from ``seed`` (uniform over families x difficulties unless
    ``difficulty_weights`` is given), encoded; (ids, labels, lengths)."""
    from workload.tasks import DIFFICULTIES, FAMILIES

    mix = None
    if difficulty_weights is not None and len(set(difficulty_weights)) > 1:
        mix = {(f, d): w for f in FAMILIES for d, w in zip(DIFFICULTIES, difficulty_weights,
                                                           strict=True) if w > 0}
    tasks = []
    for task in iter_tasks(seed=seed, split="train", mix=mix):
        tasks.append(task)
        if len(tasks) >= n:
            break
    texts = [format_example(t) for t in tasks]
    check_coverage(texts)
    ids, labels = encode_examples(texts, [len(t.prompt) for t in tasks])
    import torch

    lengths = torch.tensor([len(t) + 2 for t in texts])
    return ids, labels, lengths


# --------------------------------------------------------------------------- training
def _lr_at(step: int, total: int, peak: float) -> float:
    return warmup_cosine_lr(step, total, peak, warmup_divisor=20)  # 5% warm-up


def train_tier(shape: TierShape, pool: tuple[Any, Any, Any], *, seed: int) -> tuple[Any, dict]:
    """Train one tier from ``seed``; returns (fp32 model, training record)."""
    import torch
    from transformers import LlamaForCausalLM

    ids, labels, lengths = pool
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape, dtype="float32"))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=shape.lr, betas=(0.9, 0.98),
                                  weight_decay=0.01)
    sampler = torch.Generator().manual_seed(seed)
    # Length-bucketed batches: examples sorted by length (random tie order) and cut into
    # batch-sized chunks, one random chunk per step. Padding, and so compute, roughly
    # halves against random batches, which matters on two shared cores.
    tiebreak = torch.rand(ids.shape[0], generator=sampler)
    order = torch.argsort(lengths.double() + tiebreak.double(), stable=True)
    chunks = order[: (len(order) // shape.batch_size) * shape.batch_size].view(
        -1, shape.batch_size)
    params = sum(p.numel() for p in model.parameters())
    _log(f"[{shape.name}] {params:,} parameters, {shape.steps} steps x batch {shape.batch_size}")
    started = time.perf_counter()
    losses: list[float] = []
    every = max(1, shape.steps // 20)
    for step in range(shape.steps):
        pick = chunks[int(torch.randint(0, chunks.shape[0], (1,), generator=sampler))]
        width = int(lengths[pick].max())
        batch_ids, batch_labels = ids[pick, :width], labels[pick, :width]
        mask = (batch_ids != VOCAB[PAD]).long()
        loss = model(input_ids=batch_ids, attention_mask=mask, labels=batch_labels).loss
        losses.append(optimizer_step(model, optimizer, loss, _lr_at(step, shape.steps, shape.lr)))
        if step % every == 0 or step == shape.steps - 1:
            recent = losses[-every:]
            _log(f"[{shape.name}] step {step + 1}/{shape.steps} loss "
                 f"{sum(recent) / len(recent):.4f} lr {_lr_at(step, shape.steps, shape.lr):.2e} "
                 f"{time.perf_counter() - started:.0f}s")
    model.eval()
    record = {
        "parameters": params,
        "steps": shape.steps,
        "batch_size": shape.batch_size,
        "peak_lr": shape.lr,
        "seed": seed,
        "final_loss": round(sum(losses[-every:]) / len(losses[-every:]), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return model, record


# ---------------------------------------------------------------------------- saving
def _previous_records(out: Path) -> dict[str, Any]:
    path = out / "training.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("tiers", {})


def _checkpoint_record(out: Path, tier: str, record: dict[str, Any]) -> None:
    path = out / "training.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    data.setdefault("tiers", {})[tier] = record
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _kept_tier_files(models_dir: Path, tier: str) -> dict[tuple[str, str], dict[str, str]]:
    from contracts.manifest import sha256_file

    kept = {}
    for variant in (BASE_VARIANT, *QUANT_BITS):
        directory = models_dir / tier / variant
        if not (directory / "model.safetensors").is_file():
            raise RuntimeError(f"tier {tier}: {directory} has no saved weights to keep; "
                               "train it too")
        kept[(tier, variant)] = {p.name: sha256_file(p) for p in sorted(directory.iterdir())
                                 if p.is_file()}
    return kept


def save_variant(model: Any, tokenizer: Any, directory: Path) -> dict[str, str]:
    """Save model (bf16 safetensors) and tokenizer; returns {relative file: sha256}."""
    import torch

    from contracts.manifest import sha256_file

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    to_save = model.to(getattr(torch, STORAGE_DTYPE))
    to_save.config.dtype = STORAGE_DTYPE
    to_save.generation_config.do_sample = False
    to_save.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    model.to(torch.float32)
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


def build_manifest(shapes: tuple[TierShape, ...], files: dict[tuple[str, str], dict[str, str]],
                   *, seed: int, quick: bool) -> Any:
    """The FleetManifest of the trained variants (weights relative to the manifest dir)."""
    from contracts.manifest import Economics, FleetManifest, FleetMetadata, FleetSpec, Tier, Variant

    tiers = []
    for rank, shape in enumerate(shapes):
        gpus, rate = ECONOMICS[shape.name]
        variants = []
        for variant in (BASE_VARIANT, *QUANT_BITS):
            tps = rate * VARIANT_SPEEDUP[variant]
            variants.append(Variant(
                name=variant,
                weights=f"models/{shape.name}/{variant}",
                files=files[(shape.name, variant)],
                economics=Economics(gpus=gpus, usd_per_gpu_hour=USD_PER_GPU_HOUR,
                                    prefill_tokens_per_s=tps, decode_tokens_per_s=tps),
            ))
        tiers.append(Tier(name=shape.name, rank=rank, model=shape.model,
                          stands_in_for=shape.stands_in_for, default_variant=BASE_VARIANT,
                          variants=tuple(variants)))
    description = (
        f"Reference fleet trained by training/train.py (seed {seed}"
        f"{', --quick' if quick else ''}). Economics are stand-in figures from the practice's "
        "illustrative tier table ($2.50/GPU-hour; 6000/2200/700 tokens/s on 1/2/8 GPUs); the "
        "int8/int4 weight round-trip variants carry x1.6/x2.2 effective tokens/s, also "
        "stand-ins, not measurements of these CPU models."
    )
    return FleetManifest(metadata=FleetMetadata(name="reference-fleet", description=description),
                         spec=FleetSpec(tiers=tuple(tiers)))


# ------------------------------------------------------------------------------- run
def run(config: TrainConfig) -> dict[str, Any]:
    """Train, save, write the manifest and (optionally) the ladder. Returns a summary."""
    import torch

    from contracts.manifest import load_fleet, resolve_path, save_fleet, verify_files

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    shapes = quick_shapes() if config.quick else TIER_SHAPES
    unknown = sorted(set(config.only_tiers or ()) - {s.name for s in shapes})
    if unknown:
        raise ValueError(f"tiers: unknown tier(s) {unknown} (known: {[s.name for s in shapes]})")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pool_size = 2_000 if config.quick else TRAIN_TASKS
    _log(f"drawing {pool_size:,} train-split tasks (seed {config.seed})")
    pools: dict[tuple[float, ...], Any] = {}

    def pool_for(shape: TierShape) -> Any:
        key = tuple(shape.difficulty_weights) if not shape.uniform_mix else ()
        if key not in pools:
            pools[key] = training_pool(config.seed, pool_size, shape.difficulty_weights)
        return pools[key]
    tokenizer = build_tokenizer()

    files: dict[tuple[str, str], dict[str, str]] = {}
    records: dict[str, Any] = {}
    models_dir = out / "models"
    previous = _previous_records(out)
    for rank, shape in enumerate(shapes):
        if config.only_tiers is not None and shape.name not in config.only_tiers:
            files.update(_kept_tier_files(models_dir, shape.name))
            if shape.name not in previous:
                raise RuntimeError(f"tier {shape.name}: no record in {out / 'training.json'} "
                                   "to keep; train it too")
            kept = previous[shape.name]
            if (kept.get("shape"), kept.get("seed"), kept.get("train_pool_tasks")) != (
                    shape.to_dict(), config.seed + rank, pool_size):
                raise RuntimeError(f"tier {shape.name}: its shape, budget, seed or task pool "
                                   "changed since it was trained; train it too")
            records[shape.name] = previous[shape.name]
            _log(f"[{shape.name}] kept the saved variants")
            continue
        model, record = train_tier(shape, pool_for(shape), seed=config.seed + rank)
        record["shape"] = shape.to_dict()
        record["quantization_rel_error"] = {}
        files[(shape.name, BASE_VARIANT)] = save_variant(
            model, tokenizer, models_dir / shape.name / BASE_VARIANT)
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        for variant, bits in QUANT_BITS.items():
            model.load_state_dict(base_state)
            errors = quantize_model_(model, bits)
            record["quantization_rel_error"][variant] = round(
                sum(errors.values()) / len(errors), 5)
            files[(shape.name, variant)] = save_variant(
                model, tokenizer, models_dir / shape.name / variant)
        record["train_pool_tasks"] = pool_size
        records[shape.name] = record
        _checkpoint_record(out, shape.name, record)  # a killed run keeps finished tiers
        _log(f"[{shape.name}] saved {BASE_VARIANT}, {', '.join(QUANT_BITS)} "
             f"(rel. weight error {record['quantization_rel_error']})")
    train_seconds = round(sum(r["train_seconds"] for r in records.values()), 1)
    wall_seconds = round(time.perf_counter() - started, 1)

    manifest = build_manifest(shapes, files, seed=config.seed, quick=config.quick)
    manifest_path = save_fleet(manifest, out / "fleet.yaml")
    loaded = load_fleet(manifest_path)  # validates the document we just wrote
    for tier in loaded.tiers:
        for variant in tier.variants:
            problems = verify_files(resolve_path(variant.weights, out), variant.files)
            if problems:
                raise RuntimeError(f"{tier.name}/{variant.name}: {problems}")
    summary = {
        "seed": config.seed,
        "quick": config.quick,
        "threads": THREADS,
        "train_pool_tasks": pool_size,
        "train_seconds_total": train_seconds,
        "wall_seconds_this_run": wall_seconds,
        "retrained_tiers": list(config.only_tiers or [s.name for s in shapes]),
        "storage_dtype": STORAGE_DTYPE,
        "tiers": records,
        "manifest": str(manifest_path),
        "manifest_hash": loaded.content_hash,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _log(f"trained {len(shapes)} tiers in {train_seconds:.0f}s; manifest {manifest_path}")

    if config.measure_ladder:
        from training.ladder import measure_ladder

        ladder = measure_ladder(manifest_path, per_cell=config.ladder_per_cell,
                                seed=config.seed + 1000, evaluator=config.evaluator)
        summary["ladder_evaluator"] = ladder["evaluator"]
        summary["ladder_seconds"] = ladder["seconds"]
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--quick", action="store_true", help="a few steps per tier (tests)")
    parser.add_argument("--evaluator", choices=("auto", "vllm", "transformers"), default="auto")
    parser.add_argument("--per-cell", type=int, default=None,
                        help="held-out tasks per family x difficulty (default 40, quick 4)")
    parser.add_argument("--no-ladder", action="store_true", help="skip the ladder measurement")
    parser.add_argument("--tiers", default=None,
                        help="comma-separated tiers to retrain; the others' saved weights are "
                             "kept (default: all)")
    args = parser.parse_args(argv)
    per_cell = args.per_cell if args.per_cell is not None else (4 if args.quick else 40)
    run(TrainConfig(out=args.out, seed=args.seed, quick=args.quick, ladder_per_cell=per_cell,
                    evaluator=args.evaluator, measure_ladder=not args.no_ladder,
                    only_tiers=tuple(args.tiers.split(",")) if args.tiers else None))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
