"""``autopilot serve --emit-config``: the fleet as a Ray Serve config that Serve's own schema
accepts, naming the active policy's tier deployments, whose builders Serve can import and
call with the written args (no Ray started)."""

from __future__ import annotations

import importlib

import pytest
import yaml
from click.testing import CliRunner

from controlplane.bootstrap import initialise_state
from controlplane.cli import cli
from controlplane.settings import StateDir
from serving.serve_config import fleet_serve_config
from serving.testing import make_stub_fleet
from serving.tiers import fleet_owner, required_deployments
from store import Store


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOPILOT_STORE_URL", raising=False)
    monkeypatch.delenv("AUTOPILOT_GATEWAY_REPLICAS", raising=False)
    state = StateDir(tmp_path / "state")
    initialise_state(state, fleet_file=make_stub_fleet(tmp_path / "fleet"))
    return state


def _emit(state: StateDir, *args: str) -> dict:
    out = CliRunner().invoke(cli, ["--state-dir", str(state.root), "serve", "--emit-config",
                                   *args])
    assert out.exit_code == 0, out.output
    return yaml.safe_load(out.output)


def test_the_emitted_config_is_a_serve_deploy_config_for_the_active_policy(state):
    from ray.serve.schema import ServeDeploySchema

    config = _emit(state, "--replicas", "2", "--port", "8123")
    schema = ServeDeploySchema.model_validate(config)
    with Store.open(state.store_url()) as store:
        policy = store.active_policy().policy
    from contracts.manifest import load_fleet

    keys = required_deployments(policy, load_fleet(state.fleet_path))
    apps = {a.name: a for a in schema.applications}
    assert set(apps) == {"gateway", *(k.app_name for k in keys)}
    assert len(keys) == 3  # the starter cascade routes over S, M and L
    assert schema.http_options.port == 8123
    gateway = apps["gateway"]
    assert gateway.route_prefix == "/" and gateway.import_path == "serving.serve_config:gateway_app"
    assert gateway.args["num_replicas"] == 2
    assert gateway.args["store_url"] == state.store_url()
    owner = fleet_owner(state.store_url())
    for key in keys:
        tier = apps[key.app_name]
        assert tier.route_prefix is None and tier.import_path == "serving.serve_config:tier_app"
        assert (tier.args["tier"], tier.args["variant"], tier.args["owner"]) == (
            key.tier, key.variant, owner)
        assert tier.args["manifest_path"] == str(state.fleet_path.resolve())


def test_every_application_builds_from_its_written_args(state, tmp_path):
    from ray.serve import Application

    target = tmp_path / "ray-serve.yaml"
    out = CliRunner().invoke(cli, ["--state-dir", str(state.root), "serve", "--emit-config",
                                   str(target), "--stub-tiers"])
    assert out.exit_code == 0, out.output
    config = yaml.safe_load(target.read_text())
    assert "&id" not in target.read_text()  # spelt out: a reader sees every app's args
    for app in config["applications"]:
        module, name = app["import_path"].split(":")
        built = getattr(importlib.import_module(module), name)(app["args"])
        assert isinstance(built, Application), app["name"]
    stub_paths = {a["import_path"] for a in config["applications"] if a["name"] != "gateway"}
    assert stub_paths == {"serving.serve_config:stub_tier_app"}


def test_a_store_url_with_a_password_stays_out_of_the_file(state, monkeypatch):
    from contracts.manifest import load_fleet

    with Store.open(state.store_url()) as store:
        policy = store.active_policy().policy
    url = "postgresql+psycopg://autopilot:s3cret@db.internal:5432/autopilot"
    config = fleet_serve_config(state.fleet_path, url, policy)
    assert "s3cret" not in yaml.safe_dump(config)
    gateway = next(a for a in config["applications"] if a["name"] == "gateway")
    assert "store_url" not in gateway["args"]
    assert gateway["args"]["owner"] == fleet_owner(url)  # hashed: safe to show
    assert load_fleet(state.fleet_path)  # the manifest the args name exists

    from serving.serve_config import _store_url

    monkeypatch.setenv("AUTOPILOT_STORE_URL", url)
    assert _store_url(gateway["args"]) == url  # read on the cluster instead
    monkeypatch.delenv("AUTOPILOT_STORE_URL")
    with pytest.raises(Exception, match="AUTOPILOT_STORE_URL"):
        _store_url(gateway["args"])


def test_a_config_beyond_loopback_without_keys_is_refused(state):
    out = CliRunner().invoke(cli, ["--state-dir", str(state.root), "serve", "--emit-config",
                                   "--host", "0.0.0.0"])
    assert out.exit_code != 0 and "API keys" in out.output
