"""Measure the reference fleet's competence ladder on held-out tasks.

For every tier x variant of a fleet manifest: greedy decoding (temperature 0), stop at the
end marker "\\n", verify with ``workload.tasks.verify``; pass rate per family x
difficulty. Tasks are distinct held-out prompts (``split="heldout"``), the same set for
every variant.

Evaluators:

- ``vllm``: the offline ``vllm.LLM`` engine, the engine that serves the fleet. Each variant
  runs in its own subprocess (``python -m training.ladder worker ...``), because an
  engine spawns processes and must start under ``if __name__ == "__main__"``; the KV cache is
  held to 1 GiB (``VLLM_CPU_KVCACHE_SPACE=1``).
- ``transformers``: ``training.decode.greedy_decode`` (batched greedy ``generate``, the same
  stop rule), in-process (fast; the --quick runs and tests use it).

``auto`` picks vllm when it imports. Writes ``ladder.json`` and ``ladder.md`` beside the
manifest.

    python -m training.ladder [--manifest training/fleet/fleet.yaml]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from training.decode import STOP_TEXT, greedy_decode, load_model
from workload.tasks import (
    DIFFICULTIES,
    FAMILIES,
    MAX_ANSWER_CHARS,
    Task,
    generate_tasks,
    verify,
)

__all__ = ["heldout_suite", "ladder_markdown", "measure_ladder", "summarize"]

MAX_NEW_TOKENS = MAX_ANSWER_CHARS + 2  # the answer, the end marker, one spare


def heldout_suite(per_cell: int, *, seed: int) -> list[Task]:
    """``per_cell`` distinct held-out prompts for every family x difficulty, in cell order."""
    suite: list[Task] = []
    for family in FAMILIES:
        for difficulty in DIFFICULTIES:
            seen: dict[str, Task] = {}
            drawn = 0
            while len(seen) < per_cell:
                drawn += per_cell * 4
                batch = generate_tasks(drawn, seed=seed, families=[family],
                                       difficulties=[difficulty], split="heldout")
                for task in batch:
                    if len(seen) < per_cell:
                        seen.setdefault(task.task_id, task)
                if drawn > per_cell * 400:  # pragma: no cover - cells have thousands of prompts
                    raise RuntimeError(f"{family}/{difficulty}: too few distinct prompts")
            suite.extend(seen.values())
    return suite


# ------------------------------------------------------------------------ evaluators
def _generate_transformers(model_dir: Path, prompts: list[str]) -> list[str]:
    model, tokenizer = load_model(model_dir)
    return [d.text for d in greedy_decode(model, tokenizer, prompts,
                                          max_new_tokens=MAX_NEW_TOKENS, batch_size=256)]


def _generate_vllm_subprocess(model_dir: Path, prompts: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="ladder-") as tmp:
        src, dst = Path(tmp) / "prompts.json", Path(tmp) / "outputs.json"
        src.write_text(json.dumps(prompts), encoding="utf-8")
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        proc = subprocess.run(
            [sys.executable, "-m", "training.ladder", "worker", "--model", str(model_dir),
             "--prompts", str(src), "--outputs", str(dst)],
            env=env, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0 or not dst.exists():
            raise RuntimeError(f"vLLM worker for {model_dir} failed (rc {proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        return json.loads(dst.read_text(encoding="utf-8"))


def _vllm_worker(model_dir: str, prompts_file: str, outputs_file: str) -> None:
    from vllm import LLM, SamplingParams

    prompts = json.loads(Path(prompts_file).read_text(encoding="utf-8"))
    llm = LLM(model=model_dir, dtype="bfloat16", max_model_len=128, seed=0, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, stop=[STOP_TEXT])
    results = llm.generate(prompts, params, use_tqdm=False)
    Path(outputs_file).write_text(json.dumps([r.outputs[0].text for r in results]),
                                  encoding="utf-8")


def _pick_evaluator(evaluator: str) -> str:
    if evaluator != "auto":
        return evaluator
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return "transformers"
    return "vllm"


# -------------------------------------------------------------------------- reporting
def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """tier -> variant -> {"d1", "d2", "d3", "all"} pass rates from per-cell rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        cell = out.setdefault(row["tier"], {}).setdefault(row["variant"], {})
        for key in (f"d{row['difficulty']}", "all"):
            n, p = cell.get(f"_{key}_n", 0), cell.get(f"_{key}_p", 0)
            cell[f"_{key}_n"], cell[f"_{key}_p"] = n + row["n"], p + row["passed"]
    for variants in out.values():
        for variant, cell in variants.items():
            keys = sorted({k[1:].rsplit("_", 1)[0] for k in cell if k.startswith("_")})
            variants[variant] = {k: round(cell[f"_{k}_p"] / cell[f"_{k}_n"], 3) for k in keys}
    return out


