"""The reference task families: determinism, bounds, verifiers, the split, safe evaluation."""

from __future__ import annotations

import ast
import builtins
import re
import statistics
import time
from collections import defaultdict

import pytest

from workload import (
    DIFFICULTIES,
    END_MARKER,
    FAMILIES,
    MAX_ANSWER_CHARS,
    MAX_PROMPT_CHARS,
    PROMPT_SEPARATOR,
    Task,
    UnsafeExpressionError,
    bracket_completion,
    extract_answer,
    format_example,
    generate_tasks,
    iter_tasks,
    safe_eval,
    split_of,
    split_tasks,
    task_id_of,
    verify,
)

# One sample shared by the read-only tests: big enough to reach every template and level.
SAMPLE = generate_tasks(15_000, seed=7)


def _by_cell(tasks: list[Task]) -> dict[tuple[str, int], list[Task]]:
    cells: dict[tuple[str, int], list[Task]] = defaultdict(list)
    for t in tasks:
        cells[(t.family, t.difficulty)].append(t)
    return cells


def _corrupt(task: Task) -> str:
    """A wrong answer of the same shape as the right one."""
    if task.verifier == "int":
        return str(int(task.answer) + 1)
    if task.verifier == "string":
        return task.answer[:-1] + "z'"  # generated strings use only a-e, so "z" is wrong
    if task.family == "bracket_fix":
        return task.answer[:-1]  # one closer short
    return task.answer + "0" if not task.answer.startswith("[") else task.answer[:-1] + ",0]"


# --- generation -----------------------------------------------------------------------


def test_same_seed_same_tasks_and_different_seed_differs() -> None:
    a = generate_tasks(500, seed=11)
    b = generate_tasks(500, seed=11)
    c = generate_tasks(500, seed=12)
    assert a == b
    assert [t.prompt for t in a] != [t.prompt for t in c]


def test_seed_zero_stream_is_pinned() -> None:
    # Training data, held-out sets and recorded gate suites all derive from these streams;
    # a generator change that alters them must be deliberate (update this pin and say so).
    assert [(t.family, t.prompt, t.answer) for t in generate_tasks(4, seed=0)] == [
        ("var_trace", "trace: a=12;a=a+12;print(a)\n=", "24"),
        ("bracket_fix", "fix: f({[{a,c\n=", "f({[{a,c}]})"),
        ("var_trace", "trace: a=11;b=a-16;b=a-b;print(a)\n=", "11"),
        ("expr_eval", "eval: 1-((15-18)-19)\n=", "23"),
    ]


def test_generation_uses_no_global_random_state() -> None:
    import random

    random.seed(1)
    a = generate_tasks(200, seed="s")
    random.seed(2)
    random.random()
    assert generate_tasks(200, seed="s") == a


def test_longer_run_extends_shorter_and_stream_matches() -> None:
    short = generate_tasks(100, seed=3)
    long = generate_tasks(300, seed=3)
    assert long[:100] == short
    stream = iter_tasks(seed=3)
    assert [next(stream) for _ in range(300)] == long


def test_every_family_and_difficulty_is_generated() -> None:
    cells = _by_cell(SAMPLE)
    assert set(cells) == {(f, d) for f in FAMILIES for d in DIFFICULTIES}
    assert {"expr_eval", "list_ops", "bracket_fix", "assert_value"} <= set(FAMILIES)


def test_filters_and_mix() -> None:
    only = generate_tasks(300, seed=1, families=["list_ops"], difficulties=[2])
    assert {(t.family, t.difficulty) for t in only} == {("list_ops", 2)}

    by_family = generate_tasks(2000, seed=1, mix={"expr_eval": 3, "bracket_fix": 1})
    share = sum(t.family == "expr_eval" for t in by_family) / len(by_family)
    assert 0.70 < share < 0.80
    assert {t.family for t in by_family} == {"expr_eval", "bracket_fix"}

    by_cell = generate_tasks(200, seed=1, mix={("var_trace", 3): 1.0})
    assert {(t.family, t.difficulty) for t in by_cell} == {("var_trace", 3)}

    for bad in ({"nope": 1}, {"expr_eval": -1}, {"expr_eval": 0}, {"expr_eval": 1, ("list_ops", 1): 1}):
        with pytest.raises(ValueError):
            generate_tasks(1, seed=1, mix=bad)
    with pytest.raises(ValueError):
        generate_tasks(1, seed=1, families=["nope"])
    with pytest.raises(ValueError):
        generate_tasks(1, seed=1, difficulties=[4])


def test_prompt_and_answer_bounds_and_format() -> None:
    for t in SAMPLE:
        assert len(t.prompt) <= MAX_PROMPT_CHARS, t
        assert 0 < len(t.answer) <= MAX_ANSWER_CHARS, t
        assert t.prompt.endswith(PROMPT_SEPARATOR)
        assert t.prompt.count("\n") == 1 and "\n" not in t.answer
        assert format_example(t) == t.prompt + t.answer + END_MARKER


