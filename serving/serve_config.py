"""The fleet as a Ray Serve config file, for ``serve deploy`` / ``serve run`` (and a KubeRay
``RayService``'s ``serveConfigV2``): what ``start_fleet`` deploys, written down instead.

``fleet_serve_config`` names one application per tier deployment the policy needs plus the
gateway; each points at a builder here (``gateway_app``, ``tier_app``, ``stub_tier_app``)
that Serve imports on the cluster and calls with the application's ``args``. The builders
only translate those args into the applications ``serving.gateway`` and ``serving.tiers``
bind: nothing about how a fleet runs differs from ``autopilot serve``.

Every path in the args (manifest, spans) must exist at the same place on every node (a
shared mount; ``deploy/README.md``). The store URL is written only when it carries no
password; otherwise the builder reads ``$AUTOPILOT_STORE_URL`` on the cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from contracts.errors import PermanentError
from policies.policy import Policy
from serving.engine import EngineOptions

__all__ = ["STORE_URL_ENV", "fleet_serve_config", "gateway_app", "stub_tier_app", "tier_app"]

STORE_URL_ENV = "AUTOPILOT_STORE_URL"
_HERE = "serving.serve_config"


def _has_password(store_url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(store_url).password is not None
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: keep it out of the file
        return True


def fleet_serve_config(manifest_path: str | Path, store_url: str, policy: Policy, *,
                       host: str = "127.0.0.1", port: int = 8000,
                       gateway_replicas: int = 1, require_keys: bool = False,
                       reload_interval_s: float = 2.0, otlp_endpoint: str | None = None,
                       spans_path: str | None = None, stub_tiers: bool = False,
                       engine_options: EngineOptions | None = None) -> dict[str, Any]:
    """A ``ServeDeploySchema`` document (a plain dict) for ``policy``'s fleet: the gateway on
    route ``/`` and one application per tier deployment. ``stub_tiers``: engine-less tiers
    (``serving.stub_tiers``), for tests of the cluster wiring only."""
    from contracts.manifest import load_fleet
    from policies.policy import validate_against_fleet
    from serving.fleet import GATEWAY_ROUTE, check_listen
    from serving.tiers import fleet_owner, required_deployments

    check_listen(host, require_keys)
    manifest_path = Path(manifest_path).resolve()
    fleet = load_fleet(manifest_path)
    validate_against_fleet(policy, fleet)
    keys = required_deployments(policy, fleet)
    owner = fleet_owner(store_url)
    options = (engine_options or EngineOptions()).as_dict()
    store_arg = {} if _has_password(store_url) else {"store_url": store_url}
    tiers = [{"name": key.app_name, "route_prefix": None,
              "import_path": f"{_HERE}:{'stub_tier_app' if stub_tiers else 'tier_app'}",
              "args": {"manifest_path": str(manifest_path), **key.as_dict(),
                       "engine_options": options, "owner": owner}}
             for key in keys]
    gateway = {"name": "gateway", "route_prefix": GATEWAY_ROUTE,
               "import_path": f"{_HERE}:gateway_app",
               "args": {"manifest_path": str(manifest_path), **store_arg,
                        "engine_options": options, "spans_path": spans_path,
                        "otlp_endpoint": otlp_endpoint,
                        "reload_interval_s": float(reload_interval_s),
                        "require_keys": bool(require_keys), "owner": owner,
                        "num_replicas": int(gateway_replicas)}}
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": int(port)},
            "applications": [*tiers, gateway]}


def _store_url(args: dict[str, Any]) -> str:
    url = args.get("store_url") or os.environ.get(STORE_URL_ENV)
    if not url:
        raise PermanentError(f"the gateway's args name no store_url and ${STORE_URL_ENV} is not "
                             "set on the cluster")
    return url


def gateway_app(args: dict[str, Any]):
    """Serve builder: the gateway application from a config's ``args``."""
    from serving.gateway import gateway_application

    return gateway_application(
        args["manifest_path"], _store_url(args),
        engine_options=EngineOptions(**(args.get("engine_options") or {})),
        spans_path=args.get("spans_path"), otlp_endpoint=args.get("otlp_endpoint"),
        reload_interval_s=float(args.get("reload_interval_s", 2.0)),
        require_keys=bool(args.get("require_keys", False)), owner=args["owner"],
        num_replicas=args.get("num_replicas"))


def tier_app(args: dict[str, Any]):
    """Serve builder: one vLLM tier deployment from a config's ``args``."""
    from serving.tiers import DeploymentKey, tier_application

    key = DeploymentKey(args["tier"], args["variant"], bool(args["prefix_caching"]))
    return tier_application(args["manifest_path"], key,
                            EngineOptions(**(args.get("engine_options") or {})), args["owner"])


def stub_tier_app(args: dict[str, Any]):
    """Serve builder: an engine-less tier (``serving.stub_tiers``) under the same name."""
    from serving.stub_tiers import stub_tier_application

    return stub_tier_application(owner=args["owner"],
                                 delay_s=float(args.get("delay_s", 0.05)))
