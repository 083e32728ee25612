import pytest

from serving.protocol import BadRequest, completion_body, parse_request


def body(**kw):
    return {"model": "auto", "prompt": "eval: 1\n=", "max_tokens": 8, "stop": ["\n"],
            "autopilot": {"task_id": "t1", "attempt": 2, "family": "expr_eval",
                          "features": {"difficulty": 2, "big": True, "tag": "x"}}, **kw}


def test_parses_a_completion_with_task_context():
    req = parse_request(body(), "completion", traceparent_header="00-abc-def-01")
    assert (req.prompt, req.max_tokens, req.stop, req.task_id, req.attempt) == (
        "eval: 1\n=", 8, ("\n",), "t1", 2)
    assert req.ctx.features == {"difficulty": 2, "big": True, "tag": "x"}
    assert req.ctx.traceparent == "00-abc-def-01" and not req.anonymous


def test_chat_messages_become_one_prompt_and_defaults_apply():
    req = parse_request({"messages": [{"role": "system", "content": "a"},
                                      {"role": "user", "content": "b"}]}, "chat")
    assert req.prompt == "a\nb" and req.model == "auto" and req.max_tokens == 32
    assert req.anonymous and req.ctx.task_id.startswith("anon-") and req.stop == ()


@pytest.mark.parametrize("bad, field", [
    ({"autopilot": {"task_id": "t", "attempt": 0}}, "autopilot.attempt"),
    ({"autopilot": {"task_id": "t", "attempt": "2"}}, "autopilot.attempt"),
    ({"autopilot": {"task_id": "t", "features": {"x": [1]}}}, "autopilot.features.x"),
    ({"autopilot": {"task_id": "t", "purpose": "fun"}}, "autopilot.purpose"),
    ({"autopilot": {"task_id": "t", "colour": 1}}, "autopilot.colour"),
    ({"autopilot": {"attempt": 1}}, "autopilot.task_id"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"prompt": 5}, "prompt"),
    ({"temperature": 0.7}, "temperature"),
])
def test_bad_fields_are_named(bad, field):
    with pytest.raises(BadRequest) as err:
        parse_request(body(**bad), "completion")
    assert any(f.startswith(field) for f, _ in err.value.problems), err.value.problems
    error = err.value.as_error()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith(field)
    assert set(error) >= {"message", "type", "param", "code"}


def test_non_object_body_is_refused():
    with pytest.raises(BadRequest, match="JSON object"):
        parse_request([1], "completion")


def test_completion_bodies_follow_openai_shapes():
    c = completion_body("completion", text="3", finish_reason="stop", model="S/bf16",
                        input_tokens=5, output_tokens=1, cached_input_tokens=0,
                        autopilot={"tier": "S"})
    assert c["object"] == "text_completion" and c["choices"][0]["text"] == "3"
    assert c["usage"]["total_tokens"] == 6
    chat = completion_body("chat", text="3", finish_reason="stop", model="S/bf16",
                           input_tokens=5, output_tokens=1, cached_input_tokens=2, autopilot={})
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "3"}
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
