"""The per-family modules: each registered, each the generator the streams call."""

from __future__ import annotations

import importlib
from random import Random

import pytest

from workload import DIFFICULTIES, FAMILIES, Task, iter_tasks


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_its_module_with_a_generator(family):
    module = importlib.import_module(f"workload.families.{family}")
    assert callable(module.generate)
    for difficulty in DIFFICULTIES:
        task = module.generate(Random(3), difficulty)
        assert isinstance(task, Task)
        assert (task.family, task.difficulty) == (family, difficulty)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_the_stream_of_one_cell_is_that_familys_generator(family, difficulty):
    # A stream draws a cell with one rng.random(), then calls the family's generator on the
    # same rng: with a single cell that is the generator's own sequence, call after call.
    module = importlib.import_module(f"workload.families.{family}")
    rng = Random(f"cell:{family}:{difficulty}")
    expected = []
    for _ in range(50):
        rng.random()
        expected.append(module.generate(rng, difficulty))
    stream = iter_tasks(seed=f"cell:{family}:{difficulty}", families=[family],
                        difficulties=[difficulty])
    assert [next(stream) for _ in range(50)] == expected
