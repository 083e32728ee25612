"""An adapter around vLLM's ``AsyncLLM`` (v1 engine) for one tier variant of the fleet.

The engine is started from a variant's pinned weights: every weight and adapter file is
checked against the manifest's sha256 *before* vLLM is touched, and the weights and adapter
directories must hold nothing else (vLLM loads whatever the directory holds: an unlisted
``model.safetensors.index.json`` would point it at unlisted shards); a mismatch, a missing
file or an extra file refuses the start with the file named (``PinnedWeightsMismatch``). Decoding is deterministic
(temperature 0, a fixed seed). The same code runs the vLLM CPU build and the CUDA build:
only the KV-cache sizing differs, behind ``_on_cpu()``.

``vllm`` and ``torch`` are imported inside functions, so ``import serving.engine`` is cheap.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from contracts.errors import PermanentError
from contracts.manifest import FleetManifest, Variant, load_fleet, resolve_path, verify_files

__all__ = [
    "EngineOptions",
    "Generation",
    "PinnedVariant",
    "PinnedWeightsMismatch",
    "TierEngine",
    "UnknownAdapter",
    "engine_kwargs",
    "model_dtype",
    "verify_variant",
]


class PinnedWeightsMismatch(PermanentError):
    """A weight or adapter file does not match the sha256 the fleet manifest pins, is
    missing, or is not pinned at all (an extra file in a pinned directory)."""

    def __init__(self, tier: str, variant: str, problems: Sequence[tuple[str, str]]):
        self.tier, self.variant, self.problems = tier, variant, list(problems)
        listed = "; ".join(f"{path}: {problem}" for path, problem in self.problems)
        super().__init__(
            f"refusing to start tier {tier} variant {variant}: {len(self.problems)} pinned "
            f"file(s) do not match the fleet manifest: {listed}")


class UnknownAdapter(PermanentError):
    """A call named an adapter the variant does not serve."""


@dataclass(frozen=True)
class EngineOptions:
    """Engine sizing. Defaults suit the tiny CPU fleet (small context, small KV cache)."""

    max_model_len: int = 256
    max_num_seqs: int = 16
    kv_cache_bytes: int = 128 << 20  # explicit KV cache; skips vLLM's warm-up probe on CPU
    gpu_memory_utilization: float = 0.3  # CUDA only: share of the GPU this engine may hold
    enforce_eager: bool = True  # no graph compilation: starts in seconds on a CPU
    seed: int = 0
    max_lora_rank: int = 16
    # Prefix caching reuses whole KV blocks; the CPU default (128 tokens) is longer than
    # the reference prompts, so nothing would ever be reused. None: 32 on the CPU backend
    # (its attention needs a multiple of 32), vLLM's own default on a GPU.
    block_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Generation(NamedTuple):
    """One completed call, with the token counts vLLM measured."""

    text: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int  # prompt tokens served from the prefix (KV) cache
    finish_reason: str | None = None


@dataclass(frozen=True)
class PinnedVariant:
    """A variant whose files were checked: where they are and the hashes that were checked."""

    tier: str
    variant: str
    model_dir: Path
    weight_hashes: Mapping[str, str]
    adapter_dirs: Mapping[str, Path] = field(default_factory=dict)
    adapter_hashes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def weights_digest(self) -> str:
        """One hash over every weight file's hash (a response-cache key component)."""
        return _digest(self.weight_hashes)

    def adapter_digest(self, adapter: str | None) -> str:
        return "" if adapter is None else _digest(self.adapter_hashes[adapter])