def ladder_markdown(ladder: dict[str, Any]) -> str:
    rows = ladder["results"]
    summary = ladder["summary"]
    lines = [
        (f"Held-out pass rate ({ladder['per_cell']} distinct prompts per family x difficulty, "
         f"evaluator `{ladder['evaluator']}`, greedy, stop at newline)."),
        "",
        "| tier | variant | d1 | d2 | d3 | all |",
        "|---|---|---|---|---|---|",
    ]
    for tier, variants in summary.items():
        for variant, cell in variants.items():
            lines.append(f"| {tier} | {variant} | " + " | ".join(
                f"{cell.get(k, float('nan')):.2f}" for k in ("d1", "d2", "d3", "all")) + " |")
    base = ladder["base_variant"]
    lines += ["", f"Per family, base variant `{base}` (d1 / d2 / d3):", "",
              "| family | " + " | ".join(summary) + " |",
              "|---|" + "---|" * len(summary)]
    by = {(r["tier"], r["variant"], r["family"], r["difficulty"]): r["pass_rate"] for r in rows}
    for family in FAMILIES:
        cells = []
        for tier in summary:
            cells.append(" / ".join(f"{by.get((tier, base, family, d), float('nan')):.2f}"
                                    for d in DIFFICULTIES))
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measure_ladder(manifest_path: str | Path, *, per_cell: int = 40, seed: int = 1,
                   evaluator: str = "auto", write: bool = True) -> dict[str, Any]:
    from contracts.manifest import load_fleet, resolve_path

    manifest_path = Path(manifest_path)
    fleet = load_fleet(manifest_path)
    chosen = _pick_evaluator(evaluator)
    suite = heldout_suite(per_cell, seed=seed)
    prompts = [t.prompt for t in suite]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    base_variant = fleet.tiers[0].default_variant or fleet.tiers[0].variants[0].name
    for tier in fleet.tiers:
        for variant in tier.variants:
            model_dir = resolve_path(variant.weights, manifest_path.parent)
            t0 = time.perf_counter()
            if chosen == "vllm":
                outputs = _generate_vllm_subprocess(model_dir, prompts)
            else:
                outputs = _generate_transformers(model_dir, prompts)
            cells: dict[tuple[str, int], list[int]] = {}
            for task, output in zip(suite, outputs, strict=True):
                tally = cells.setdefault((task.family, task.difficulty), [0, 0])
                tally[0] += 1
                tally[1] += int(verify(task, output).passed)
            for (family, difficulty), (n, passed) in cells.items():
                rows.append({"tier": tier.name, "variant": variant.name, "family": family,
                             "difficulty": difficulty, "n": n, "passed": passed,
                             "pass_rate": round(passed / n, 3)})
            total = sum(p for (_, p) in cells.values()) / len(suite)
            print(f"[ladder] {tier.name}/{variant.name}: {total:.3f} pass "
                  f"({time.perf_counter() - t0:.0f}s, {chosen})", flush=True)
    ladder = {
        "manifest": manifest_path.name,
        "manifest_hash": fleet.content_hash,
        "evaluator": chosen,
        "decoding": {"temperature": 0, "stop": [STOP_TEXT], "max_tokens": MAX_NEW_TOKENS},
        "seed": seed,
        "per_cell": per_cell,
        "base_variant": base_variant,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summarize(rows),
        "results": rows,
    }
    if write:
        (manifest_path.parent / "ladder.json").write_text(json.dumps(ladder, indent=2) + "\n",
                                                          encoding="utf-8")
        (manifest_path.parent / "ladder.md").write_text(ladder_markdown(ladder),
                                                        encoding="utf-8")
    return ladder


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.ladder")
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="internal: one vLLM engine over a prompt file")
    worker.add_argument("--model", required=True)
    worker.add_argument("--prompts", required=True)
    worker.add_argument("--outputs", required=True)
    parser.add_argument("--manifest", default=str(Path(__file__).parent / "fleet" / "fleet.yaml"))
    parser.add_argument("--per-cell", type=int, default=40)
    parser.add_argument("--seed", type=int, default=None,
                        help="held-out draw seed (default: the training seed + 1000)")
    parser.add_argument("--evaluator", choices=("auto", "vllm", "transformers"), default="auto")
    args = parser.parse_args(argv)
    if args.command == "worker":
        _vllm_worker(args.model, args.prompts, args.outputs)
        return 0
    from training.model import DEFAULT_SEED

    ladder = measure_ladder(args.manifest, per_cell=args.per_cell,
                            seed=args.seed if args.seed is not None else DEFAULT_SEED + 1000,
                            evaluator=args.evaluator)
    print(ladder_markdown(ladder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
