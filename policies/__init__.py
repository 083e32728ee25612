"""What the autopilot can change: the Policy document, its validation, hash and diff, routing
and the guardrail caps' rule (``policies.caps``).

One module per lever (routing, quantization, cache, distillation, guardrails) declares its
search space and proposer as the experiments package grows.
"""

from contracts.documents import DocumentError
from policies.caps import task_caps_reached, task_refusal
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
    "task_caps_reached",
    "task_refusal",
    "tier_plan",
    "validate_against_fleet",
]
