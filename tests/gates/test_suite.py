import json

import pytest

from contracts.documents import DocumentError
from gates.suite import (
    REFERENCE_PER_CELL,
    REFERENCE_SUITE_PATH,
    REFERENCE_SUITE_SHA256,
    ExactVerifier,
    ProgramVerifier,
    RegexVerifier,
    Suite,
    SuiteCase,
    load_reference_suite,
    load_suite,
    reference_suite,
)
from gates.verifiers import check_output
from workload.tasks import DIFFICULTIES, FAMILIES, Task, split_of, task_id_of


def test_committed_reference_suite_is_what_the_generator_makes():
    generated = reference_suite()
    assert generated.content_hash == REFERENCE_SUITE_SHA256
    assert REFERENCE_SUITE_PATH.read_text(encoding="utf-8") == generated.to_json()
    assert load_reference_suite().content_hash == REFERENCE_SUITE_SHA256


def test_reference_suite_covers_every_family_and_level_from_heldout_only():
    suite = load_reference_suite()
    assert suite.cells() == {(f, d): REFERENCE_PER_CELL for f in FAMILIES for d in DIFFICULTIES}
    for case in suite.cases:
        task = Task(task_id_of(case.family, case.prompt), case.family, case.difficulty,
                    case.prompt, case.expected, {}, case.verifier.spec)
        assert split_of(task) == "heldout"
        assert check_output(case, case.expected + "\n").passed
    assert len({c.prompt for c in suite.cases}) == len(suite.cases)


def test_hash_ignores_metadata_but_pins_cases(tmp_path):
    suite = reference_suite(1)
    data = json.loads(suite.to_json())
    data["metadata"]["description"] = "edited"
    assert Suite.model_validate(data).content_hash == suite.content_hash
    data["cases"][0]["expected"] = "999"
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DocumentError, match="pinned"):
        load_suite(path, expected_hash=suite.content_hash)
    assert load_suite(path).content_hash != suite.content_hash


def test_bad_suite_names_the_field(tmp_path):
    data = json.loads(reference_suite(1).to_json())
    data["cases"][2]["verifier"] = {"kind": "reference", "spec": "float"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DocumentError) as err:
        load_suite(path)
    assert "cases.2.verifier" in str(err.value)


def test_yaml_suite_and_duplicate_ids(tmp_path):
    text = """
apiVersion: autopilot/v1
kind: GateSuite
metadata: {name: y}
cases:
  - {id: a, family: f, difficulty: 1, prompt: "p\\n=", expected: "x", verifier: {kind: exact}}
  - {id: a, family: f, difficulty: 1, prompt: "q\\n=", verifier: {kind: regex, pattern: "[0-9]+"}}
"""
    with pytest.raises(DocumentError, match="unique"):
        load_suite(text)
    suite = load_suite(text.replace("id: a, family: f, difficulty: 1, prompt: \"q", "id: b, family: f, difficulty: 1, prompt: \"q"))
    assert [c.id for c in suite.cases] == ["a", "b"]


def _case(verifier, expected=None):
    return SuiteCase(id="x", family="f", difficulty=1, prompt="p\n=", expected=expected,
                     verifier=verifier)


def test_exact_and_regex_verifiers():
    exact = _case(ExactVerifier(), "[1,2]")
    assert check_output(exact, " [1,2]\nmore").passed
    assert check_output(exact, "[1, 2]").status == "fail"
    regex = _case(RegexVerifier(pattern=r"-?[0-9]+"))
    assert check_output(regex, "42\n").passed
    result = check_output(regex, "4x2")
    assert result.status == "fail" and "does not match" in result.reason
    with pytest.raises(ValueError, match="regular expression"):
        RegexVerifier(pattern="(")
    with pytest.raises(ValueError, match="expected answer"):
        _case(ExactVerifier())


def test_program_verifier_pass_fail_and_hang():
    source = ("import json, sys\nd = json.load(sys.stdin)\n"
              "print('PASS' if d['answer'] == d['expected'] else 'FAIL got ' + d['answer'])\n")
    case = _case(ProgramVerifier(source=source), "7")
    assert check_output(case, "7\n").passed
    failed = check_output(case, "8\n")
    assert failed.status == "fail" and failed.reason == "got 8"
    hung = _case(ProgramVerifier(source="while True:\n    pass\n", timeout_s=3, cpu_s=1), "7")
    result = check_output(hung, "7")
    # CPU limit or wall clock, whichever comes first on a loaded machine.
    assert result.status == "error" and "killed" in result.reason
