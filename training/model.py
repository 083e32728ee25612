"""The reference fleet's character tokenizer and tiny Llama-architecture tier shapes.

The tokenizer is a Hugging Face ``tokenizers`` WordLevel model over single characters:
every printable ASCII character (32..126) plus the newline, which is a superset of what
``workload.tasks`` can generate (``check_coverage`` proves it on a sample), plus
``<pad>``, ``<bos>`` and ``<eos>``. Encoding prepends ``<bos>`` (a post-processor, so vLLM
and transformers see the same ids); decoding fuses characters back without spaces. It is
saved with ``PreTrainedTokenizerFast.save_pretrained`` so vLLM loads it from the model
folder unchanged.

Tier shapes keep head_dim at 64 (vLLM's CPU attention refuses head size 16) and tie the
input and output embeddings (smaller files; vLLM's Llama honours ``tie_word_embeddings``).
Heavy imports (torch, transformers, tokenizers) happen inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BOS",
    "DEFAULT_SEED",
    "EOS",
    "PAD",
    "TIER_SHAPES",
    "VOCAB",
    "TierShape",
    "build_tokenizer",
    "check_coverage",
    "llama_config",
    "optimizer_step",
    "save_tokenizer",
    "warmup_cosine_lr",
]

# The pinned training seed of the reference fleet (the ladder's held-out seed is derived).
DEFAULT_SEED = 20261125

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
# Ids are fixed by this order (pad 0, bos 1, eos 2, newline 3, then ASCII 32..126), so the
# vocabulary and every saved tokenizer file are byte-identical across runs.
CHARACTERS: tuple[str, ...] = ("\n", *(chr(c) for c in range(32, 127)))
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate((*SPECIALS, *CHARACTERS))}
HEAD_DIM = 64
MAX_POSITIONS = 128  # prompt <= 64 chars + answer <= 24 + newline + bos, with room to spare


@dataclass(frozen=True)
class TierShape:
    """Architecture of one tier (a LlamaConfig subset) and its training budget."""

    name: str
    model: str  # the model name recorded in the manifest and config
    hidden_size: int
    layers: int
    intermediate_size: int
    steps: int  # optimizer steps of the full run
    batch_size: int
    lr: float
    stands_in_for: str
    # Training mix over difficulties 1/2/3 (each spread evenly over the families). Uniform
    # is the default and is not recorded; S is trained mostly on the easy band.
    difficulty_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def heads(self) -> int:
        return self.hidden_size // HEAD_DIM

    @property
    def uniform_mix(self) -> bool:
        return len(set(self.difficulty_weights)) == 1

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "heads": self.heads, "head_dim": HEAD_DIM}
        if self.uniform_mix:
            del data["difficulty_weights"]
        else:
            data["difficulty_weights"] = list(self.difficulty_weights)
        return data


# Competence is set by both width/depth and training steps: S is narrow, shallow and briefly
# trained, L is wide, deeper and trained longest. Budgets are sized for ~20 minutes on two
# shared CPU cores (see docs/reference_fleet.md for the measured times).
TIER_SHAPES: tuple[TierShape, ...] = (
    TierShape("S", "ref-coder-s", hidden_size=64, layers=2, intermediate_size=192,
              steps=3000, batch_size=64, lr=3e-3, difficulty_weights=(6.0, 3.0, 1.0),
              stands_in_for="7B-class code model on 1 GPU"),
    TierShape("M", "ref-coder-m", hidden_size=128, layers=2, intermediate_size=256,
              steps=4500, batch_size=64, lr=3e-3,
              stands_in_for="30B-class code model on 2 GPUs"),
    TierShape("L", "ref-coder-l", hidden_size=128, layers=3, intermediate_size=384,
              steps=7000, batch_size=64, lr=2e-3,
              stands_in_for="70B-class or larger model on 8 GPUs"),
)


def build_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` over single characters with <bos> prepended."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token=PAD))
    # Every character, newline included, is its own pre-token; nothing is normalised.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, VOCAB[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=PAD,
        model_max_length=MAX_POSITIONS, clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    tokenizer.save_pretrained(str(directory))


def check_coverage(texts: Iterable[str]) -> None:
    """Raise ``ValueError`` naming any character the vocabulary lacks."""
    missing = sorted({ch for text in texts for ch in text if ch not in VOCAB})
    if missing:
        raise ValueError(f"tokenizer vocabulary lacks characters {missing!r}")


def llama_config(shape: TierShape, *, dtype: str) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=VOCAB[BOS],
        eos_token_id=VOCAB[EOS],
        pad_token_id=VOCAB[PAD],
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )


def warmup_cosine_lr(step: int, total: int, peak: float, *, warmup_divisor: int) -> float:
    """Linear warm-up over ``total // warmup_divisor`` steps, then cosine decay to 10% of
    the peak: the schedule of the reference tiers and of their distilled adapters."""
    warmup = max(1, total // warmup_divisor)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(model: Any, optimizer: Any, loss: Any, lr: float) -> float:
    """One update at learning rate ``lr`` with gradients clipped at norm 1.0; the loss."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())
