from __future__ import annotations

import pytest

from curation.threads import (
    DEFAULT_THREADS,
    ENVIRONMENT,
    stage_threads,
    threads_per_worker,
    usable_cores,
    worker_environment,
)


def test_a_stage_uses_two_threads_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert stage_threads() == DEFAULT_THREADS == 2
    monkeypatch.setenv(ENVIRONMENT, " 1 ")
    assert stage_threads() == 1
    monkeypatch.setenv(ENVIRONMENT, "6")
    assert stage_threads() == 6
    monkeypatch.setenv(ENVIRONMENT, "")
    assert stage_threads() == 2


@pytest.mark.parametrize(("value", "reason"), [("0", "at least 1 thread"), ("-2", "at least 1 thread"),
                                               ("two", "not a whole number"), ("1.5", "not a whole number")])
def test_a_bad_thread_count_is_named_not_guessed(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv(ENVIRONMENT, value)
    with pytest.raises(ValueError, match=f"{ENVIRONMENT}='{value}'.*{reason}"):
        stage_threads()


@pytest.mark.parametrize(("workers", "cores", "threads"), [
    (1, 1, 1), (1, 2, 2), (1, 64, 2),  # alone: the stages' two overlapping jobs, if there are cores for them
    (2, 2, 1), (2, 3, 1), (2, 4, 2), (3, 2, 1), (8, 2, 1),  # the cores shared out, never below one
])
def test_workers_share_the_cores_out(workers: int, cores: int, threads: int) -> None:
    assert threads_per_worker(workers, cores) == threads


def test_no_workers_is_an_error_and_the_cores_are_this_process_s_own() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        threads_per_worker(0, 2)
    assert usable_cores() >= 1
    assert threads_per_worker(1) == min(DEFAULT_THREADS, usable_cores())


def test_the_workers_environment_shares_the_cores_unless_the_steward_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert worker_environment(2) == {ENVIRONMENT: str(threads_per_worker(2))}
    assert worker_environment(1) == {ENVIRONMENT: str(min(2, usable_cores()))}
    monkeypatch.setenv(ENVIRONMENT, "3")
    assert worker_environment(2) == {}  # inherited as set
