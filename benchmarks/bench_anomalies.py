"""Spend anomalies and the spend forecast on windows with known truth (and on a real trace).

    .venv/bin/python benchmarks/bench_anomalies.py [--weeks 5] [--seed 0] [--data ../shared/data]

Synthetic truth: the span simulator (``telemetry.synthetic``) over ``--weeks`` weeks under
the starter policy and fleet: three teams with their own trend (payments +2%/day, search
flat, platform -1%/day), a weekly season (weekends at 35%), a working-hours daily profile,
+-5% day-to-day noise. Injected into weeks 2..n-1 (the held-out last week stays clean):
- spikes: one team's extra tasks of one family squeezed into one hour (2x-8x the team's
  usual tasks in that hour);
- runaway families: a family whose extra tasks loop (up to 8 attempts on L, that rarely
  pass) for 6 to 24 hours across every team (10%-40% of the family's usual tasks there).
Every injected task is known, so the spend of every (scope, key, period) cell splits into a
base and an injected part. Scored at the product's rule (``AnomalyRule()``: 3x the median
of the last 7 same-hour or day values, $0.05/hour and $0.50/day floors):
- precision: flagged cells whose injected spend at least equals their base spend (the
  injection at least doubled them); the rest are false alerts of the base noise;
- recall (cells): flagged cells among those the injection lifted above 3x their base spend;
- recall (events): injected events with an alert on their team or family in their hours
  (runaways also at day granularity).
Forecast: each team's daily spend of the first weeks, the held-out last week forecast by
``economics.forecast`` (statsmodels ETS) and by the naive same-weekday baseline (last week
repeated); MAPE of each and their ratio (below 1: the model beats the baseline).

Real trace: with ``--data`` holding ``azure_llm_2023`` (the Azure LLM inference traces),
every request is priced on tier M of the starter fleet by the cost model (``price_calls``)
from its token counts, summed per minute, and judged by the same rule against the median
of the previous 10 minutes (the trace is one hour: there is no earlier day); the number of
alerts is printed. Skipped cleanly when the folder is absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.manifest import load_fleet
from contracts.spans import SPAN_TASK, Attr
from contracts.tables import TABLES
from economics.anomalies import GRANULARITIES, SCOPES, AnomalyRule, detect_anomalies
from economics.costmodel import price_calls
from economics.forecast import forecast_series
from economics.spend import spend_by_period, spend_lines
from policies.policy import load_policy
from telemetry.ingest import ingest_paths
from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans
from telemetry.warehouse import read_table

FIRST_DAY = pd.Timestamp("2026-09-07")  # a Monday
TEAMS = {"payments": (700, 0.02), "search": (500, 0.0), "platform": (400, -0.01)}
FAMILIES = ("expr_eval", "list_ops", "bracket_fix", "assert_value")
WEEKEND = 0.35
# Working-hours profile (UTC): share of a day's tasks per hour.
_PROFILE = np.array([0.3] * 7 + [0.8, 1.4, 1.8, 1.9, 1.8, 1.5, 1.7, 1.9, 1.8, 1.6, 1.2, 0.8]
                    + [0.5] * 5)
PROFILE = _PROFILE / _PROFILE.sum()
CDF = np.concatenate([[0.0], np.cumsum(PROFILE)])
RUNAWAY_POLICY = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: bench, created: 2026-01-01T00:00:00Z}
spec:
  routing: {router: fixed, escalation: [L], attempts_per_tier: 8, max_attempts: 8}
"""


def _remap(offset_s: float) -> float:
    """A uniform offset into the day, moved to follow the working-hours profile."""
    u = offset_s / 86_400.0
    h = min(int(np.searchsorted(CDF, u, side="right")) - 1, 23)
    return (h + (u - CDF[h]) / PROFILE[h]) * 3600.0


