"""The demo's plan (pure): how many nights, which days."""

from datetime import UTC, datetime

import pytest

from controlplane.demo import demo_plan

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def test_the_full_demo_shows_three_nights_over_four_days_ending_yesterday():
    plan = demo_plan(quick=False, tasks=None, today=NOW)
    assert plan.nights == 3
    assert plan.days == ("2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02")
    assert (plan.day1, plan.day2) == ("2026-11-29", "2026-11-30")


def test_quick_is_one_night_and_nights_can_be_chosen():
    assert demo_plan(quick=True, tasks=None, today=NOW).nights == 1
    plan = demo_plan(quick=True, tasks=100, today=NOW, nights=5)
    assert plan.nights == 5 and len(plan.days) == 6 and plan.tasks_per_day == 100
    with pytest.raises(ValueError, match="at least 1"):
        demo_plan(quick=False, tasks=None, nights=0)
