"""The ``list_ops`` family: sort / dedupe / reverse / max of a short list of non-negative ints.

``sort: [3,1,2]`` -> ``[1,2,3]``. Verifier: ``exact``.
"""

from __future__ import annotations

from random import Random

from workload.families._common import below, between, list_text, pick
from workload.task_format import VERIFIER_EXACT, Task, make_task

__all__ = ["generate"]

_LIST_OPS = ("sort", "dedupe", "reverse", "max")
# level -> (list lengths, largest value); lengths are disjoint so a prompt names its level
_LIST_LEVELS: dict[int, tuple[tuple[int, int], int]] = {1: ((2, 3), 9), 2: ((4, 5), 49),
                                                        3: ((6, 7), 99)}


def generate(rng: Random, difficulty: int) -> Task:
    (lo, hi), top = _LIST_LEVELS[difficulty]
    op = pick(rng, _LIST_OPS)
    values = [between(rng, 0, top) for _ in range(between(rng, lo, hi))]
    if op == "dedupe":
        # Random lists rarely repeat a value at the higher ranges; force at least one
        # duplicate so "dedupe" is never the identity.
        i, j = below(rng, len(values)), below(rng, len(values) - 1)
        j += j >= i  # two distinct positions
        values[max(i, j)] = values[min(i, j)]
        answer = list_text(dict.fromkeys(values))  # keeps first occurrences, in order
    elif op == "sort":
        answer = list_text(sorted(values))
    elif op == "reverse":
        answer = list_text(reversed(values))
    else:
        answer = str(max(values))
    n = len(values)
    features = {
        "size": n,
        "list_length": n,
        "distinct_values": len(set(values)),
        "max_value_digits": len(str(max(values))),
        "inversions": sum(values[a] > values[b] for a in range(n) for b in range(a + 1, n)),
        "op_index": _LIST_OPS.index(op),
    }
    return make_task("list_ops", difficulty, f"{op}: {list_text(values)}", answer, features,
                     VERIFIER_EXACT)