def _shaped(spans, day: pd.Timestamp, prefix: str, *, hours: tuple[float, float] | None = None):
    """Spans of one simulated day: task ids prefixed; each task moved, all its spans by the
    same shift, to follow the daily profile, or squeezed into ``hours`` (start, length)."""
    day_ns = day.tz_localize("UTC").value
    pending: list[dict] = []
    for span in spans:
        pending.append(span)
        if span["name"] != SPAN_TASK:
            continue
        offset = (span["start_time_unix_nano"] - day_ns) / 1e9
        if hours is None:
            target = _remap(offset)
        else:
            target = hours[0] * 3600 + offset / 86_400.0 * hours[1] * 3600
        shift = int(day_ns + target * 1e9) - span["start_time_unix_nano"]
        for s in pending:
            attrs = dict(s["attributes"])
            if Attr.TASK_ID in attrs:
                attrs[Attr.TASK_ID] = prefix + attrs[Attr.TASK_ID]
            yield {**s, "attributes": attrs,
                   "start_time_unix_nano": s["start_time_unix_nano"] + shift,
                   "end_time_unix_nano": min(s["end_time_unix_nano"] + shift,
                                             day_ns + 86_400 * 10**9 - 1)}
        pending = []


def _expected_tasks(team: str, d: int, scale: float = 1.0) -> float:
    base, trend = TEAMS[team]
    weekday = (FIRST_DAY + pd.Timedelta(days=d)).day_of_week
    return scale * base * (1 + trend * d) * (WEEKEND if weekday >= 5 else 1.0)


def simulate(weeks: int, seed: int, root: Path, scale: float = 1.0):
    """Write and ingest the base workload and the injected events; return the events."""
    rng = np.random.default_rng(seed)
    fleet = load_fleet(ROOT / "controlplane" / "starter" / "fleet.yaml")
    policy = load_policy(ROOT / "controlplane" / "starter" / "policy.yaml")
    runaway = load_policy(RUNAWAY_POLICY)
    days = 7 * weeks
    spans_dir = root / "spans"
    k = 0
    for d in range(days):
        day = FIRST_DAY + pd.Timedelta(days=d)
        for team in TEAMS:
            n = max(1, round(_expected_tasks(team, d, scale) * rng.lognormal(0, 0.05)))
            shape = WorkloadShape(tasks=n, day=day.strftime("%Y-%m-%d"), seed=k,
                                  teams=(team,), families=FAMILIES)
            write_spans(_shaped(simulate_spans(policy, fleet, shape), day, f"b{k}-"),
                        spans_dir / f"base-{k}.jsonl")
            k += 1
    events: list[dict] = []
    inject_days = list(range(7, days - 7))
    for i in range(2 * weeks):  # spikes
        d = int(rng.choice(inject_days))
        hour = int(rng.integers(0, 24))
        team = str(rng.choice(list(TEAMS)))
        family = str(rng.choice(FAMILIES))
        multiple = float(rng.uniform(2, 8))
        n = max(1, round(multiple * _expected_tasks(team, d, scale) * PROFILE[hour]))
        day = FIRST_DAY + pd.Timedelta(days=d)
        shape = WorkloadShape(tasks=n, day=day.strftime("%Y-%m-%d"), seed=10_000 + i,
                              teams=(team,), families=(family,))
        write_spans(_shaped(simulate_spans(policy, fleet, shape), day, f"i{i}-",
                            hours=(hour, 1)), spans_dir / f"inject-spike-{i}.jsonl")
        events.append({"kind": "spike", "day": d, "start": hour, "hours": 1, "team": team,
                       "family": family, "size": round(multiple, 1), "tasks": n})
    for i in range(max(1, weeks - 2)):  # runaway families
        d = int(rng.choice(inject_days))
        length = int(rng.integers(6, 25))
        start = int(rng.integers(0, 25 - length))
        family = str(rng.choice(FAMILIES))
        share = float(rng.uniform(0.1, 0.4))
        usual = sum(_expected_tasks(t, d, scale) for t in TEAMS) / len(FAMILIES) \
            * PROFILE[start:start + length].sum()
        n = max(1, round(share * usual))
        day = FIRST_DAY + pd.Timedelta(days=d)
        shape = WorkloadShape(tasks=n, day=day.strftime("%Y-%m-%d"), seed=20_000 + i,
                              teams=tuple(TEAMS), families=(family,), skill=0.0,
                              retry_bonus=0.0)
        write_spans(_shaped(simulate_spans(runaway, fleet, shape), day, f"r{i}-",
                            hours=(start, length)), spans_dir / f"inject-runaway-{i}.jsonl")
        events.append({"kind": "runaway", "day": d, "start": start, "hours": length,
                       "team": None, "family": family, "size": round(share, 2), "tasks": n})
    report = ingest_paths(sorted(spans_dir.glob("*.jsonl")), root / "telemetry")
    frames = [read_table(root / "telemetry", t) for t in ("tasks", "attempts", "calls")]
    return fleet, events, report, frames


