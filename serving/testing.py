"""Fixture fleets for tests and benchmarks: one source, three weights of realism.

- ``make_tiny_fleet(dir)`` writes, under ``dir``, one model folder per tier and variant (a
  2-layer, 128-wide Llama with head size 64, which the vLLM CPU backend supports), a
  character-level tokenizer saved next to each model, optional LoRA adapters, and a
  ``fleet.yaml`` whose every weight and adapter file is pinned by its real sha256. Outputs
  are gibberish but deterministic: what the tests check is the serving path, not competence.
- ``make_stub_fleet(dir)`` writes the same layout and pins with a few placeholder bytes per
  file, for tests of pinning, gates and deployment planning that never load a model.
- ``tiny_manifest()`` is a manifest with nothing on disk behind it (the experiments, lever
  and replay/search fixtures): every lever has an option on it.

All of them price tiers by ``TINY_ECONOMICS``, the practice's illustrative tier table, so
tests and benchmarks never depend on the trained reference fleet.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from contracts.manifest import (
    Adapter,
    Economics,
    FleetManifest,
    FleetSpec,
    Tier,
    Variant,
    save_fleet,
    sha256_file,
)

__all__ = ["TINY_ECONOMICS", "char_tokenizer", "make_stub_fleet", "make_tiny_fleet",
           "tiny_manifest"]

# The practice's illustrative tier table: $2.50/GPU-hour, effective 6000 / 2200 / 700
# tokens/s on 1 / 2 / 8 GPUs. Tiny tiers stand in for real model classes, so prices follow
# those classes, not the tiny models. The starter fleet (controlplane/starter/fleet.yaml)
# states it as data (a test keeps the two equal); the reference fleet's trainer
# (training/train.py) prices its tiers from it.
TINY_ECONOMICS: dict[str, dict[str, float]] = {
    "S": {"gpus": 1, "usd_per_gpu_hour": 2.5, "prefill_tokens_per_s": 6000,
          "decode_tokens_per_s": 6000},
    "M": {"gpus": 2, "usd_per_gpu_hour": 2.5, "prefill_tokens_per_s": 2200,
          "decode_tokens_per_s": 2200},
    "L": {"gpus": 8, "usd_per_gpu_hour": 2.5, "prefill_tokens_per_s": 700,
          "decode_tokens_per_s": 700},
}
_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
_CHARS = string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", "")


def char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: one token per printable character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", clean_up_tokenization_spaces=False, model_max_length=256,
    )


def _write_model(out: Path, *, seed: int, layers: int, hidden: int, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, head_dim=64, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # vLLM would otherwise take sampling defaults from it; the gateway sets its own.
    (out / "generation_config.json").unlink(missing_ok=True)


def _write_adapter(base: Path, out: Path, *, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out, safe_serialization=True)


def _pinned_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _write_fleet(root: Path, tiers: Sequence[str], variants: Sequence[str],
                 adapters: Mapping[str, Sequence[str]], *,
                 write_model: Callable[[Path, int, str, str], None],
                 write_adapter: Callable[[Path, Path, int], None]) -> Path:
    """The fleet layout every fixture shares: ``models/<tier>/<variant>`` (seed ``1000 *
    rank + k``), adapters of a tier on its first variant under ``adapters/<tier>/<name>``
    (seed ``7 + j``), every file pinned by sha256, tiers priced by ``TINY_ECONOMICS``;
    ``fleet.yaml`` saved under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    tier_docs = []
    for rank, tier in enumerate(tiers):
        variant_docs = []
        for k, variant in enumerate(variants):
            rel = Path("models") / tier / variant
            model_dir = root / rel
            write_model(model_dir, 1000 * rank + k, tier, variant)
            adapter_docs = []
            if k == 0:
                for j, name in enumerate(adapters.get(tier, ())):
                    arel = Path("adapters") / tier / name
                    write_adapter(model_dir, root / arel, 7 + j)
                    adapter_docs.append(Adapter(name=name, path=arel.as_posix(),
                                                files=_pinned_files(root / arel)))
            variant_docs.append(Variant(
                name=variant, weights=rel.as_posix(), files=_pinned_files(model_dir),
                economics=Economics(**TINY_ECONOMICS.get(tier, TINY_ECONOMICS["M"])),
                adapters=tuple(adapter_docs)))
        tier_docs.append(Tier(name=tier, rank=rank, model=f"tiny-{tier.lower()}",
                              default_variant=variants[0], variants=tuple(variant_docs)))
    manifest = FleetManifest(spec=FleetSpec(tiers=tuple(tier_docs)))
    return save_fleet(manifest, root / "fleet.yaml")


