"""The distillation job: a LoRA adapter for a small tier, trained on verified outputs.

``run_distillation`` is the whole job for one family (docs/distillation.md):

1. the training examples (``serving.collector``: verified outputs the gateway kept, topped
   up by ``teacher_examples``, the top tier's own verified answers on train-split tasks)
   are de-duplicated by prompt hash, gate-suite prompts are dropped (checked again here),
   and capped, in a deterministic order (``plan_examples``);
2. ``train_and_evaluate`` runs as a Ray task (a cluster when there is one, a local Ray
   otherwise; ``executor="inline"`` skips Ray): it checks the base variant's pinned
   weights, trains a LoRA (peft; rank <= 16 on q/k/v/o/gate/up/down projections) from a
   seed with deterministic algorithms, measures the small tier's pass rate on held-out
   tasks of the family before and after (``training.decode.greedy_decode``, the stop rule
   of serving and the ladder), and returns the adapter's files as bytes (no shared disk
   needed);
3. the adapter is written in the layout vLLM's LoRA loader reads (adapter_config.json +
   adapter_model.safetensors) and registered in a *copy* of the fleet manifest, every file
   pinned by sha256 (``register_adapter``); the source manifest is never written;
4. ``check_serves`` starts the variant through ``serving.engine.TierEngine`` (which checks
   the adapter's hashes before vLLM starts) and generates once with the adapter.

Heavy imports (torch, transformers, peft, ray, vllm) happen inside functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from contracts.documents import Strict
from contracts.errors import PermanentError
from serving.collector import VerifiedExample, prompt_hash
from training.decode import STOP_TEXT, greedy_decode, load_model

__all__ = [
    "ADAPTER_FILES",
    "LORA_TARGETS",
    "DistillJob",
    "DistillResult",
    "adapter_name_for",
    "check_serves",
    "distill_family",
    "evaluate_pass_rate",
    "heldout_tasks",
    "plan_examples",
    "register_adapter",
    "run_job",
    "teacher_examples",
    "train_and_evaluate",
]

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                 "up_proj", "down_proj")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTERS_DIR = "distilled"  # the copy's adapters live under <out>/distilled/<tier>/<name>/
MAX_NEW_TOKENS = 32


class DistillJob(Strict):
    """One distillation run: what to train, from which seed, on what budget."""

    family: str = Field(min_length=1)
    tier: str = Field(min_length=1, description="the small tier the adapter is for")
    variant: str = Field(min_length=1, description="the variant the policy serves that tier on")
    adapter: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    steps: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=5e-3, gt=0)
    rank: int = Field(default=16, ge=1, le=16)
    alpha: int = Field(default=32, ge=1)
    seed: int = 0
    eval_tasks: int = Field(default=200, ge=0, description="held-out tasks for before/after")
    eval_seed: int = 1
    threads: int = Field(default=2, ge=1)
    max_new_tokens: int = Field(default=MAX_NEW_TOKENS, ge=1)


class DistillResult(Strict):
    """What a run produced and measured (written as distill.json beside the adapter)."""

    job: DistillJob
    examples: int
    examples_sha256: str = Field(description="sha256 over the training prompts' hashes")
    heldout: int
    pass_rate_before: float | None
    pass_rate_after: float | None
    by_difficulty: dict[str, dict[str, float]] = Field(default_factory=dict)
    final_loss: float
    train_seconds: float
    adapter_dir: str
    adapter_files: dict[str, str]
    manifest: str | None = None
    manifest_hash: str | None = None
    executor: str = "ray"


def adapter_name_for(family: str, tier: str, examples_sha256: str, seed: int) -> str:
    """A name that changes whenever the data, the tier or the seed changes."""
    digest = hashlib.sha256(f"{family}:{tier}:{examples_sha256}:{seed}".encode()).hexdigest()
    return f"{family.replace('_', '-')}-{tier.lower()}-{digest[:8]}"


# ----------------------------------------------------------------------- pure parts
def plan_examples(examples: Iterable[VerifiedExample], *, family: str,
                  blocked: frozenset[str], max_examples: int | None = None,
                  exclude: frozenset[str] = frozenset()) -> list[VerifiedExample]:
    """The training set: the family's examples, one per prompt, no gate-suite prompt (by
    hash), none of ``exclude`` (held-out prompts), sorted by prompt hash, capped."""
    seen: dict[str, VerifiedExample] = {}
    for e in examples:
        if e.family != family or e.prompt_sha256 != prompt_hash(e.prompt):
            continue
        if e.prompt_sha256 in blocked or e.prompt_sha256 in exclude:
            continue
        seen.setdefault(e.prompt_sha256, e)
    ordered = [seen[h] for h in sorted(seen)]
    return ordered[:max_examples] if max_examples is not None else ordered


def examples_digest(examples: Sequence[VerifiedExample]) -> str:
    return hashlib.sha256("".join(e.prompt_sha256 + e.output_sha256
                                  for e in examples).encode()).hexdigest()


def heldout_tasks(family: str, n: int, *, seed: int, exclude: frozenset[str]) -> list[Any]:
    """``n`` distinct held-out-split tasks of ``family`` whose prompts are in no training set
    and no gate suite (``exclude``: prompt hashes), over the family's difficulties."""
    from workload.tasks import FAMILIES, iter_tasks

    if family not in FAMILIES:
        return []
    out: dict[str, Any] = {}
    stream = iter_tasks(seed=f"distill-heldout-{seed}", families=[family], split="heldout")
    for drawn, task in enumerate(stream):
        if len(out) >= n or drawn > 200 * max(n, 1):
            break
        h = prompt_hash(task.prompt)
        if h not in exclude:
            out.setdefault(h, task)
    return list(out.values())


