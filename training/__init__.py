"""Making the reference fleet's weights: the tiny Llama tiers (``model``, ``train``), their
quantized variants (``quantize``), the held-out ladder (``ladder``), LoRA distillation of
a family into a smaller tier (``distill``, ``distill_measure``) and the one greedy decoder
their transformers measurements share (``decode``). The committed fleet lives in
``training/fleet``. Names load on first use: torch is imported only by what trains.
"""

from __future__ import annotations

from pathlib import Path

from contracts.fronts import lazy_front

REFERENCE_FLEET_DIR = Path(__file__).resolve().parent / "fleet"

_HOME = {
    **dict.fromkeys(("TrainConfig", "run"), "training.train"),
    **dict.fromkeys(("measure_ladder", "heldout_suite"), "training.ladder"),
    **dict.fromkeys(("DEFAULT_SEED", "TIER_SHAPES", "TierShape", "build_tokenizer"),
                    "training.model"),
    **dict.fromkeys(("DistillJob", "DistillResult", "distill_family", "check_serves"),
                    "training.distill"),
    "measure_family_cascade": "training.distill_measure",
    "greedy_decode": "training.decode",
}
__all__ = [
    "DEFAULT_SEED",
    "REFERENCE_FLEET_DIR",
    "TIER_SHAPES",
    "DistillJob",
    "DistillResult",
    "TierShape",
    "TrainConfig",
    "build_tokenizer",
    "check_serves",
    "distill_family",
    "greedy_decode",
    "heldout_suite",
    "measure_family_cascade",
    "measure_ladder",
    "run",
]
__getattr__, __dir__ = lazy_front(__name__, _HOME, globals())