def test_task_id_is_stable_hash_of_family_and_prompt() -> None:
    t = SAMPLE[0]
    assert t.task_id == task_id_of(t.family, t.prompt)
    assert re.fullmatch(r"[0-9a-f]{16}", t.task_id)
    # pinned: a change here silently re-splits train / held-out and breaks recorded suites
    assert task_id_of("expr_eval", "eval: 3+4*2\n=") == "ae5ee92812de7f11"
    assert task_id_of("expr_eval", "eval: 3+4*2\n=") != task_id_of("list_ops", "eval: 3+4*2\n=")


def test_prompt_determines_difficulty() -> None:
    seen: dict[tuple[str, str], int] = {}
    for t in SAMPLE:
        assert seen.setdefault((t.family, t.prompt), t.difficulty) == t.difficulty


def test_features_are_numeric_and_common() -> None:
    for t in SAMPLE:
        assert t.features["difficulty"] == t.difficulty
        assert t.features["prompt_chars"] == len(t.prompt)
        assert t.features["size"] >= 1
        assert all(type(v) is int for v in t.features.values())


def test_task_round_trips_and_hashes() -> None:
    t = SAMPLE[1]
    assert Task.from_dict(t.to_dict()) == t
    assert len({t, Task.from_dict(t.to_dict())}) == 1


def test_difficulty_really_changes_the_task() -> None:
    cells = _by_cell(SAMPLE)

    def mean(family: str, level: int, key: str) -> float:
        return statistics.mean(t.features[key] for t in cells[(family, level)])

    for family in FAMILIES:
        sizes = [mean(family, d, "size") for d in DIFFICULTIES]
        assert sizes[0] < sizes[1] < sizes[2], (family, sizes)
    ops = [mean("expr_eval", d, "operands") for d in DIFFICULTIES]
    assert ops[0] < ops[1] < ops[2]
    assert mean("expr_eval", 1, "mul_ops") == 0 < mean("expr_eval", 2, "mul_ops") == 1
    assert mean("expr_eval", 2, "paren_pairs") == 0 < mean("expr_eval", 3, "paren_pairs")
    assert mean("bracket_fix", 1, "bracket_kinds") < mean("bracket_fix", 3, "bracket_kinds")
    lengths = [mean("list_ops", d, "list_length") for d in DIFFICULTIES]
    assert lengths[0] < lengths[1] < lengths[2]


# --- answers are right ----------------------------------------------------------------


def test_answers_agree_with_the_safe_evaluator() -> None:
    for t in SAMPLE:
        body = t.prompt[: -len(PROMPT_SEPARATOR)]
        if t.family == "expr_eval":
            assert str(safe_eval(body.removeprefix("eval: "))) == t.answer
        elif t.family == "assert_value":
            source = body.removeprefix("assert ").removesuffix(" == ?")
            value = safe_eval(source)
            expected = (f"'{value}'" if isinstance(value, str)
                        else "[" + ",".join(map(str, value)) + "]" if isinstance(value, list)
                        else str(value))
            assert expected == t.answer, t
        elif t.family == "var_trace":
            program = body.removeprefix("trace: ")
            *assignments, shown = program.split(";")
            env: dict[str, int] = {}
            for statement in assignments:
                name, rhs = statement.split("=")
                env[name] = safe_eval(rhs, names=env)
            assert str(env[shown.removeprefix("print(").removesuffix(")")]) == t.answer


def test_list_ops_answers() -> None:
    for t in SAMPLE:
        if t.family != "list_ops":
            continue
        op, _, literal = t.prompt[: -len(PROMPT_SEPARATOR)].partition(": ")
        values = [int(v) for v in literal[1:-1].split(",")]
        expected = {
            "sort": sorted(values),
            "reverse": values[::-1],
            "dedupe": list(dict.fromkeys(values)),
            "max": max(values),
        }[op]
        text = str(expected).replace(" ", "")
        assert text == t.answer
        if op == "dedupe":
            assert len(set(values)) < len(values)  # never the identity


def test_bracket_fix_rule() -> None:
    for t in SAMPLE:
        if t.family != "bracket_fix":
            continue
        broken = t.prompt.removeprefix("fix: ").removesuffix(PROMPT_SEPARATOR)
        assert t.answer == bracket_completion(broken)
        assert t.answer.startswith(broken) and len(t.answer) > len(broken)
        assert len(t.answer) - len(broken) == t.features["open_brackets"]
    assert bracket_completion("f(a,[b,{c") == "f(a,[b,{c}])"
    with pytest.raises(ValueError):
        bracket_completion("f(a]")


# --- verification ---------------------------------------------------------------------


def test_every_task_verifies_its_answer_and_rejects_a_corrupted_one() -> None:
    for t in SAMPLE:
        ok = verify(t, t.answer + END_MARKER + "garbage after the end marker")
        assert ok.passed, (t, ok)
        bad = verify(t, _corrupt(t))
        assert not bad.passed and bad.reason, (t, bad)