def _split(frames, prefix_test):
    """(base frames, injected frames): injected tasks' ids start with i or r."""
    out_base, out_injected = [], []
    for frame in frames:
        injected = frame["task_id"].str.match(prefix_test).fillna(False).to_numpy(dtype=bool)
        out_base.append(frame[~injected].reset_index(drop=True))
        out_injected.append(frame[injected].reset_index(drop=True))
    return out_base, out_injected


def score(fleet, events, frames, rule: AnomalyRule, since: pd.Timestamp, end: pd.Timestamp):
    base_f, inj_f = _split(frames, r"^[ir]\d+-")
    base = spend_lines(*base_f, fleet)
    injected = spend_lines(*inj_f, fleet)
    lines = pd.concat([base, injected], ignore_index=True)
    start = FIRST_DAY.tz_localize("UTC")
    found = detect_anomalies(lines, rule=rule, start=start, end=end, since=since)
    flagged = {(a.granularity, a.scope, a.key, a.period_start) for a in found}
    correct = truth = hit = 0
    per = {}
    for granularity in GRANULARITIES:
        for scope in SCOPES:
            b = spend_by_period(base, by=scope, granularity=granularity, start=start, end=end)
            j = spend_by_period(injected, by=scope, granularity=granularity, start=start,
                                end=end)
            keys = sorted(set(b.columns) | set(j.columns))
            b, j = b.reindex(columns=keys, fill_value=0.0), j.reindex(columns=keys,
                                                                       fill_value=0.0)
            b, j = b[b.index >= since], j[j.index >= since]
            floor = rule.min_usd(granularity)
            lifted = (j > 2 * b) & ((b + j) >= floor)
            mine = [f for f in flagged if f[0] == granularity and f[1] == scope]
            ok = sum(1 for f in mine if j.at[f[3], f[2]] >= b.at[f[3], f[2]])
            n_truth = int(lifted.to_numpy().sum())
            n_hit = sum(1 for f in mine if lifted.at[f[3], f[2]])
            per[(granularity, scope)] = (len(mine), ok, n_truth, n_hit)
            correct, truth, hit = correct + ok, truth + n_truth, hit + n_hit
    detected = 0
    for e in events:
        day = start + pd.Timedelta(days=e["day"])
        hours = {day + pd.Timedelta(hours=e["start"] + h) for h in range(e["hours"])}
        keys = {("family", e["family"])} | ({("team", e["team"])} if e["team"] else set())
        e["hour_alert"] = any(f[0] == "hour" and (f[1], f[2]) in keys and f[3] in hours
                              for f in flagged)
        e["day_alert"] = any(f[0] == "day" and (f[1], f[2]) in keys and f[3] == day
                             for f in flagged)
        detected += e["hour_alert"] or (e["kind"] == "runaway" and e["day_alert"])
    return found, per, correct, truth, hit, detected


