"""reproduce's task pool: results in the order given, every task run once, failures collected with their logs while
the other tasks finish, torch threads per worker = CPUs / jobs, console output in each task's log."""

from __future__ import annotations

import pytest

from eval.task_pool import Task, TaskFailures, cpu_count, run_tasks


def square_and_report(x: int) -> tuple[int, int]:
    import torch

    print(f"squaring {x}")
    return x * x, torch.get_num_threads()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return x


@pytest.mark.parametrize("jobs", [1, 2])
def test_results_in_order_and_logs(tmp_path, jobs):
    tasks = [Task(f"t{i}", square_and_report, (i,), log=tmp_path / f"t{i}.log") for i in range(5)]
    got = run_tasks(tasks, jobs, "squares")
    assert list(got) == [f"t{i}" for i in range(5)]
    assert [v[0] for v in got.values()] == [0, 1, 4, 9, 16]
    if jobs > 1:
        assert all(v[1] == max(1, cpu_count() // jobs) for v in got.values())
        assert (tmp_path / "t3.log").read_text().strip() == "squaring 3"  # output went to the task's log


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failure_is_reported_after_the_others_finish(tmp_path, jobs):
    tasks = [Task(f"t{i}", fail_on_three, (i,), log=tmp_path / f"t{i}.log") for i in range(5)]
    with pytest.raises(TaskFailures) as err:
        run_tasks(tasks, jobs, "filter")
    assert [t.name for t, _ in err.value.failures] == ["t3"]
    assert "three is refused" in str(err.value) and "t3.log" in str(err.value)
    if jobs > 1:
        assert "three is refused" in (tmp_path / "t3.log").read_text()  # the traceback is in the task's log


def test_task_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        run_tasks([Task("a", fail_on_three, (1,)), Task("a", fail_on_three, (2,))], 1, "dup")
