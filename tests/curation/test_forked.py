"""A function run in a forked child: its value or its exception comes back; a killed child is an error."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from curation import forked
from curation.errors import AttributeFinding, PHIDetectedError


def _block(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def _refuse() -> None:
    raise PHIDetectedError("identifying attributes present", findings=(AttributeFinding("(0010,0010)", "PatientName",
                                                                                         "must-be-empty"),))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_value_comes_back_from_another_process() -> None:
    parent = os.getpid()
    call = forked.submit(lambda n: (os.getpid(), _block(n)), 1 << 20, name="block")
    pid, block = call.result()
    assert pid != parent
    np.testing.assert_array_equal(block, _block(1 << 20))
    call.cancel()  # after result(): nothing to do


def test_the_exception_comes_back_with_its_type_and_findings() -> None:
    call = forked.submit(_refuse, name="gate")
    with pytest.raises(PHIDetectedError, match="identifying attributes present") as caught:
        call.result()
    assert caught.value.findings == (AttributeFinding("(0010,0010)", "PatientName", "must-be-empty"),)


def test_a_child_that_dies_is_an_error_naming_the_signal() -> None:
    call = forked.submit(_die, name="conversion of CT series 1.2.3")
    with pytest.raises(ChildProcessError, match=r"conversion of CT series 1\.2\.3: .*killed by signal SIGKILL"):
        call.result()


def test_cancel_stops_a_running_child() -> None:
    call = forked.submit(time.sleep, 60, name="sleep")
    started = time.perf_counter()
    call.cancel()
    assert time.perf_counter() - started < 10
    with pytest.raises(ChildProcessError, match="cancelled"):
        call.result()


def test_in_a_thread_the_value_and_the_exception_come_back_too() -> None:
    parent = os.getpid()
    pid, block = forked.submit(lambda n: (os.getpid(), _block(n)), 1000, name="block", fork=False).result()
    assert pid == parent
    np.testing.assert_array_equal(block, _block(1000))
    with pytest.raises(PHIDetectedError, match="identifying attributes present"):
        forked.submit(_refuse, name="gate", fork=False).result()


def test_a_spare_core_is_read_from_the_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert forked.spare_core()
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 0.0, 0.0))
    assert not forked.spare_core()
