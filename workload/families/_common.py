"""What the family generators share: seeded draws and the int-list literal.

Random's randint/choice cost about a microsecond each (argument checks, rejection
sampling), about a fifth of generation time; these draw from one ``rng.random()`` each
and are just as deterministic for a given seed. Every generator draws in a fixed order
from the one ``Random`` it is given, so a seed fixes the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from random import Random
from typing import Any

__all__ = ["below", "between", "list_text", "pick"]


def below(rng: Random, n: int) -> int:
    """Uniform in 0..n-1."""
    return int(rng.random() * n)


def between(rng: Random, lo: int, hi: int) -> int:
    """Uniform in lo..hi, both included."""
    return lo + int(rng.random() * (hi - lo + 1))


def pick(rng: Random, items: Any) -> Any:
    """A uniform element of a non-empty sequence (or string)."""
    return items[int(rng.random() * len(items))]


def list_text(values: Iterable[int]) -> str:
    """An int list as the tasks write it: ``[1,2,3]``, no spaces."""
    return "[" + ",".join(str(v) for v in values) + "]"