# ---------------------------------------------------------------------- heavy parts
def _encode(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """(ids, prompt length): the prompt as serving tokenizes it, then the completion up to
    and including its first newline, then <eos>."""
    p_ids = tokenizer(prompt)["input_ids"]
    answer = completion.split("\n", 1)[0] + "\n"
    c_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return [*p_ids, *c_ids, tokenizer.eos_token_id], len(p_ids)


def evaluate_pass_rate(model: Any, tokenizer: Any, tasks: Sequence[Any],
                       max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    """Greedy decode ``tasks`` and verify: overall and per-difficulty pass rates."""
    from workload.tasks import verify

    if not tasks:
        return {"n": 0, "pass_rate": None, "by_difficulty": {}}
    outputs = [d.text for d in greedy_decode(model, tokenizer, [t.prompt for t in tasks],
                                             max_new_tokens=max_new_tokens)]
    verdicts = [verify(t, o).passed for t, o in zip(tasks, outputs, strict=True)]
    by: dict[str, list[int]] = {}
    for t, ok in zip(tasks, verdicts, strict=True):
        cell = by.setdefault(f"d{t.difficulty}", [0, 0])
        cell[0] += 1
        cell[1] += int(ok)
    return {"n": len(tasks), "pass_rate": sum(verdicts) / len(tasks),
            "verdicts": verdicts,
            "by_difficulty": {k: round(p / n, 4) for k, (n, p) in sorted(by.items())}}


def train_and_evaluate(payload: dict[str, Any]) -> dict[str, Any]:
    """The job body (a Ray task, or inline): train, evaluate, return the adapter's bytes.

    ``payload``: job (DistillJob as a dict), model_dir, model_files (pins to check first),
    examples (prompt/output dicts), heldout (task dicts), model_name.
    """
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    from contracts.manifest import verify_files
    from training.model import optimizer_step, warmup_cosine_lr
    from workload.tasks import Task

    job = DistillJob.model_validate(payload["job"])
    model_dir = Path(payload["model_dir"])
    problems = verify_files(model_dir, payload["model_files"])
    if problems:
        raise PermanentError(f"refusing to train on tier {job.tier} variant {job.variant}: "
                             + "; ".join(f"{p}: {m}" for p, m in problems))
    torch.set_num_threads(job.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(job.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=job.rank, lora_alpha=job.alpha, lora_dropout=0.0,
                        target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(base, config)
    heldout = [Task.from_dict(t) for t in payload["heldout"]]

    model.eval()
    with model.disable_adapter():
        before = evaluate_pass_rate(model, tokenizer, heldout, job.max_new_tokens)

    encoded = [_encode(tokenizer, e["prompt"], e["output"]) for e in payload["examples"]]
    if not encoded:
        raise PermanentError(f"no training examples for family {job.family}")
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=job.lr, weight_decay=0.0)
    sampler = torch.Generator().manual_seed(job.seed)
    model.train()
    started = time.perf_counter()
    losses: list[float] = []
    for step in range(job.steps):
        pick = torch.randint(0, len(encoded), (min(job.batch_size, len(encoded)),),
                             generator=sampler).tolist()
        width = max(len(encoded[i][0]) for i in pick)
        ids = torch.full((len(pick), width), pad, dtype=torch.long)
        labels = torch.full((len(pick), width), -100, dtype=torch.long)
        mask = torch.zeros((len(pick), width), dtype=torch.long)
        for row, i in enumerate(pick):
            seq, plen = encoded[i]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            labels[row, plen:len(seq)] = ids[row, plen:len(seq)]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        lr = warmup_cosine_lr(step, job.steps, job.lr, warmup_divisor=10)  # 10% warm-up
        losses.append(optimizer_step(model, optimizer, loss, lr))
    train_seconds = time.perf_counter() - started
    model.eval()
    after = evaluate_pass_rate(model, tokenizer, heldout, job.max_new_tokens)

    with tempfile.TemporaryDirectory(prefix="distill-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        config_path = Path(tmp) / "adapter_config.json"
        data = json.loads(config_path.read_text(encoding="utf-8"))
        # Deterministic bytes: no machine path, target modules in a fixed order.
        data["base_model_name_or_path"] = payload.get("model_name") or job.tier
        data["target_modules"] = sorted(data.get("target_modules") or LORA_TARGETS)
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n",
                               encoding="utf-8")
        files = {name: (Path(tmp) / name).read_bytes() for name in ADAPTER_FILES}
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "files": files,
        "before": before,
        "after": after,
        "final_loss": round(sum(tail) / len(tail), 4),
        "train_seconds": round(train_seconds, 2),
    }


def run_job(payload: dict[str, Any], *, executor: str = "ray",
            ray_address: str | None = None) -> dict[str, Any]:
    """Run ``train_and_evaluate`` as a Ray task (``executor="ray"``) or in this process."""
    if executor == "inline":
        return train_and_evaluate(payload)
    if executor != "ray":
        raise PermanentError(f"executor must be 'ray' or 'inline' (got {executor!r})")
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": "ERROR"}
        if ray_address:
            ray.init(address=ray_address, **kwargs)
        else:
            ray.init(address="local", num_cpus=2, **kwargs)
    try:
        job = DistillJob.model_validate(payload["job"])
        # One CPU per thread the job uses: the scheduler places it where they are free.
        task = ray.remote(num_cpus=min(job.threads, 2), max_retries=0)(train_and_evaluate)
        return ray.get(task.remote(payload))
    finally:
        if started_here:
            ray.shutdown()


def teacher_examples(manifest_path: str | Path, family: str, n: int, *, seed: int = 0,
                     tier: str | None = None, variant: str | None = None,
                     blocked: frozenset[str] = frozenset(),
                     max_new_tokens: int = MAX_NEW_TOKENS) -> list[VerifiedExample]:
    """The top tier's verified answers on ``n`` train-split tasks of a reference family.

    What the gateway would have collected had the family been served by the top tier and
    opted in; used to top up a thin collected set (``autopilot distill``). Gate-suite
    prompts (``blocked``) are skipped.
    """
    import torch

    from contracts.manifest import load_fleet
    from serving.engine import verify_variant
    from workload.tasks import FAMILIES, iter_tasks, verify

    if family not in FAMILIES or n <= 0:
        return []
    manifest_path = Path(manifest_path)
    fleet = load_fleet(manifest_path)
    tier = tier or fleet.tiers[-1].name
    pinned = verify_variant(fleet, manifest_path.parent, tier, variant)
    tasks: dict[str, Any] = {}
    for drawn, task in enumerate(iter_tasks(seed=f"distill-teacher-{seed}",
                                            families=[family], split="train")):
        if len(tasks) >= n or drawn > 50 * n:
            break
        h = prompt_hash(task.prompt)
        if h not in blocked:
            tasks.setdefault(h, task)
    torch.set_num_threads(int(os.environ.get("AUTOPILOT_THREADS", "2")))
    model, tokenizer = load_model(pinned.model_dir)
    todo = list(tasks.values())
    decoded = greedy_decode(model, tokenizer, [t.prompt for t in todo],
                            max_new_tokens=max_new_tokens)
    out = []
    for task, d in zip(todo, decoded, strict=True):
        answer = d.text.split(STOP_TEXT, 1)[0]
        if verify(task, answer).passed:
            out.append(VerifiedExample.make(family, task.prompt, answer, tier=tier,
                                            variant=pinned.variant, source="teacher",
                                            task_id=task.task_id, recorded_at="teacher"))
    return out


def _relative_to(path: Path, base: Path) -> str:
    # abspath, not resolve: a symlinked folder (a state directory's models/) stays a link.
    return os.path.relpath(os.path.abspath(path), os.path.abspath(base))


def register_adapter(manifest_path: str | Path, out_manifest: str | Path, *, tier: str,
                     variant: str, adapter: str, adapter_dir: str | Path,
                     family: str) -> Path:
    """Write a copy of the manifest with ``adapter`` pinned on ``tier``/``variant``.

    Every relative weight or adapter path of the source is rewritten relative to the copy's
    folder (the copy can live anywhere; the source manifest is never written). An adapter of
    the same name on that variant is replaced.
    """
    from contracts.manifest import FleetManifest, load_fleet, save_fleet, sha256_file

    manifest_path, out_manifest = Path(manifest_path), Path(out_manifest)
    src_dir, out_dir = manifest_path.parent, out_manifest.parent
    fleet = load_fleet(manifest_path)
    adapter_dir = Path(adapter_dir)
    pins = {name: sha256_file(adapter_dir / name) for name in ADAPTER_FILES}

    def moved(raw: str) -> str:
        p = Path(raw).expanduser()
        if p.is_absolute() or not (src_dir / p).exists():
            return raw  # absolute paths and model ids stay as they are
        return _relative_to(src_dir / p, out_dir)

    data = fleet.model_dump(mode="json", by_alias=True)
    found = False
    for t in data["spec"]["tiers"]:
        for v in t["variants"]:
            v["weights"] = moved(v["weights"])
            v["adapters"] = [{**a, "path": moved(a["path"])} for a in v.get("adapters", [])]
            if t["name"] == tier and v["name"] == variant:
                found = True
                v["adapters"] = [a for a in v["adapters"] if a["name"] != adapter]
                v["adapters"].append({"name": adapter,
                                      "path": _relative_to(adapter_dir, out_dir),
                                      "files": pins, "family": family})
    if not found:
        raise PermanentError(f"fleet has no tier {tier} variant {variant} to register on")
    copy = FleetManifest.model_validate(data)
    if out_manifest.resolve() == manifest_path.resolve():
        raise PermanentError("register_adapter writes a copy: choose another output path")
    return save_fleet(copy, out_manifest)


def check_serves(manifest_path: str | Path, tier: str, variant: str, adapter: str,
                 prompt: str, *, max_model_len: int | None = None) -> dict[str, Any]:
    """Start the variant through ``serving.engine`` (adapter hashes checked first) and
    generate once with the adapter and once without. Raises ``PinnedWeightsMismatch``
    naming the file when an adapter file was altered."""
    import asyncio

    from contracts.manifest import load_fleet
    from serving.engine import EngineOptions, TierEngine

    manifest_path = Path(manifest_path)
    fleet = load_fleet(manifest_path)
    # The engine caps the context at the model's positions (serving.engine.model_max_len).
    options = EngineOptions() if max_model_len is None else EngineOptions(
        max_model_len=max_model_len)
    started = time.perf_counter()
    engine = TierEngine.start(manifest_path, tier, variant, manifest=fleet, options=options)
    try:
        async def both():
            return (await engine.generate(prompt, adapter=adapter),
                    await engine.generate(prompt))
        with_adapter, base = asyncio.run(both())
    finally:
        engine.shutdown()
    return {"adapters": [adapter], "with_adapter": with_adapter.text, "base": base.text,
            "output_tokens": with_adapter.output_tokens,
            "seconds": round(time.perf_counter() - started, 1)}


def distill_family(manifest_path: str | Path, out_dir: str | Path, job: DistillJob,
                   examples: Sequence[VerifiedExample], *, blocked: frozenset[str],
                   executor: str = "ray", ray_address: str | None = None,
                   log: Any = None) -> DistillResult:
    """Train, evaluate, save and register one adapter (see the module docstring).

    ``examples`` must already be planned (``plan_examples``); held-out tasks exclude their
    prompts and the gate suite's. The manifest copy is ``<out_dir>/fleet.yaml``.
    """
    from contracts.manifest import load_fleet, resolve_path, sha256_file

    say = log or (lambda _m: None)
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    fleet = load_fleet(manifest_path)
    v = fleet.tier(job.tier).variant(job.variant)
    model_dir = resolve_path(v.weights, manifest_path.parent)
    exclude = blocked | {e.prompt_sha256 for e in examples}
    heldout = heldout_tasks(job.family, job.eval_tasks, seed=job.eval_seed, exclude=exclude)
    payload = {"job": job.model_dump(mode="json"), "model_dir": str(model_dir),
               "model_files": dict(v.files), "model_name": fleet.tier(job.tier).model,
               "examples": [{"prompt": e.prompt, "output": e.output} for e in examples],
               "heldout": [t.to_dict() for t in heldout]}
    say(f"training adapter {job.adapter} for {job.tier}/{job.variant} on {len(examples)} "
        f"verified examples of {job.family} ({job.steps} steps, {executor}); "
        f"{len(heldout)} held-out tasks")
    result = run_job(payload, executor=executor, ray_address=ray_address)
    adapter_dir = out_dir / ADAPTERS_DIR / job.tier / job.adapter
    adapter_dir.mkdir(parents=True, exist_ok=True)
    for name, blob in result["files"].items():
        (adapter_dir / name).write_bytes(blob)
    files = {name: sha256_file(adapter_dir / name) for name in ADAPTER_FILES}
    out_manifest = register_adapter(manifest_path, out_dir / "fleet.yaml", tier=job.tier,
                                    variant=job.variant, adapter=job.adapter,
                                    adapter_dir=adapter_dir, family=job.family)
    registered = load_fleet(out_manifest)
    before, after = result["before"], result["after"]
    by = {k: {"before": before["by_difficulty"].get(k, 0.0), "after": a}
          for k, a in after["by_difficulty"].items()}
    out = DistillResult(
        job=job, examples=len(examples), examples_sha256=examples_digest(examples),
        heldout=len(heldout), pass_rate_before=before["pass_rate"],
        pass_rate_after=after["pass_rate"], by_difficulty=by,
        final_loss=result["final_loss"], train_seconds=result["train_seconds"],
        adapter_dir=str(adapter_dir), adapter_files=files, manifest=str(out_manifest),
        manifest_hash=registered.content_hash, executor=executor)
    record = {**out.model_dump(mode="json"),
              "heldout_verdicts": {"before": before.get("verdicts", []),
                                   "after": after.get("verdicts", [])},
              "heldout_difficulties": [t.difficulty for t in heldout]}
    (out_dir / "distill.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out
