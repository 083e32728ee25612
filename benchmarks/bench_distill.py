"""Distillation on the reference fleet: the small tier's pass rate on one family before and
after its adapter, the share of that family's spend moved off the top tier, and the change
in the family's cost per Green PR.

    .venv/bin/python benchmarks/bench_distill.py --fleet training/fleet/fleet.yaml \
        --family bracket_fix --out /tmp/autopilot-distill --teacher 3000

Steps (docs/distillation.md): the top tier's verified answers on ``--teacher`` train-split
tasks of the family (gate-suite prompts refused by hash) -> a LoRA for the cheapest tier,
trained as a Ray task (``--steps``) with its held-out before/after -> pinned in a copy of
the manifest under ``--out`` (the source fleet is never written) -> ``--tasks`` held-out
tasks of the family (never trained on, none a gate case) played through the starter
cascade and through the candidate policy (family starts on the small tier + adapter, then
escalates as before), every answer decoded by the real tier and verified
(``training.distill_measure``). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet", default="training/fleet/fleet.yaml")
    ap.add_argument("--family", default="bracket_fix")
    ap.add_argument("--out", default="/tmp/autopilot-distill")
    ap.add_argument("--teacher", type=int, default=3000, help="train-split tasks for the teacher")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=300, help="held-out tasks measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--executor", choices=("ray", "inline"), default="ray")
    args = ap.parse_args(argv)

    from contracts.manifest import load_fleet
    from controlplane.loop.distill import candidate_policy
    from gates.suite import load_reference_suite
    from policies.policy import load_policy
    from serving.collector import gate_prompt_hashes
    from training.distill import (
        DistillJob,
        adapter_name_for,
        distill_family,
        examples_digest,
        heldout_tasks,
        plan_examples,
        teacher_examples,
    )
    from training.distill_measure import measure_family_cascade

    started = time.perf_counter()
    fleet = load_fleet(args.fleet)
    small = fleet.tiers[0].name
    blocked = gate_prompt_hashes([load_reference_suite()])
    t0 = time.perf_counter()
    teacher = teacher_examples(args.fleet, args.family, args.teacher, seed=args.seed,
                               blocked=blocked)
    examples = plan_examples(teacher, family=args.family, blocked=blocked)
    teacher_s = time.perf_counter() - t0
    active = load_policy(Path("controlplane/starter/policy.yaml"))
    variant = fleet.tier(small).variant(active.spec.quantization.get(small)).name
    adapter = adapter_name_for(args.family, small, examples_digest(examples), args.seed)
    job = DistillJob(family=args.family, tier=small, variant=variant, adapter=adapter,
                     steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     eval_tasks=args.tasks)
    result = distill_family(args.fleet, Path(args.out), job, examples, blocked=blocked,
                            executor=args.executor, log=lambda m: print(m, file=sys.stderr))
    new_fleet = load_fleet(result.manifest)
    candidate = candidate_policy(active, new_fleet, family=args.family, tier=small,
                                 adapter=adapter)
    exclude = blocked | {e.prompt_sha256 for e in examples}
    tasks = heldout_tasks(args.family, args.tasks, seed=job.eval_seed + 100, exclude=exclude)
    t0 = time.perf_counter()
    measured = measure_family_cascade(result.manifest, args.family,
                                      {"active": active, "candidate": candidate}, tasks)
    a, c = measured["policies"]["active"], measured["policies"]["candidate"]
    report = {
        "fleet": args.fleet, "family": args.family, "small_tier": f"{small}/{variant}",
        "adapter": adapter, "teacher_tasks": args.teacher,
        "teacher_pass_rate": len(teacher) / args.teacher if args.teacher else None,
        "examples": len(examples), "steps": args.steps, "lr": args.lr, "executor": args.executor,
        "job_heldout": {"tasks": result.heldout, "before": result.pass_rate_before,
                        "after": result.pass_rate_after, "by_difficulty": result.by_difficulty},
        "train_seconds": result.train_seconds, "teacher_seconds": round(teacher_s, 1),
        "measured_tasks": measured["tasks"], "pass_rates": measured["pass_rates"],
        "active": a, "candidate": c,
        "top_tier_share_moved": a["top_tier_share"] - c["top_tier_share"],
        "cost_per_green_pr_change": (c["cost_per_green_pr"] / a["cost_per_green_pr"] - 1
                                     if a["cost_per_green_pr"] and c["cost_per_green_pr"]
                                     else None),
        "measure_seconds": round(time.perf_counter() - t0, 1),
        "adapter_files": result.adapter_files, "manifest": result.manifest,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