def forecast_error(fleet, frames, weeks: int) -> dict:
    lines = spend_lines(*frames, fleet)
    daily = spend_by_period(lines, by="team", granularity="day")
    daily = daily.iloc[:7 * weeks]
    train, test = daily.iloc[:-7], daily.iloc[-7:]
    out = {}
    errors_model, errors_naive = [], []
    for team in daily.columns:
        f = forecast_series(train[team], horizon=7, level=0.9, key=team)
        naive = train[team].to_numpy()[-7:]
        actual = test[team].to_numpy()
        e_model = np.abs(np.array(f.point) - actual) / actual
        e_naive = np.abs(naive - actual) / actual
        inside = float(np.mean((np.array(f.lower) <= actual) & (actual <= np.array(f.upper))))
        out[team] = (f.method, float(e_model.mean()), float(e_naive.mean()), inside)
        errors_model.extend(e_model)
        errors_naive.extend(e_naive)
    out["all"] = (None, float(np.mean(errors_model)), float(np.mean(errors_naive)), None)
    return out


def azure(data: Path, rule: AnomalyRule) -> list[str]:
    from economics.anomalies import flag_spikes

    folder = data / "azure_llm_2023"
    if not folder.is_dir():
        return [f"azure trace: {folder} not found, skipped"]
    fleet = load_fleet(ROOT / "controlplane" / "starter" / "fleet.yaml")
    lines = []
    for name in ("AzureLLMInferenceTrace_code.csv", "AzureLLMInferenceTrace_conv.csv"):
        path = folder / name
        if not path.is_file():
            lines.append(f"azure trace: {name} absent, skipped")
            continue
        trace = pd.read_csv(path)
        stamps = pd.to_datetime(trace["TIMESTAMP"].str.slice(0, 26), format="mixed", utc=True)
        n = len(trace)
        calls = pd.DataFrame({c: pd.Series([None] * n) for c in TABLES["calls"]})
        for column in ("start_ns", "end_ns", "attempt"):
            calls[column] = 0
        calls["tier"] = "M"
        calls["variant"] = "bf16"
        calls["input_tokens"] = trace["ContextTokens"].to_numpy()
        calls["output_tokens"] = trace["GeneratedTokens"].to_numpy()
        calls["cached_input_tokens"] = 0
        calls["cache"] = "miss"
        calls["cost_usd"] = float("nan")
        calls = calls.astype(TABLES["calls"])
        usd = price_calls(calls, fleet).cost_usd
        minute = pd.Series(usd, index=stamps).resample("1min").sum()
        wide = minute.to_frame("fleet")
        flagged = flag_spikes(wide, season=1, lookback=10, min_history=5, ratio=rule.ratio,
                              min_usd=rule.min_usd_hour)
        ratio = minute / minute.shift(1).rolling(10, min_periods=5).median()
        peak = ratio[np.isfinite(ratio)].max()
        lines.append(
            f"azure {name.split('_')[-1][:-4]}: {n:,} requests over {len(minute)} min, "
            f"${usd.sum():.2f} on tier M (median ${minute.median():.3f}/min, max "
            f"${minute.max():.3f}/min, max finite ratio to the 10-min median {peak:.2f}x): "
            f"{len(flagged)} anomalies raised"
            + ("" if flagged.empty else " at " + ", ".join(
                f"{p:%H:%M} (${s:.3f} vs ${b:.3f})" for p, s, b in zip(
                    flagged["period"], flagged["spend_usd"], flagged["baseline_usd"],
                    strict=True))))
    return lines


