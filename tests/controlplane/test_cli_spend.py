"""`autopilot anomalies`, `autopilot finops --forecast`, `autopilot export focus` and the
nightly's anomaly task, end to end on a temporary state directory: nine simulated days with
one injected spike (team payments, family list_ops, 2026-11-09 14:00-15:00 UTC)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from contracts.errors import TransientError
from contracts.manifest import load_fleet
from contracts.spans import Attr
from controlplane.cli import cli
from policies.policy import load_policy
from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

DAYS = [f"2026-11-{d:02d}" for d in range(1, 10)]
SPIKE = "2026-11-09T14:00:00+00:00"
MANDATORY = {  # FOCUS 1.1, "Feature level: Mandatory"
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
}


def _squeezed(spans, day: str, hour: int, prefix: str):
    """The spans of a simulated day squeezed into one hour of it, task ids renamed."""
    base = pd.Timestamp(day, tz="UTC").value
    start = base + hour * 3_600_000_000_000
    for span in spans:
        attrs = dict(span["attributes"])
        if Attr.TASK_ID in attrs:
            attrs[Attr.TASK_ID] = prefix + attrs[Attr.TASK_ID]
        yield {**span, "attributes": attrs,
               "start_time_unix_nano": start + (span["start_time_unix_nano"] - base) // 24,
               "end_time_unix_nano": start + (span["end_time_unix_nano"] - base) // 24}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    runner = CliRunner()
    assert runner.invoke(cli, ["--state-dir", str(root), "init"]).exit_code == 0
    fleet = load_fleet(root / "fleet.yaml")
    policy = load_policy("controlplane/starter/policy.yaml")
    for i, day in enumerate(DAYS):
        write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=240, day=day, seed=i)),
                    root / "spans" / f"{day}.jsonl")
    spike = simulate_spans(policy, fleet, WorkloadShape(
        tasks=120, day=DAYS[-1], seed=99, teams=("payments",), families=("list_ops",)))
    write_spans(_squeezed(spike, DAYS[-1], 14, "spike-"), root / "spans" / "spike.jsonl")
    result = runner.invoke(cli, ["--state-dir", str(root), "ingest", str(root / "spans")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # A budget for payments on the active policy: the forecast reads it from there.
    from store import Store

    with Store.for_state_dir(root) as store:
        active = store.active_policy().policy
        guardrails = active.spec.guardrails.model_dump(mode="json")
        guardrails["team_budgets"] = {"payments": {"usd_per_day": 0.5}}
        v2 = store.put_policy(active.evolve(author="test", guardrails=guardrails))
        store.activate(v2.version, actor="test", reason="team budgets")
    return root


def run(state, *args):
    result = CliRunner().invoke(cli, ["--state-dir", str(state), *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_anomalies_finds_the_spike_records_it_once_and_lists_it(state):
    data = json.loads(run(state, "anomalies", "--since", DAYS[-1], "--until", DAYS[-1],
                          "--json"))
    assert data["detected"] == len(data["anomalies"]) and data["recorded"] >= 1
    hits = {(a["granularity"], a["scope"], a["key"], a["period_start"])
            for a in data["anomalies"]}
    assert ("hour", "team", "payments", SPIKE) in hits
    assert ("hour", "family", "list_ops", SPIKE) in hits
    assert all(a["period_start"] >= "2026-11-09" for a in data["anomalies"])
    spike = next(a for a in data["anomalies"]
                 if (a["scope"], a["key"], a["period_start"]) == ("team", "payments", SPIKE))
    assert spike["spend_usd"] > 3 * spike["baseline_usd"] and spike["history"] == 7
    again = json.loads(run(state, "--json", "anomalies", "--since", DAYS[-1], "--until",
                           DAYS[-1]))
    assert again["detected"] == data["detected"] and again["recorded"] == 0
    listed = json.loads(run(state, "anomalies", "--recorded", "--since", DAYS[-1], "--json"))
    assert {(a["scope"], a["key"], a["period_start"]) for a in listed["anomalies"]} >= {
        ("team", "payments", SPIKE)}
    table = run(state, "anomalies", "--since", DAYS[-1], "--until", DAYS[-1], "--no-record")
    assert "spend anomalies" in table and "payments" in table


def test_a_looser_rule_is_passed_through_and_a_bad_one_refused(state):
    strict = json.loads(run(state, "anomalies", "--since", DAYS[-1], "--no-record", "--json",
                            "--ratio", "50", "--min-usd-hour", "1000", "--min-usd-day",
                            "1000"))
    assert strict["detected"] == 0
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "anomalies", "--ratio", "1"])
    assert result.exit_code != 0 and "ratio" in result.output


def test_finops_forecast_per_team_against_the_budget(state):
    data = json.loads(run(state, "--json", "finops", "--forecast", "--horizon", "7"))
    assert {e["id"] for e in data["register"]} >= {"FIN-01", "FIN-09"}
    rows = {r["team"]: r for r in data["forecast"]}
    assert set(rows) == {"payments", "search", "platform"}
    payments = rows["payments"]
    assert payments["method"] == "seasonal_naive" and "ETS needs 14" in payments["note"]
    assert payments["history_days"] == len(DAYS) and len(payments["point"]) == 7
    assert payments["days"][0] == "2026-11-10"
    assert payments["budget_usd_per_day"] == 0.5 and payments["days_until_budget"] == 1
    assert rows["search"]["budget_usd_per_day"] is None
    assert all(lo <= p <= hi for lo, p, hi in zip(payments["lower"], payments["point"],
                                                   payments["upper"], strict=True))
    assert "forecast" not in json.loads(run(state, "--json", "finops"))
    assert "spend forecast" in run(state, "finops", "--forecast")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_focus_writes_the_specs_columns_and_the_metrics_spend(state, tmp_path, fmt):
    out = tmp_path / f"focus.{fmt}"
    result = json.loads(run(state, "--json", "export", "focus", "--since", DAYS[0], "--until",
                            DAYS[-1], "--format", fmt, "--out", str(out)))
    frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    assert MANDATORY <= set(frame.columns) and len(frame) == result["rows"] > 0
    [whole] = json.loads(run(state, "--json", "metrics", "--since", DAYS[0], "--until",
                             DAYS[-1]))
    assert frame["BilledCost"].sum() == pytest.approx(whole["spend_total"])
    assert result["billed_usd"] == pytest.approx(whole["spend_total"])
    assert result["focus_version"] == "1.1"
    tags = json.loads(frame["Tags"].iloc[0])
    assert {"team", "repo", "family", "autopilot/tier"} <= set(tags)
    if fmt == "csv":
        assert frame["ChargePeriodStart"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z").all()


def test_export_focus_needs_an_out_path(state):
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "export", "focus"])
    assert result.exit_code != 0 and "--out" in result.output


def test_the_nightly_task_records_the_windows_anomalies_and_names_the_largest(state):
    from controlplane.flows import spend_anomalies
    from controlplane.loop.context import LoopContext

    with LoopContext.open(state) as ctx:
        summary = spend_anomalies.fn(ctx, DAYS[-1], DAYS[-1])
        assert summary["detected"] >= 2 and summary["by_scope"]["team"] >= 1
        assert len(summary["top"]) <= 5 and "3x" in summary["rule"]
        assert summary["top"][0].startswith(("team payments", "family list_ops", "tier "))
        recorded = ctx.store.list_anomalies(scope="team")
        assert any(a.key == "payments" and a.period_start.isoformat() == SPIKE
                   for a in recorded)
        quiet = spend_anomalies.fn(ctx, "2026-12-01", "2026-12-01")
        assert quiet["detected"] == 0 and quiet["top"] == []


def test_the_nightly_signal_fails_open_but_lets_a_transient_error_retry(state):
    from controlplane.settings import StateDir
    from controlplane.spend import nightly_anomalies

    class Broken:
        def __init__(self, error):
            self.error = error

        def record_anomalies(self, *args, **kwargs):
            raise self.error

    fleet = load_fleet(state / "fleet.yaml")
    out = nightly_anomalies(StateDir(state), Broken(RuntimeError("disk on fire")), fleet,
                            DAYS[-1], DAYS[-1], actor="t")
    assert out == {"error": "RuntimeError: disk on fire"}
    with pytest.raises(TransientError):
        nightly_anomalies(StateDir(state), Broken(TransientError("busy")), fleet, DAYS[-1],
                          DAYS[-1], actor="t")
