"""A tiny random-weight Llama fleet for tests and benchmarks.

``make_tiny_fleet(dir)`` writes, under ``dir``, one model folder per tier and variant (a
2-layer, 128-wide Llama with head size 64, which the vLLM CPU backend supports), a
character-level tokenizer saved next to each model, optional LoRA adapters, and a
``fleet.yaml`` whose every weight and adapter file is pinned by its real sha256. Tests and
benchmarks use it so they never depend on the trained reference fleet. Outputs are
gibberish but deterministic: what the tests check is the serving path, not competence.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from pathlib import Path

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

__all__ = ["TINY_ECONOMICS", "char_tokenizer", "make_tiny_fleet"]

# The starter fleet's tier table (controlplane/starter/fleet.yaml): tiny tiers stand in for
# real model classes, so prices follow those classes, not the tiny models.
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
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = char_tokenizer()
    variants = tuple(variants)
    adapters = adapters or {}
    tier_docs = []
    for rank, tier in enumerate(tiers):
        variant_docs = []
        for k, variant in enumerate(variants):
            rel = Path("models") / tier / variant
            model_dir = root / rel
            _write_model(model_dir, seed=1000 * rank + k, layers=layers, hidden=hidden,
                         tokenizer=tokenizer)
            adapter_docs = []
            if k == 0:
                for j, name in enumerate(adapters.get(tier, ())):
                    arel = Path("adapters") / tier / name
                    _write_adapter(model_dir, root / arel, seed=7 + j)
                    adapter_docs.append(Adapter(name=name, path=arel.as_posix(),
                                                files=_pinned_files(root / arel)))
            economics = TINY_ECONOMICS.get(tier, TINY_ECONOMICS["M"])
            variant_docs.append(Variant(
                name=variant, weights=rel.as_posix(), files=_pinned_files(model_dir),
                economics=Economics(**economics), adapters=tuple(adapter_docs)))
        tier_docs.append(Tier(name=tier, rank=rank, model=f"tiny-{tier.lower()}",
                              default_variant=variants[0], variants=tuple(variant_docs)))
    manifest = FleetManifest(spec=FleetSpec(tiers=tuple(tier_docs)))
    return save_fleet(manifest, root / "fleet.yaml")
