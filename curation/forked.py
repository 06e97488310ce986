"""Run one function in a forked child process, so Python work in the parent and the child uses two cores.

Ingest reads headers and runs the de-identification gate in Python, holding the
GIL; the conversion's pixel work (reading, rescaling, ISA-L compression)
releases the GIL only in short pieces.  A thread that waits for the GIL while
another thread runs Python gets it only after the switch interval (5 ms), so a
conversion thread beside the gate stalls at every piece: measured on the bench
CT, encoding took 4-6 s beside a busy Python thread against 0.7-1.9 s alone.  A
forked child has an interpreter of its own.

:func:`submit` forks; the child runs the function on its copy of the parent's
memory (arguments are neither copied nor pickled) and writes its pickled return
value or exception, length first, into an anonymous in-memory file the parent
made (``memfd_create``; a pipe would hand 64 KiB at a time between the two
processes, each hand-over a wait for a core on a busy machine);
:meth:`ForkedCall.result` waits for the child to end, then returns or raises it.  The child runs nothing else: logging and the garbage collector are
off in it (the parent's log handlers may belong to threads the child does not
have), and it ends with ``os._exit`` (no atexit handlers, no flushing of the
parent's buffers).

A fork is not free: the parent's pages are shared copy-on-write, and every page
either process writes afterwards (Python writes reference counts on every
object it touches) is copied: on the bench study, forked conversions took 0.3-0.5 s
more CPU than the same work in one process.  That buys time only when a core is idle: on a machine whose cores are
busy (other jobs, or one worker per core as a release build runs) the copies
are pure cost, and the call had better run in a thread, beside the GIL.
:func:`spare_core` tells the two apart from the load average; :func:`submit`
forks only when asked to (and where ``os.fork`` exists), else it runs the
function in a thread.
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import pickle
import signal
import struct
import tempfile
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_LENGTH = struct.Struct("<Q")


def _outcome_file() -> int:
    """A file descriptor of an anonymous file in memory (a temporary file where there is no memfd)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("petct-forked")
    with tempfile.TemporaryFile() as f:  # pragma: no cover - Linux has memfd_create
        return os.dup(f.fileno())


def _read_outcome(fd: int) -> tuple[str, Any] | None:
    """The outcome a child wrote into ``fd``, or None when it is missing or incomplete."""
    size = os.fstat(fd).st_size
    if size < _LENGTH.size:
        return None
    # mapped with its pages in place (MAP_POPULATE: one call instead of a fault per page)
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    with mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ) as data:
        (length,) = _LENGTH.unpack(data[: _LENGTH.size])
        if length != size - _LENGTH.size:
            return None
        with memoryview(data) as view:
            outcome: tuple[str, Any] = pickle.loads(view[_LENGTH.size :])
        return outcome


def _run_child(out_fd: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The child's whole life: run ``fn``, send the outcome, exit without unwinding the parent's stack."""
    try:
        gc.disable()
        logging.disable(logging.CRITICAL)
        try:
            outcome: tuple[str, Any] = ("return", fn(*args, **kwargs))
        except BaseException as exc:
            outcome = ("raise", exc)
        with open(out_fd, "wb", closefd=False) as out:
            out.write(_LENGTH.pack(0))  # the length, written last: an incomplete file is told by it
            try:
                # pickled straight into the file: a large bytes value is written without a copy
                pickle.dump(outcome, out, protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:
                out.seek(_LENGTH.size)
                out.truncate()
                pickle.dump(("raise", ChildProcessError(f"{outcome[0]}: {outcome[1]!r} cannot be pickled")), out)
            out.flush()
            os.pwrite(out_fd, _LENGTH.pack(out.tell() - _LENGTH.size), 0)
    finally:
        os._exit(0)


class ForkedCall(Generic[T]):
    """A function running in a forked child (or, without ``os.fork``, in a thread).

    Parameters
    ----------
    fn, args, kwargs
        What to run.
    name
        How messages name the call.
    """

    def __init__(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *, name: str, fork: bool = True
    ) -> None:
        self.name = name
        self._pid: int | None = None
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._outcome: tuple[str, Any] | None = None
        if fork and hasattr(os, "fork"):
            fd = _outcome_file()
            try:
                pid = os.fork()
            except BaseException:
                os.close(fd)
                raise
            if pid == 0:  # pragma: no cover - the child (coverage does not follow os._exit)
                _run_child(fd, fn, args, kwargs)
            self._pid, self._fd = pid, fd
        else:
            self._thread = threading.Thread(target=self._run_in_thread, args=(fn, args, kwargs), name=name)
            self._thread.start()

    def _run_in_thread(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._outcome = ("return", fn(*args, **kwargs))
        except BaseException as exc:
            self._outcome = ("raise", exc)

    def result(self) -> T:
        """Wait for the call and return its value, or raise its exception.

        Returns
        -------
        Any
            What the function returned.

        Raises
        ------
        BaseException
            What the function raised (unpickled from the child).
        ChildProcessError
            The child ended without sending an outcome (a signal, such as
            the out-of-memory killer's), or the call was cancelled.
        """
        if self._outcome is None:
            if self._thread is not None:
                self._thread.join()
            else:
                self._outcome = self._collect()
        kind, value = self._outcome  # type: ignore[misc]
        if kind == "raise":
            raise value
        return value  # type: ignore[no-any-return]

    def _collect(self) -> tuple[str, Any]:
        pid, fd = self._pid, self._fd
        if pid is None or fd is None:
            return "raise", ChildProcessError(f"{self.name}: cancelled")
        try:
            _, status = os.waitpid(pid, 0)
            self._pid = None
            outcome = _read_outcome(fd) if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else None
        finally:
            os.close(fd)
            self._fd = None
        if outcome is None:
            how = (
                f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                else f"exited with status {os.waitstatus_to_exitcode(status)}"
            )
            return "raise", ChildProcessError(f"{self.name}: the child process {how} before writing its result")
        return outcome

    def cancel(self) -> None:
        """Stop the call if it still runs (a forked child is killed); nothing happens after :meth:`result`."""
        if self._pid is not None:
            os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._thread.join()  # a thread cannot be stopped; its outcome is dropped


def spare_core() -> bool:
    """Whether a core is idle enough for a forked child to pay: the 1-minute load average below cores - 0.5.

    Returns
    -------
    bool
        False where the load average cannot be read.
    """
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return os.getloadavg()[0] < cores - 0.5
    except OSError:
        return False


def submit(fn: Callable[..., T], /, *args: Any, name: str, fork: bool = True, **kwargs: Any) -> ForkedCall[T]:
    """Start ``fn(*args, **kwargs)`` in a forked child process (or a thread).

    Parameters
    ----------
    fn
        The function; the child runs it on a copy of this process's memory.
    *args, **kwargs
        Its arguments (not pickled); its return value or exception must pickle.
    name
        How messages name the call.
    fork
        False: run it in a thread of this process instead (see :func:`spare_core`).

    Returns
    -------
    ForkedCall
        Collect it with :meth:`ForkedCall.result`, or stop it with
        :meth:`ForkedCall.cancel`; one of the two must be called (the child is
        reaped there).
    """
    return ForkedCall(fn, args, kwargs, name=name, fork=fork)
