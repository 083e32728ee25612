"""The guardrail caps are named once and every layer raises and catches one refusal type."""

from __future__ import annotations

import pickle

import pytest

import contracts
from contracts.errors import PermanentError
from contracts.guardrails import CAPS, TASK_CAPS, TEAM_BUDGETS, Cap, GuardrailRefusal


def test_the_caps_are_a_closed_set_of_wire_codes():
    assert [str(c) for c in CAPS] == ["max_attempts_per_task", "max_tokens_per_task",
                                      "max_usd_per_task", "team_budget_exhausted"]
    assert set(TASK_CAPS) < set(CAPS) and Cap.TEAM_BUDGET_EXHAUSTED not in TASK_CAPS
    assert "max_tokens_per_task" in CAPS and "max_tokens_per_task" == Cap.MAX_TOKENS_PER_TASK
    assert f"{Cap.MAX_USD_PER_TASK}" == "max_usd_per_task"


def test_every_cap_is_set_by_a_guardrail_spec_field():
    from policies.policy import GuardrailSpec

    fields = set(GuardrailSpec.model_fields)
    assert {cap.field for cap in CAPS} == fields
    assert Cap.TEAM_BUDGET_EXHAUSTED.field == TEAM_BUDGETS
    assert all(cap.field == cap.value for cap in TASK_CAPS)


def test_the_refusal_is_permanent_and_reads_as_before():
    refused = GuardrailRefusal(Cap.MAX_TOKENS_PER_TASK, "the task used 100 tokens")
    assert isinstance(refused, PermanentError)
    assert str(refused) == "max_tokens_per_task: the task used 100 tokens"
    assert type(refused.code) is str and refused.code == "max_tokens_per_task"
    assert refused.message == "the task used 100 tokens"
    assert refused.as_error() == {"error": {"type": "guardrail", "code": "max_tokens_per_task",
                                            "message": "the task used 100 tokens",
                                            "param": None}}  # OpenAI's error shape


def test_the_refusal_compares_and_pickles_by_value():
    a = GuardrailRefusal("max_attempts_per_task", "attempt 4 > 3")
    assert a == GuardrailRefusal("max_attempts_per_task", "attempt 4 > 3")
    assert a != GuardrailRefusal("max_usd_per_task", "attempt 4 > 3")
    assert hash(a) == hash(GuardrailRefusal("max_attempts_per_task", "attempt 4 > 3"))
    back = pickle.loads(pickle.dumps(a))
    assert back == a and str(back) == str(a)


def test_an_unknown_code_from_the_wire_still_travels():
    refused = GuardrailRefusal("unknown", "HTTP 429")
    assert refused.code == "unknown" and str(refused) == "unknown: HTTP 429"


def test_every_layer_names_the_one_type():
    import serving.client
    import serving.gateway_core
    from gates import GuardrailRefusal as gates_front
    from gates.port import GuardrailRefusal as port
    from serving.guardrails import CODES
    from serving.guardrails import GuardrailRefusal as serving_refusal

    assert port is gates_front is serving_refusal is GuardrailRefusal \
        is contracts.GuardrailRefusal
    assert not hasattr(serving.client, "GuardrailRefused")  # the old second and third types
    assert not hasattr(serving.gateway_core, "GuardrailError")
    assert CODES == CAPS


def test_the_gateway_raises_what_the_gates_catch():
    from gates.gates import GUARDRAIL_CODES
    from policies.policy import GuardrailSpec
    from serving.guardrails import TaskUsage, check_call

    refusal = check_call(GuardrailSpec(max_usd_per_task=0.01), attempt=1, max_attempts=3,
                         usage=TaskUsage(usd=0.02), team=None, team_spent_usd=0.0)
    with pytest.raises(GuardrailRefusal) as err:
        raise refusal
    assert err.value.code == Cap.MAX_USD_PER_TASK and err.value.code in GUARDRAIL_CODES
