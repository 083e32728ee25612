"""`autopilot policy show|diff|validate FILE` read only policy documents (issue 14, defect
11): any other file, say ``autopilot.yaml`` with the store's password, is refused by kind,
without its content being quoted back field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.cli import main

STARTER = Path(__file__).resolve().parents[2] / "controlplane" / "starter"
SECRET = "s3cret-password"
SETTINGS = (STARTER / "autopilot.yaml").read_text(encoding="utf-8").replace(
    "store_url: null", f"store_url: postgresql+psycopg://autopilot:{SECRET}@db:5432/autopilot")


def run(capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(tmp_path / "no-state"), *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out + out.err


@pytest.mark.parametrize("command", [["policy", "show"], ["policy", "validate"],
                                     ["policy", "diff", str(STARTER / "policy.yaml")]])
def test_the_settings_file_is_refused_by_kind_and_its_password_not_shown(
        capsys, tmp_path, command):
    settings = tmp_path / "autopilot.yaml"
    settings.write_text(SETTINGS, encoding="utf-8")
    code, out = run(capsys, tmp_path, *command, str(settings))
    assert code == 2, out
    assert "not a policy document (kind: 'Settings')" in out
    assert SECRET not in out and "store_url" not in out


@pytest.mark.parametrize("content, found", [
    (f"store_url: postgresql://u:{SECRET}@h/db\nmetadata: {{version: 1}}\n", "kind: missing"),
    (f"kind: [{SECRET}]\n", "kind: a list"),
    (f"kind: Secret\ndata: {SECRET}\n", "kind: 'Secret'"),
    (f"root:{SECRET}:19000:0:99999:7:::\n", "kind: missing"),  # a key ending in ":"
    (f"- {SECRET}\n", "it is not a YAML mapping"),
    (f"{SECRET}\n", "it is not a YAML mapping"),
    (f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n",
     "it is not a YAML mapping"),
    (f"a: [{SECRET}\n", "not valid YAML"),
    (f"x: &a [{SECRET}]\ny: *a\n", "aliases are not accepted"),
])
def test_other_documents_are_refused_without_quoting_them(capsys, tmp_path, content, found):
    path = tmp_path / "other.yaml"
    path.write_text(content, encoding="utf-8")
    code, out = run(capsys, tmp_path, "policy", "show", str(path))
    assert code == 2 and found in out, out
    assert SECRET not in out


def test_binary_files_are_refused_cleanly(capsys, tmp_path):
    path = tmp_path / "autopilot.db"
    path.write_bytes(b"SQLite format 3\x00" + SECRET.encode() + bytes(range(256)))
    code, out = run(capsys, tmp_path, "policy", "show", str(path))
    assert code == 2 and "refused before reading it as a policy" in out and SECRET not in out
    assert "Traceback" not in out


def test_a_policy_file_is_still_shown_and_validated(capsys, tmp_path):
    code, out = run(capsys, tmp_path, "--json", "policy", "show", str(STARTER / "policy.yaml"))
    assert code == 0 and json.loads(out)["kind"] == "Policy"
    code, out = run(capsys, tmp_path, "--json", "policy", "validate",
                    str(STARTER / "policy.yaml"))
    assert code == 0 and json.loads(out)["valid"] is True