def _print_detection(label, rule, result, events, days_judged, seconds) -> dict:
    found, per, correct, truth, hit, detected = result
    print(f"\n{label}: {rule.ratio:g}x the median of the last {rule.lookback} same-hour or "
          f"day values, floors ${rule.min_usd_hour:g}/hour and ${rule.min_usd_day:g}/day "
          f"({seconds:.1f} s)")
    print(f"  {'granularity':11s} {'scope':7s} {'alerts':>6s} {'correct':>7s} "
          f"{'precision':>9s} {'truth':>6s} {'found':>6s} {'recall':>6s}")
    for (g, s), (n, ok, nt, nh) in per.items():
        print(f"  {g:11s} {s:7s} {n:6d} {ok:7d} {ok / n if n else float('nan'):9.2f} "
              f"{nt:6d} {nh:6d} {nh / nt if nt else float('nan'):6.2f}")
    precision = correct / len(found) if found else float("nan")
    recall = hit / truth if truth else float("nan")
    print(f"  all: {len(found)} alerts, precision {precision:.2f}, cell recall {recall:.2f} "
          f"({hit}/{truth}), event recall {detected}/{len(events)} = "
          f"{detected / len(events):.2f}; false alerts {len(found) - correct} in "
          f"{days_judged} days ({(len(found) - correct) / days_judged:.2f}/day)")
    return {"alerts": len(found), "precision": precision, "cell_recall": recall,
            "event_recall": detected / len(events),
            "false_per_day": (len(found) - correct) / days_judged}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weeks", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies every team's tasks per day (1: about 1,600 on a weekday)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--json", dest="json_out", default=None, help="also write figures here")
    args = ap.parse_args(argv)
    if args.weeks < 3:
        raise SystemExit("--weeks must be at least 3 (history, injections, held-out week)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fleet, events, _report, frames = simulate(args.weeks, args.seed, Path(tmp), args.scale)
    t_sim = time.perf_counter() - t0
    lines = spend_lines(*frames, fleet)
    hourly = spend_by_period(lines, by="purpose", granularity="hour").sum(axis=1)
    print(f"simulated and ingested {len(frames[0]):,} tasks ({len(frames[2]):,} calls) over "
          f"{args.weeks} weeks in {t_sim:.0f} s; fleet spend ${lines['usd'].sum():,.0f}, "
          f"median ${hourly.median():.2f}/hour; {len(events)} injected events")
    since = (FIRST_DAY + pd.Timedelta(days=7)).tz_localize("UTC")
    end = (FIRST_DAY + pd.Timedelta(days=7 * args.weeks)).tz_localize("UTC")
    days_judged = 7 * (args.weeks - 1)
    figures = {}
    # The product's rule as shipped, then the same with floors at the fleet's scale (a
    # third of the median hour, and of the median day).
    scaled = AnomalyRule(min_usd_hour=round(hourly.median() / 3, 2),
                         min_usd_day=round(hourly.median() * 24 / 3, 2))
    for label, rule in (("default rule", AnomalyRule()), ("fleet-scale floors", scaled)):
        t1 = time.perf_counter()
        result = score(fleet, events, frames, rule, since, end)
        figures[label] = _print_detection(label, rule, result, events, days_judged,
                                          time.perf_counter() - t1)
    print("\ninjected events (default rule):")
    score(fleet, events, frames, AnomalyRule(), since, end)
    for e in events:
        print(f"  {e['kind']:7s} day {e['day']:2d} {e['start']:02d}:00+{e['hours']:2d}h "
              f"{e['team'] or 'all teams':9s} {e['family']:12s} size {e['size']:>4} "
              f"({e['tasks']} tasks): hour alert {'yes' if e['hour_alert'] else 'no '}, "
              f"day alert {'yes' if e['day_alert'] else 'no'}")
    t2 = time.perf_counter()
    fc = forecast_error(fleet, frames, args.weeks)
    print(f"\nforecast of the held-out week (trained on {7 * (args.weeks - 1)} days; "
          f"{time.perf_counter() - t2:.1f} s): MAPE of the model vs the naive same-weekday "
          "baseline")
    for team, (method, m, n, inside) in fc.items():
        cover = "" if inside is None else f"; 90% interval holds {inside:.0%} of the days"
        print(f"  {team:9s} {method or '':14s} {m:6.1%} vs {n:6.1%}: ratio {m / n:.2f}{cover}")
    print()
    for line in azure(Path(args.data), AnomalyRule()):
        print(line)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.json_out:
        figures["forecast"] = {k: {"method": v[0], "mape": v[1], "naive_mape": v[2],
                                   "ratio": v[1] / v[2]} for k, v in fc.items()}
        Path(args.json_out).write_text(json.dumps(
            figures, indent=2,
            default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
