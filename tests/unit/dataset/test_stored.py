"""Tests of how far :mod:`civitai_spider.dataset.stored` reads ahead of its caller."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from civitai_spider.dataset.stored import _ahead


@pytest.mark.parametrize(
    ("costs", "window", "budget", "most_ahead"),
    [
        ([1] * 40, 4, 0, 4),  # no cost: the window alone bounds it
        ([10] * 40, 8, 35, 3),  # three fit in the budget, a fourth waits
        ([50, 1, 1, 50, 1, 1, 1, 1], 8, 40, 4),  # one over the budget goes alone, and does go
    ],
)
def test_tasks_ahead_stay_within_the_window_and_the_budget(
    costs: list[int], window: int, budget: int, most_ahead: int
) -> None:
    submitted: list[int] = []

    class Pool(ThreadPoolExecutor):
        def submit(self, work, task):  # type: ignore[override]
            submitted.append(task)
            return super().submit(work, task)

    ahead = []
    with Pool(2) as pool:
        cost = (lambda task: costs[task]) if budget else None
        results = _ahead(pool, lambda task: task, range(len(costs)), window=window, cost=cost, budget=budget)
        for consumed, result in enumerate(results):
            assert result == consumed  # in order
            held = submitted[consumed:]  # read, not yet used (this one included)
            ahead.append(len(held))
            if budget:
                assert len(held) == 1 or sum(costs[n] for n in held) <= budget
    assert max(ahead) == most_ahead