def test_int_verifier_compares_by_value_and_explains() -> None:
    t = next(t for t in SAMPLE if t.family == "expr_eval" and t.answer == "11")
    assert verify(t, "11").reason == "exact match"
    r = verify(t, "011")
    assert r.passed and "'011'" in r.reason and "11" in r.reason
    assert verify(t, " +11 \n").passed
    assert not verify(t, "12").passed and "12" in verify(t, "12").reason
    assert not verify(t, "eleven").passed
    assert not verify(t, "١١").passed  # non-ASCII digits that int() would accept
    assert not verify(t, "1" * 5000).passed  # no int() of a huge string
    assert not verify(t, "").passed and verify(t, "").reason == "empty answer"


def test_exact_and_string_verifiers_normalise_whitespace() -> None:
    lst = next(t for t in SAMPLE if t.family == "list_ops" and t.answer.startswith("["))
    spaced = lst.answer.replace(",", ", ")
    r = verify(lst, f"  {spaced}\nmore")
    assert r.passed and "whitespace" in r.reason
    assert r.extracted == spaced

    s = next(t for t in SAMPLE if t.verifier == "string")
    assert verify(s, s.answer).passed
    assert verify(s, '"' + s.answer[1:-1] + '"').passed
    assert not verify(s, s.answer[1:-1]).passed  # unquoted
    assert "expected" in verify(s, "'zz'").reason


def test_extract_answer_takes_first_line_or_end_token() -> None:
    assert extract_answer("\n  42 \nnext") == "42"
    assert extract_answer("42</s>junk") == "42"
    assert extract_answer("42<|endoftext|>") == "42"


def test_verify_never_evaluates_the_output(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("verify must not evaluate model output")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    monkeypatch.setattr(builtins, "compile", refuse)
    monkeypatch.setattr(ast, "literal_eval", refuse)
    monkeypatch.setattr(ast, "parse", refuse)
    marker = tmp_path / "pwned"
    hostile = [
        f"__import__('os').system('touch {marker}')",
        "__import__('os')",
        "11 if __import__('os') else 11",
        "(lambda: 11)()",
        "10+1",
    ]
    for t in SAMPLE[:300]:
        for output in hostile:
            result = verify(t, output)
            assert not result.passed and result.reason
    assert not marker.exists()


# --- the split ------------------------------------------------------------------------


def test_train_and_heldout_are_disjoint_by_prompt() -> None:
    train, heldout = split_tasks(SAMPLE)
    assert train and heldout
    assert not {(t.family, t.prompt) for t in train} & {(t.family, t.prompt) for t in heldout}
    share = len(heldout) / len(SAMPLE)
    assert 0.15 < share < 0.25
    # every (family, difficulty) cell has held-out prompts to evaluate on
    assert set(_by_cell(heldout)) == set(_by_cell(SAMPLE))


def test_split_is_a_function_of_the_prompt_and_filters_streams() -> None:
    t = SAMPLE[0]
    copy = Task.from_dict({**t.to_dict(), "task_id": "x", "features": {}})
    assert split_of(copy) == split_of(t)
    assert all(split_of(x) == "train" for x in generate_tasks(500, seed=5, split="train"))
    assert all(split_of(x) == "heldout" for x in generate_tasks(200, seed=5, split="heldout"))


# --- the safe evaluator ---------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os')",
        "open('x')",
        "eval('1')",
        "x",
        "'a'.__class__",
        "'a'.join(['b'])",
        "[1].append(2)",
        "().__class__",
        "(lambda: 1)()",
        "[x for x in [1]]",
        "len(*[[1]])",
        "sorted([2,1], reverse=1)",
        "2**10",
        "1 if 1 else 2",
        "1.5+1",
        "True",
        "'a'*10**6",
        "9**9**9",
        "1 < 2",
        "{'a': 1}",
        "print(1)",
        "(1,2)",
    ],
)
def test_safe_eval_refuses_outside_the_whitelist(source: str) -> None:
    with pytest.raises(UnsafeExpressionError):
        safe_eval(source)


def test_safe_eval_allows_the_whitelist() -> None:
    assert safe_eval("3+4*2") == 11
    assert safe_eval("(3+4)*2-7//2%3") == 14
    assert safe_eval("len('abcd')+1") == 5
    assert safe_eval("sorted([3,1,2])[::-1]") == [3, 2, 1]
    assert safe_eval("'abc'.upper()[1:]") == "BC"
    assert safe_eval("len(set([1,1,2]))") == 2
    assert safe_eval("a*b-1", names={"a": 3, "b": 4}) == 11
    with pytest.raises(ValueError):
        safe_eval("[1][5]")
    with pytest.raises(ValueError):
        safe_eval("1//0")


def test_generation_speed() -> None:
    # Budget is loose (shared CI machines); the measured figure is in docs/reference_tasks.md.
    start = time.perf_counter()
    tasks = generate_tasks(20_000, seed=0)
    elapsed = time.perf_counter() - start
    assert len(tasks) == 20_000
    assert elapsed < 5.0, f"20,000 tasks took {elapsed:.2f}s"
