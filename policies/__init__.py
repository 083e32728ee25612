"""What the autopilot can change: the Policy document, its validation, hash and diff, routing.

One module per lever (routing, quantization, cache, distillation, guardrails) declares its
search space and proposer as the experiments package grows.
"""

from contracts.documents import DocumentError
from policies.policy import (
    Policy,
    PolicySpec,
    describe_diff,
    load_policy,
    policy_diff,
    save_policy,
    validate_against_fleet,
)
from policies.routing import tier_plan

__all__ = [
    "DocumentError",
    "Policy",
    "PolicySpec",
    "describe_diff",
    "load_policy",
    "policy_diff",
    "save_policy",
    "tier_plan",
    "validate_against_fleet",
]
