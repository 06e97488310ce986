"""Task runners from ``[execution]`` and the one Prefect API every worker talks to.

Which API a command's flow runs report to, in order (:func:`prefect_api`):

1. ``PREFECT_API_URL``, when set (a team server, a test harness);
2. the server of ``petct-release serve`` for the same state folder, when it runs
   and answers: ``serve`` records its URL in ``state_dir/prefect/served.json``,
   so runs started by hand show in the same UI and pay no server start-up;
3. else a temporary server (:mod:`flows.localserver`), started once by the
   flow's own process (the CLI starts it before it imports Prefect, so the two
   start-ups overlap) with its database in ``state_dir/prefect`` (the database
   ``serve`` uses too), so a second command starts on a warm database and its
   runs are there for the UI.

With no ``PREFECT_API_URL``, Prefect would start a temporary server lazily in
whatever process first calls the API; process-pool and Dask workers are other
processes, and each would start its own server on the same SQLite file (the flow
would not see their task runs).  The URL chosen above is therefore put into the
settings that Prefect serialises into every task it ships to a worker (and into
the Dask workers' environment).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from prefect.context import SettingsContext, refresh_global_settings_context, serialize_context
from prefect.settings import (
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_HOME,
    get_current_settings,
    temporary_settings,
)
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from pydantic import PrivateAttr

from curation.config import ExecutionSettings, Runner
from curation.threads import worker_environment
from flows.localserver import discard_early, served_api_url, served_record, temporary_server

__all__ = ["configured_api_url", "make_task_runner", "prefect_api", "served_api_url", "served_record"]

logger = logging.getLogger(__name__)

#: Settings copied into the environment of Dask workers this module starts, so
#: they log as quietly as the flow's process does.
_WORKER_ENV_KEYS = (
    "DO_NOT_TRACK",
    "PREFECT_HOME",
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


#: A certificate nothing can chain to (self-signed, expired the day it was made, its key
#: destroyed): the CA file of a plain-HTTP loopback API, where TLS is never used (see
#: :func:`_plain_loopback`).
TRUSTS_NOTHING = Path(__file__).with_name("data") / "trusts-nothing.pem"


def _plain_loopback(url: str) -> dict[Any, Any]:
    """Settings for an API reached by plain HTTP on this machine: no CA bundle loaded per client.

    Prefect builds a certificate-verifying TLS context for every API client it
    creates, loading the whole CA bundle (certifi's, 30 ms) each time, whether or
    not the URL is HTTPS; a task run on a process-pool worker creates two clients,
    so 60-70 ms of each task went to parsing certificates for a connection without
    TLS.  For ``http://`` on a loopback host the CA file is therefore a single
    certificate that trusts nothing (:data:`TRUSTS_NOTHING`, 0.6 ms); any other
    URL keeps Prefect's own verification.
    """
    parts = urlsplit(url)
    if parts.scheme == "http" and _is_loopback(parts.hostname or "") and TRUSTS_NOTHING.is_file():
        return {PREFECT_API_SSL_CERT_FILE: str(TRUSTS_NOTHING)}
    return {}


def configured_api_url() -> str:
    """The Prefect API URL in force (settings or environment), ``""`` when none."""
    return str(PREFECT_API_URL.value() or "")


@contextlib.contextmanager
def prefect_api(state_dir: Path | None = None) -> Iterator[str]:
    """Make sure one Prefect API serves the flow's process and all its workers (see the module docstring).

    Flow-run heartbeats are switched off inside the block: they exist to detect
    crashed runs, which our own resumption handles, and joining their thread
    costs about a second at the end of every flow run.

    Parameters
    ----------
    state_dir
        The release's state folder: where ``serve`` records its server and where
        a temporary server keeps its database.  None: no serve lookup, and the
        temporary server uses ``PREFECT_HOME`` as Prefect would.

    Yields
    ------
    str
        The API URL every run of the block reports to.
    """
    quiet: dict[Any, Any] = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    url = configured_api_url() or (served_api_url(state_dir) if state_dir is not None else "")
    if url:
        discard_early()  # a server started before Prefect's settings were read (a profile's URL)
        logger.debug("using the Prefect API at %s", url)
        with _reporting_to(url, quiet):
            yield url
        return
    home = {PREFECT_HOME: Path(state_dir) / "prefect"} if state_dir is not None else {}
    # one per process and home, stopped at exit; launched early by the CLI, before its imports
    server = temporary_server(Path(state_dir) / "prefect" if state_dir is not None else Path(PREFECT_HOME.value()))
    logger.debug("using the temporary Prefect API at %s", server.api_url)
    with _reporting_to(server.api_url, {**quiet, **home}):
        yield server.api_url


@contextlib.contextmanager
def _reporting_to(url: str, settings: dict[Any, Any]) -> Iterator[None]:
    """``url`` as the API of this context (with ``settings``) and of the whole process (see :func:`prefect_api`)."""
    with temporary_settings(updates={**settings, **_plain_loopback(url), PREFECT_API_URL: url}) as in_force, \
            process_wide_api_url(url), \
            SettingsWrittenOnce(profile=SettingsContext.get().profile, settings=in_force):
        yield


class SettingsWrittenOnce(SettingsContext):
    """Prefect's settings context, written out (:meth:`serialize`) once, not for every task shipped.

    Prefect writes the whole settings model out for every task it ships to a pool
    worker: 30 ms of the flow's process a task (a model dump and a walk through
    it).  The settings of a context never change (a change is a new context, as
    ``temporary_settings`` makes), so the first dump serves them all; each caller
    gets its own copy.
    """

    _written: dict[str, Any] | None = PrivateAttr(default=None)

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        """The settings as Prefect ships them (the first call's dump, copied)."""
        if not include_secrets:
            return super().serialize(include_secrets=False)
        if self._written is None:
            self._written = super().serialize()
        return copy.deepcopy(self._written)


@contextlib.contextmanager
def process_wide_api_url(url: str) -> Iterator[None]:
    """Name ``url`` in the process's environment and global settings too, not only in this context.

    Prefect starts some threads without a copy of the caller's context, and they
    read the process-global settings, which Prefect took from the environment at
    import.  The process pool's message forwarder is one: it sends the workers'
    logs and events on to the API.  Without the URL there, its log and event
    clients each started a temporary server of their own at the first process-pool
    flow of a process (two more servers, about 5 s of start-up and a 3.5 s stall at
    the flow's end on 2 cores) and the workers' logs went to those servers, not to
    the one the flow run is in.  ``serve`` names its server so too: its flow runs
    start in child processes, which find the server through the environment.
    The environment is restored on the way out.
    """
    prior = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        yield
    finally:
        if prior is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = prior
        refresh_global_settings_context()


def _settle_worker(environment: dict[str, str]) -> None:
    """A process-pool worker's start: Prefect's settings of the flow as the worker's own (its global settings)."""
    os.environ.update(environment)
    refresh_global_settings_context()


class SettledProcessPoolTaskRunner(ProcessPoolTaskRunner):
    """Prefect's process pool, whose workers take the flow's Prefect settings once, when they start.

    Prefect ships the whole settings model with every task and rebuilds it in the
    worker before the task runs: 40 ms of validating several hundred settings per
    task, on the worker's time (30 ms more to write them out in the flow's
    process).  Here each worker is started with the settings in force when the
    runner is made (:func:`_settle_worker`, the pool's initializer: its global
    settings), and a task whose settings are exactly those goes without them, so
    the worker runs it under its global settings.  A task submitted under other
    settings (a ``temporary_settings`` block around the submission) still takes
    its own.
    """

    def __init__(self, max_workers: int, initargs: tuple[Any, ...] = ({},)) -> None:
        # initargs: the environment each worker starts with (none by default; see settled())
        super().__init__(max_workers=max_workers, initializer=_settle_worker, initargs=initargs)
        self._settled: dict[str, Any] | None = None  # no settings are left out: see settled()

    @classmethod
    def settled(cls, max_workers: int, environment: Mapping[str, str] | None = None) -> SettledProcessPoolTaskRunner:
        """A runner whose workers start with the settings in force now (and ``environment``); its tasks go without."""
        settings = get_current_settings().to_environment_variables(exclude_unset=True)
        runner = cls(max_workers, ({**settings, **(environment or {})},))
        runner._settled = serialize_context()["settings_context"]
        return runner

    def duplicate(self) -> Self:
        """A runner of the same workers and settings (Prefect makes one in a worker for every task it runs)."""
        twin = super().duplicate()  # the initializer and its arguments too
        twin._settled = self._settled
        return twin

    def _resolve_futures_and_submit(self, *args: Any, context: dict[str, Any], **kwargs: Any) -> Any:
        # Prefect's hand-off of a task to the pool, with the context serialised for the task
        if self._settled is not None and context.get("settings_context") == self._settled:
            context = {**context, "settings_context": {}}  # the worker's own settings are these
        return super()._resolve_futures_and_submit(*args, context=context, **kwargs)


def make_task_runner(execution: ExecutionSettings, *, api_url: str) -> TaskRunner[Any]:
    """Build the task runner ``[execution]`` asks for.

    Parameters
    ----------
    execution
        The validated ``[execution]`` table.
    api_url
        The Prefect API the workers must report to (from :func:`prefect_api`).

    Returns
    -------
    TaskRunner
        ``ThreadPoolTaskRunner`` / ``ProcessPoolTaskRunner`` with ``workers``
        workers, or a ``DaskTaskRunner`` connected to ``dask_address`` when set,
        else owning a local cluster of ``workers`` single-threaded processes.
    """
    if execution.runner is Runner.THREADS:
        # one process: its stages keep their own threads (the GIL bounds this runner anyway)
        return ThreadPoolTaskRunner(max_workers=execution.workers)
    if execution.runner is Runner.PROCESSES:
        # The pool copies this process's settings (including the API URL from
        # prefect_api) into every worker's environment, and the stages' share of the cores.
        return SettledProcessPoolTaskRunner.settled(execution.workers, worker_environment(execution.workers))
    from prefect_dask import DaskTaskRunner

    if execution.dask_address:
        # Workers of an existing cluster get the API URL through the settings
        # Prefect serialises with each task; a cluster on other machines needs
        # a PREFECT_API_URL they can reach.
        scheduler_host = urlsplit(execution.dask_address).hostname or ""
        api_host = urlsplit(api_url).hostname or ""
        if _is_loopback(api_host) and not _is_loopback(scheduler_host):
            logger.warning(
                "the Dask cluster at %s reports to the Prefect API at %s, which only this machine "
                "can reach: set PREFECT_API_URL to a Prefect server the workers can reach",
                execution.dask_address,
                api_url,
            )
        return DaskTaskRunner(address=execution.dask_address)
    env = {key: os.environ[key] for key in _WORKER_ENV_KEYS if key in os.environ}
    env["PREFECT_API_URL"] = api_url
    env.update(worker_environment(execution.workers))
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": execution.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            "env": env,
        }
    )
