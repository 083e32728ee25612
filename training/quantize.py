"""Weight-only quantization round-trip for the reference fleet's variants.

Each linear weight of the transformer blocks (attention q/k/v/o and MLP gate/up/down) is
quantized per output channel (one scale per row), symmetrically, to ``bits`` signed levels
and immediately dequantized. The result is stored in the same safetensors layout as the
base variant, so vLLM loads an ``int8`` or ``int4`` variant exactly like the base one: the
variant carries the quantization *error* (which is what changes accuracy), not a packed
format. Embeddings (tied with the output head) and RMSNorm gains stay in full precision,
as in common weight-only schemes.

    scale_r = max_j |W[r, j]| / (2**(bits-1) - 1)
    W'[r, j] = clamp(round(W[r, j] / scale_r), -qmax, qmax) * scale_r

Rows that are all zero get scale 1 (their round-trip is exact).
"""

from __future__ import annotations

from typing import Any

__all__ = ["QUANT_BITS", "is_block_linear", "linear_weight_names", "qmax", "quantize_model_",
           "roundtrip"]

QUANT_BITS: dict[str, int] = {"int8": 8, "int4": 4}
_LINEAR_SUFFIXES = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def qmax(bits: int) -> int:
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16 (got {bits})")
    return 2 ** (bits - 1) - 1


def roundtrip(weight: Any, bits: int) -> tuple[Any, Any, Any]:
    """(dequantized weight, integer codes, per-row scales) of a 2-D float tensor."""
    import torch

    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    levels = qmax(bits)
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(w / scale), -levels, levels)
    return (codes * scale).to(weight.dtype), codes.to(torch.int8), scale.squeeze(1)


def is_block_linear(name: str) -> bool:
    """Whether a parameter (or safetensors key) is one of the block linears quantized."""
    return name.endswith(_LINEAR_SUFFIXES)


def linear_weight_names(model: Any) -> list[str]:
    """Parameter names of the block linears the round-trip touches, in model order."""
    return [name for name, _ in model.named_parameters() if name.endswith(_LINEAR_SUFFIXES)]


def quantize_model_(model: Any, bits: int) -> dict[str, float]:
    """Round-trip every block linear of ``model`` in place; returns the relative error
    ||W' - W|| / ||W|| per parameter name (the figures the manifest build logs)."""
    import torch

    errors: dict[str, float] = {}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in linear_weight_names(model):
            p = params[name]
            restored, _, _ = roundtrip(p.data, bits)
            norm = float(p.data.float().norm())
            errors[name] = float((restored.float() - p.data.float()).norm()) / (norm or 1.0)
            p.data.copy_(restored)
    return errors
