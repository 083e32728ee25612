"""Issue 15, defect 8: the store URL (with its password) may come from the environment,
is never written back to ``autopilot.yaml`` and is printed only with the password masked."""

import json

import pytest
from click.testing import CliRunner

from controlplane.cli import cli
from controlplane.settings import ENV_STORE_URL, Settings, StateDir, display_url

SECRET_URL = "postgresql+psycopg://autopilot:hunter2@db.example:5432/autopilot"


def test_the_environment_beats_the_file_and_the_default(tmp_path, monkeypatch):
    state = StateDir(tmp_path)
    monkeypatch.delenv(ENV_STORE_URL, raising=False)
    assert state.store_url() == f"sqlite:///{tmp_path / 'autopilot.db'}"
    state.save_settings(Settings(store_url="sqlite:////srv/file.db"))
    assert state.store_url() == "sqlite:////srv/file.db"
    monkeypatch.setenv(ENV_STORE_URL, SECRET_URL)
    assert state.store_url() == SECRET_URL
    monkeypatch.setenv(ENV_STORE_URL, "  ")  # blank: as if unset
    assert state.store_url() == "sqlite:////srv/file.db"


@pytest.mark.parametrize("on_disk", [None, "sqlite:////srv/file.db"])
def test_save_settings_never_writes_the_environment_url(tmp_path, monkeypatch, on_disk):
    state = StateDir(tmp_path)
    state.save_settings(Settings(store_url=on_disk))
    monkeypatch.setenv(ENV_STORE_URL, SECRET_URL)
    # a caller that copies the effective URL into the settings and saves them
    settings = state.settings().model_copy(update={"store_url": state.store_url(),
                                                   "runaway_attempts": 4})
    state.save_settings(settings)
    text = state.settings_path.read_text()
    assert "hunter2" not in text and "db.example" not in text
    assert "runaway_attempts: 4" in text
    monkeypatch.delenv(ENV_STORE_URL)
    assert state.settings().store_url == on_disk


def test_display_url_masks_the_password():
    shown = display_url(SECRET_URL)
    assert "hunter2" not in shown and "***" in shown and "db.example" in shown
    assert display_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert "hunter2" not in display_url("::not a url hunter2")


def test_init_uses_the_environment_url_and_prints_it_masked(tmp_path, monkeypatch):
    from store import Store

    db = tmp_path / "env.db"
    opened: list[str] = []
    real_open = Store.open.__func__

    def open_sqlite(cls, url, **options):  # the PostgreSQL URL lands in a SQLite file
        opened.append(url)
        return real_open(cls, f"sqlite:///{db}", **options)

    monkeypatch.setattr(Store, "open", classmethod(open_sqlite))
    monkeypatch.setenv(ENV_STORE_URL, SECRET_URL)
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "s"), "--json", "init"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert opened and set(opened) == {SECRET_URL}
    assert "hunter2" not in result.output
    assert json.loads(result.output)["store"] == display_url(SECRET_URL)
    assert db.is_file()
    assert "hunter2" not in (tmp_path / "s" / "autopilot.yaml").read_text()
