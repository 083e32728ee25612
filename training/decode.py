"""The one greedy decoder behind every transformers measurement of the fleet's competence.

The held-out ladder (``training.ladder``, transformers evaluator), the distillation job's
before/after pass rates and its teacher answers (``training.distill``) and the measured
cascade (``training.distill_measure``) all decode here, so their figures share one stop
rule:

- greedy (``do_sample=False``), prompts left-padded in chunks of ``batch_size``;
- a row stops at its first stop token: the newline token (the end marker, ``STOP_TEXT``;
  only when the tokenizer really has it, not its unknown token) or ``<eos>``;
- a row's text is its new tokens up to and including that stop token, decoded with special
  tokens skipped (so a newline stop stays in the text, ``<eos>`` does not); its output
  token count includes the stop token.

``workload.tasks.verify`` reads the answer off that text (first line, stripped), the same
answer the vLLM path's ``stop=[STOP_TEXT]`` returns. Heavy imports happen inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STOP_TEXT", "Decoded", "greedy_decode", "load_model", "stop_token_ids"]

STOP_TEXT = "\n"  # the end marker every answer ends with (vLLM: ``stop=[STOP_TEXT]``)
DEFAULT_BATCH = 128


@dataclass(frozen=True)
class Decoded:
    """One prompt's greedy continuation."""

    text: str  # up to and including the stop token; special tokens skipped
    prompt_tokens: int
    output_tokens: int  # new tokens through the stop token (all of them when none stopped)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids a row stops at: the end-marker token, then ``<eos>`` (ids the tokenizer has)."""
    newline = tokenizer.convert_tokens_to_ids(STOP_TEXT)
    stops = []
    if isinstance(newline, int) and newline != tokenizer.unk_token_id:
        stops.append(newline)
    if isinstance(tokenizer.eos_token_id, int) and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    return stops


def load_model(model_dir: str | Path, adapter_dir: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a fleet variant in float32, eval mode, with a LoRA adapter on top
    when ``adapter_dir`` is given."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval(), tokenizer


def greedy_decode(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
                  batch_size: int = DEFAULT_BATCH) -> list[Decoded]:
    """Greedy continuations of ``prompts``, in order, under the module's stop rule."""
    import torch

    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer)
    out: list[Decoded] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=stops or None,
                                 pad_token_id=tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:].tolist()
            for ids, n_in in zip(new, enc["attention_mask"].sum(dim=1).tolist(), strict=True):
                cut = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
                out.append(Decoded(tokenizer.decode(ids[:cut], skip_special_tokens=True),
                                   int(n_in), cut))
    return out