def make_tiny_fleet(
    directory: str | Path,
    tiers: Sequence[str] = ("S", "M", "L"),
    variants: Iterable[str] = ("fp32",),
    *,
    adapters: dict[str, Sequence[str]] | None = None,
    layers: int = 2,
    hidden: int = 128,
) -> Path:
    """Write a tiny fleet under ``directory`` and return the path of its ``fleet.yaml``.

    ``adapters`` maps a tier to LoRA adapter names made for its first variant (e.g.
    ``{"S": ["list-ops-v1"]}``); each adapter's files are pinned like the weights.
    """
    tokenizer = char_tokenizer()

    def model(out: Path, seed: int, _tier: str, _variant: str) -> None:
        _write_model(out, seed=seed, layers=layers, hidden=hidden, tokenizer=tokenizer)

    def adapter(base: Path, out: Path, seed: int) -> None:
        _write_adapter(base, out, seed=seed)

    return _write_fleet(Path(directory), tuple(tiers), tuple(variants), adapters or {},
                        write_model=model, write_adapter=adapter)


def make_stub_fleet(
    directory: str | Path,
    tiers: Sequence[str] = ("S", "M", "L"),
    variants: Iterable[str] = ("bf16", "int4"),
    *,
    adapters: dict[str, Sequence[str]] | None = None,
) -> Path:
    """``make_tiny_fleet``'s layout and pins with placeholder files: ``config.json`` and
    ``model.safetensors`` per variant, ``adapter_model.safetensors`` per adapter, each
    naming what it stands for (so every pin differs). Nothing here loads as a model."""

    def model(out: Path, _seed: int, tier: str, variant: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"stub": f"{tier}/{variant}"}))
        (out / "model.safetensors").write_text(f"{tier}/{variant}/model.safetensors")

    def adapter(_base: Path, out: Path, _seed: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_model.safetensors").write_text(f"lora {out.name}")

    return _write_fleet(Path(directory), tuple(tiers), tuple(variants), adapters or {},
                        write_model=model, write_adapter=adapter)


def tiny_manifest(name: str = "tiny-fleet") -> FleetManifest:
    """A manifest with no files behind it, and an option for every lever: tiers S, M, L
    (variant ``bf16``, priced by ``TINY_ECONOMICS``); an ``int8`` variant of S at 9000
    tokens/s and of M on one GPU; the list_ops adapter ``list-ops-v1`` on S/bf16."""

    def variant(name: str, weights: str, tier: str, **economics: float) -> dict[str, Any]:
        return {"name": name, "weights": weights,
                "economics": {**TINY_ECONOMICS[tier], **economics}}

    def tier(name: str, rank: int, *variants: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "rank": rank, "model": name.lower(), "default_variant": "bf16",
                "variants": list(variants)}

    list_ops = {"name": "list-ops-v1", "path": "a", "family": "list_ops"}
    return FleetManifest.model_validate({"metadata": {"name": name}, "spec": {
        "pricing": {"cached_input_discount": 0.9},
        "tiers": [
            tier("S", 0, {**variant("bf16", "s", "S"), "adapters": [list_ops]},
                 variant("int8", "s8", "S", prefill_tokens_per_s=9000, decode_tokens_per_s=9000)),
            tier("M", 1, variant("bf16", "m", "M"), variant("int8", "m8", "M", gpus=1)),
            tier("L", 2, variant("bf16", "l", "L")),
        ]}})
