"""How many threads one case's stage may use beside its own.

A stage overlaps its work on a few threads: ingest converts the CT and the PET
while it reads the other series and runs the gate, a NIfTI file is compressed and
inflated in members on several threads (ISA-L releases the GIL), and prepare
reads, remaps and writes two category maps at once.  Alone on a 2-core machine
this uses the second core.  With one case per core already running (a build's
``workers = 2`` on 2 cores), the same threads only take turns with the other
worker: on this project's 2-core VM the 17 stage chains of the large scaling
build took 9.2-9.6 s on two processes with two threads each and 8.7-8.9 s with
one (the processes' CPU 17.4-18.3 s against 16.5-16.9 s).

So a run's workers each get the machine's cores shared out
(:func:`threads_per_worker`), which the task runners put in the workers'
environment as :data:`ENVIRONMENT`; a stage reads it when it starts its threads
(:func:`stage_threads`).  The bytes written never depend on it.
"""

from __future__ import annotations

import os

from curation.config import ConfigError

__all__ = ["DEFAULT_THREADS", "ENVIRONMENT", "stage_threads", "threads_per_worker", "usable_cores", "worker_environment"]

#: The environment variable a process's stages read; a steward may set it too.
ENVIRONMENT = "PETCT_RELEASE_STAGE_THREADS"
#: Threads a stage uses when nothing says otherwise, and the most a runner hands out:
#: the stages overlap two things at a time (a CT and a PET; two category maps).
DEFAULT_THREADS = 2


def stage_threads() -> int:
    """Threads a stage may use (:data:`ENVIRONMENT`, else :data:`DEFAULT_THREADS`).

    Raises
    ------
    curation.config.ConfigError
        When the variable is set to anything but a whole number of at least 1
        (the flows and the CLI check it before a run starts).
    """
    text = os.environ.get(ENVIRONMENT, "").strip()
    if not text:
        return DEFAULT_THREADS
    try:
        threads = int(text)
    except ValueError:
        raise ConfigError(f"{ENVIRONMENT}={text!r}: not a whole number of threads") from None
    if threads < 1:
        raise ConfigError(f"{ENVIRONMENT}={text!r}: a stage needs at least 1 thread")
    return threads


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """The threads each of ``workers`` worker processes' stages get: ``cores`` shared out, 1 to :data:`DEFAULT_THREADS`.

    Parameters
    ----------
    workers
        Worker processes running cases at once.
    cores
        The machine's usable cores (default :func:`usable_cores`).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    cores = usable_cores() if cores is None else cores
    return max(1, min(DEFAULT_THREADS, cores // workers))


def worker_environment(workers: int) -> dict[str, str]:
    """The environment giving each of ``workers`` local worker processes its share of the cores.

    See :func:`threads_per_worker`: two workers on two cores run their stages on
    one thread each, not four threads taking turns.  Empty when
    :data:`ENVIRONMENT` is set already (a steward's own choice, which the
    workers inherit).
    """
    if os.environ.get(ENVIRONMENT, "").strip():
        return {}
    return {ENVIRONMENT: str(threads_per_worker(workers))}
