"""``autopilot keys create|list|revoke`` and ``autopilot serve --host/--require-keys``
(issue 15, defect 4) on a temporary state directory with a real store. Nothing here starts
Ray: ``serve`` is refused before it, or its fleet start is replaced."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from click.testing import CliRunner

from controlplane.cli import cli


@pytest.fixture()
def state(tmp_path):
    root = tmp_path / "state"
    result = CliRunner().invoke(cli, ["--state-dir", str(root), "init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def run(state, *args):
    return CliRunner().invoke(cli, ["--state-dir", str(state), *args])


def test_create_list_revoke_round_trip(state):
    created = run(state, "keys", "create", "--team", "payments", "--repo", "svc-a",
                  "--name", "ci", "--as", "alice", "--json")
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["secret"].startswith("ap-") and key["team"] == "payments"
    assert key["repos"] == ["svc-a"] and key["name"] == "ci" and key["purpose"] == "serve"

    listed = run(state, "--json", "keys", "list")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert row["key_id"] == key["key_id"] and row["revoked_at"] is None
    assert "secret" not in row and "secret_sha256" not in row
    assert key["secret"] not in listed.output

    revoked = run(state, "keys", "revoke", key["key_id"], "--reason", "rotated", "--json")
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.output)["revoked_at"] is not None
    assert json.loads(run(state, "keys", "list", "--active", "--json").output) == []

    audit = json.loads(run(state, "--json", "audit", "log").output)
    actions = [e["action"] for e in audit]
    assert "api_key.create" in actions and "api_key.revoke" in actions


def test_the_secret_is_printed_once_and_only_its_hash_is_stored(state):
    created = run(state, "keys", "create", "--team", "search")
    assert created.exit_code == 0, created.output
    secret = next(w for w in created.output.split() if w.startswith("ap-"))
    assert "shown once" in created.output
    assert secret not in run(state, "keys", "list").output
    db = sqlite3.connect(state / "autopilot.db")
    try:
        [(stored,)] = db.execute("SELECT secret_sha256 FROM api_keys").fetchall()
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.split(".", 1)[1] not in dump


def test_revoking_an_unknown_key_is_an_error(state):
    result = run(state, "keys", "revoke", "k000000000000")
    assert result.exit_code != 0 and "no API key" in result.output


def test_a_gate_key_is_created_with_its_purpose(state):
    result = run(state, "--json", "keys", "create", "--team", "platform", "--purpose", "gate")
    assert json.loads(result.output)["purpose"] == "gate"
    assert run(state, "keys", "create", "--team", "x", "--purpose", "admin").exit_code != 0


# ---------------------------------------------------------------------------- serve
def test_serve_lists_host_and_require_keys():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert "--host" in result.output and "--require-keys" in result.output


def test_serve_beyond_loopback_without_keys_is_refused(state, monkeypatch):
    import serving.fleet

    started = []
    monkeypatch.setattr(serving.fleet, "serve_until_signalled",
                        lambda *a, **kw: started.append(kw))
    result = run(state, "serve", "--host", "0.0.0.0")
    assert result.exit_code != 0 and "beyond loopback" in result.output
    assert started == []

    assert run(state, "serve", "--host", "0.0.0.0", "--require-keys").exit_code == 0
    assert run(state, "serve").exit_code == 0  # loopback: keys optional, as before
    assert [(kw["host"], kw["require_keys"]) for kw in started] == [
        ("0.0.0.0", True), ("127.0.0.1", False)]


def test_the_setting_requires_keys_too(state, monkeypatch):
    import serving.fleet

    started = []
    monkeypatch.setattr(serving.fleet, "serve_until_signalled",
                        lambda *a, **kw: started.append(kw))
    settings = state / "autopilot.yaml"
    settings.write_text(settings.read_text().replace("require_api_keys: false",
                                                     "require_api_keys: true"))
    assert run(state, "serve", "--host", "0.0.0.0").exit_code == 0
    assert started[0]["require_keys"] is True