def _digest(files: Mapping[str, str]) -> str:
    import hashlib

    text = json.dumps(dict(sorted(files.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def verify_variant(manifest: FleetManifest, manifest_dir: str | Path, tier: str,
                   variant: str | None = None) -> PinnedVariant:
    """Check every weight and adapter file of ``tier``/``variant`` against the manifest.

    Raises ``PinnedWeightsMismatch`` naming each missing, altered or extra file (the weights
    directory and each adapter directory hold exactly their pinned files); a variant that
    pins no files at all is refused too (nothing would be checked).
    """
    v: Variant = manifest.tier(tier).variant(variant)
    model_dir = resolve_path(v.weights, manifest_dir)
    problems: list[tuple[str, str]] = []
    if not v.files:
        problems.append((str(model_dir), "the manifest pins no weight files for this variant"))
    problems += verify_files(model_dir, v.files)
    adapter_dirs: dict[str, Path] = {}
    for adapter in v.adapters:
        adapter_dir = resolve_path(adapter.path, manifest_dir)
        adapter_dirs[adapter.name] = adapter_dir
        if not adapter.files:
            problems.append((str(adapter_dir), f"adapter {adapter.name} pins no files"))
        problems += verify_files(adapter_dir, adapter.files)
    if problems:
        raise PinnedWeightsMismatch(tier, v.name, problems)
    return PinnedVariant(
        tier=tier, variant=v.name, model_dir=model_dir, weight_hashes=dict(v.files),
        adapter_dirs=adapter_dirs,
        adapter_hashes={a.name: dict(a.files) for a in v.adapters},
    )


def _model_config(model_dir: str | Path) -> dict[str, Any]:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def model_dtype(model_dir: str | Path) -> str:
    """The dtype the model's ``config.json`` declares (``dtype`` or ``torch_dtype``)."""
    config = _model_config(model_dir)
    value = config.get("dtype") or config.get("torch_dtype") or "auto"
    return str(value).removeprefix("torch.")


def model_max_len(model_dir: str | Path, requested: int) -> int:
    """``requested`` capped at the positions the model was built for: vLLM refuses a longer
    context (RoPE past its trained range gives garbage), so a fleet of short-context models
    must not fail to start because the engine default is longer."""
    positions = _model_config(model_dir).get("max_position_embeddings")
    if isinstance(positions, int | float) and positions > 0:
        return min(requested, int(positions))
    return requested


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_kwargs(pinned: PinnedVariant, *, prefix_caching: bool, options: EngineOptions,
                  on_cpu: bool) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` for a checked variant (a pure function, tested directly)."""
    kwargs: dict[str, Any] = {
        "model": str(pinned.model_dir),
        "tokenizer": str(pinned.model_dir),
        "dtype": model_dtype(pinned.model_dir),
        "seed": options.seed,
        "max_model_len": model_max_len(pinned.model_dir, options.max_model_len),
        "max_num_seqs": options.max_num_seqs,
        "enable_prefix_caching": bool(prefix_caching),
        "enforce_eager": options.enforce_eager,
        # Sampling defaults come from the gateway, never from a generation_config.json.
        "generation_config": "vllm",
        "disable_log_stats": True,
        "kv_cache_memory_bytes": options.kv_cache_bytes,
    }
    block_size = options.block_size or (32 if on_cpu else None)
    if block_size is not None:
        kwargs["block_size"] = block_size
    if not on_cpu:
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    if pinned.adapter_dirs:
        kwargs.update(enable_lora=True, max_loras=len(pinned.adapter_dirs),
                      max_lora_rank=options.max_lora_rank)
    return kwargs


class TierEngine:
    """One vLLM ``AsyncLLM`` serving one tier variant (and its LoRA adapters).

    Build with ``TierEngine.start(manifest_path, tier, variant, prefix_caching=...)``; the
    files are checked first. ``generate`` is a coroutine; many may run at once (vLLM
    batches them).
    """

    _request_ids = itertools.count()

    def __init__(self, llm: Any, pinned: PinnedVariant, *, prefix_caching: bool,
                 options: EngineOptions):
        from vllm.lora.request import LoRARequest

        self._llm = llm
        self.pinned = pinned
        self.prefix_caching = prefix_caching
        self.options = options
        self._loras = {
            name: LoRARequest(lora_name=name, lora_int_id=i + 1, lora_path=str(path))
            for i, (name, path) in enumerate(sorted(pinned.adapter_dirs.items()))
        }
        self._id_prefix = uuid.uuid4().hex[:8]

    @classmethod
    def start(cls, manifest_path: str | Path, tier: str, variant: str | None = None, *,
              prefix_caching: bool = False, options: EngineOptions | None = None,
              manifest: FleetManifest | None = None) -> TierEngine:
        options = options or EngineOptions()
        manifest_path = Path(manifest_path)
        manifest = manifest or load_fleet(manifest_path)
        pinned = verify_variant(manifest, manifest_path.parent, tier, variant)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = _on_cpu()
        kwargs = engine_kwargs(pinned, prefix_caching=prefix_caching, options=options,
                               on_cpu=on_cpu)
        if on_cpu:
            # An explicit kv_cache_memory_bytes is the budget; a stale global setting in
            # the environment would silently override it on the CPU backend.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        return cls(llm, pinned, prefix_caching=prefix_caching, options=options)

    @property
    def adapters(self) -> list[str]:
        return sorted(self._loras)

    async def generate(self, prompt: str | Sequence[int], max_tokens: int = 32,
                       stop: Sequence[str] = ("\n",), adapter: str | None = None,
                       *, request_id: str | None = None) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        lora = None
        if adapter is not None:
            lora = self._loras.get(adapter)
            if lora is None:
                raise UnknownAdapter(
                    f"tier {self.pinned.tier} variant {self.pinned.variant} has no adapter "
                    f"{adapter!r} (has: {self.adapters or 'none'})")
        params = SamplingParams(
            temperature=0.0, max_tokens=max_tokens, stop=list(stop) or None,
            seed=self.options.seed, output_kind=RequestOutputKind.FINAL_ONLY,
        )
        source = ({"prompt_token_ids": list(prompt)} if not isinstance(prompt, str)
                  else {"prompt": prompt})
        rid = request_id or f"{self._id_prefix}-{next(self._request_ids)}"
        final = None
        async for output in self._llm.generate(source, params, rid, lora_request=lora):
            final = output
        if final is None:  # pragma: no cover - vLLM always yields the final output
            raise PermanentError(f"vLLM returned no output for request {rid}")
        completion = final.outputs[0]
        return Generation(
            text=completion.text,
            input_tokens=len(final.prompt_token_ids or ()),
            output_tokens=len(completion.token_ids),
            cached_input_tokens=int(final.num_cached_tokens or 0),
            finish_reason=completion.finish_reason,
        )

    def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
