"""Every lever has one LeverSpec, and everything it names across the packages exists."""

from __future__ import annotations

import random
import re

import pytest

from contracts.manifest import load_fleet
from gates.gates import GATE_NAMES
from policies.levers import (
    LEVER_NAMES,
    LEVERS,
    LeverContext,
    LeverSpec,
    joint_space,
    lever,
    lever_spec,
)
from policies.levers.docs import DOC_PATH, render
from policies.levers.spec import resolve
from policies.policy import PolicySpec, load_policy

FLEET = """
apiVersion: autopilot/v1
kind: FleetManifest
spec:
  tiers:
    - name: S
      rank: 0
      model: s
      variants:
        - name: bf16
          weights: s
          economics: {gpus: 1, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 6000, decode_tokens_per_s: 6000}
          adapters: [{name: lo-v1, path: a, family: list_ops}]
        - name: int8
          weights: s8
          economics: {gpus: 1, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 9000, decode_tokens_per_s: 9000}
    - name: L
      rank: 1
      model: l
      variants:
        - {name: bf16, weights: l, economics: {gpus: 8, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 700, decode_tokens_per_s: 700}}
"""

ACTIVE = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 3, author: t, created: 2026-11-01T00:00:00Z}
spec:
  routing: {escalation: [S, L], weights: {difficulty: 1.0}, thresholds: [2.0]}
"""


@pytest.fixture(scope="module")
def setup():
    fleet = load_fleet(FLEET)
    rng = random.Random(0)
    ctx = LeverContext(
        fleet=fleet, families=("list_ops", "expr_eval"),
        feature_sample={"difficulty": tuple(float(rng.randint(1, 3)) for _ in range(50))},
        task_usd=tuple(rng.uniform(0.001, 0.05) for _ in range(50)),
        task_tokens=tuple(float(rng.randint(500, 9000)) for _ in range(50)))
    return load_policy(ACTIVE), ctx


def test_every_lever_has_one_spec_which_is_its_modules():
    assert tuple(LEVERS) == LEVER_NAMES
    for name in LEVER_NAMES:
        spec, module = LEVERS[name], lever(name)
        assert isinstance(spec, LeverSpec) and spec.name == name == module.NAME
        assert module.LEVER is spec is lever_spec(name)
        assert (spec.space, spec.anchor, spec.apply) == (module.space, module.anchor,
                                                         module.apply)
        assert spec.summary.strip() and spec.report.strip()


def test_an_unknown_lever_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown lever 'speed'.*routing"):
        lever_spec("speed")


@pytest.mark.parametrize("name", LEVER_NAMES)
def test_every_lever_is_judged_by_gates_that_exist(name):
    gates = LEVERS[name].gates
    assert gates, f"{name} names no gate"
    assert set(gates) <= set(GATE_NAMES), f"{name}: unknown gates {set(gates) - set(GATE_NAMES)}"
    assert len(set(gates)) == len(gates)


def test_every_gate_judges_some_lever():
    assert {g for spec in LEVERS.values() for g in spec.gates} == set(GATE_NAMES)


@pytest.mark.parametrize("name", LEVER_NAMES)
def test_serving_effect_and_estimate_resolve_by_import(name):
    spec = LEVERS[name]
    assert callable(resolve(spec.serving_effect)), spec.serving_effect
    assert callable(resolve(spec.estimate)), spec.estimate
    assert spec.serving_effect.startswith("serving.")
    assert spec.estimate.startswith("experiments.")


def test_resolve_refuses_what_does_not_exist():
    with pytest.raises(AttributeError):
        resolve("serving.guardrails.no_such_function")
    with pytest.raises(ModuleNotFoundError):
        resolve("no_such_package.thing")


@pytest.mark.parametrize("name", LEVER_NAMES)
def test_policy_section_is_a_field_of_the_policy_spec(name):
    assert LEVERS[name].policy_section in PolicySpec.model_fields


def _pattern(param: str) -> re.Pattern[str]:
    """``family_<family>_escalation`` -> a regex where each ``<part>`` is any text."""
    return re.compile(re.sub(r"<[a-z]+>", ".+", re.escape(param)) + r"\Z")


@pytest.mark.parametrize("name", LEVER_NAMES)
def test_params_describe_the_space(setup, name):
    active, ctx = setup
    spec = LEVERS[name]
    keys = list(spec.space(active, ctx))
    patterns = {p: _pattern(p) for p in spec.params}
    for key in keys:
        assert any(rx.match(key) for rx in patterns.values()), f"{name}: {key} not in params"
    for param, rx in patterns.items():
        assert any(rx.match(key) for key in keys), f"{name}: {param} matches no parameter"
    # The anchor is a point of the same space.
    assert set(spec.anchor(active, ctx)) == set(keys)


def test_diff_lines_are_the_levers_own(setup):
    active, ctx = setup
    spec = LEVERS["guardrails"]
    changed = spec.apply(active, {"max_attempts_per_task": 2, "max_usd_per_task": "p90"}, ctx)
    lines = spec.diff_lines(active, changed)
    assert lines and all(line.startswith("spec.guardrails.") for line in lines)
    assert any("max_attempts_per_task" in line for line in lines)
    assert LEVERS["routing"].diff_lines(active, changed) == []


def test_joint_space_reads_the_registry(setup):
    active, ctx = setup
    space = joint_space(["guardrails"], active, ctx)
    assert list(space) == [f"guardrails__{p}" for p in LEVERS["guardrails"].params]


def test_a_lever_without_gates_is_refused():
    g = LEVERS["guardrails"]
    with pytest.raises(ValueError, match="names no gate"):
        LeverSpec(g.name, g.policy_section, g.summary, g.params, g.space, g.anchor, g.apply,
                  (), g.serving_effect, g.estimate, g.report)


def test_committed_docs_equal_the_generated_text():
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        "docs/levers.md is stale: run python -m policies.levers.docs")
