"""Task runners from ``[execution]`` and the one Prefect API every worker talks to.

With no ``PREFECT_API_URL``, Prefect starts a temporary API server on the first
call, in whatever process makes that call.  Process-pool and Dask workers are
other processes: left alone, each would start its own server on the same
SQLite file, and the flow would not see their task runs (a process- or Dask-pool worker with no PREFECT_API_URL starts a temporary server of its own).
:func:`prefect_api` therefore starts exactly one server in the flow's own
process and puts its URL into the settings that Prefect serialises into every
task it ships to a worker (and into the Dask workers' environment).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from curation.config import ExecutionSettings, Runner

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


def configured_api_url() -> str:
    """The Prefect API URL in force (settings or environment), ``""`` when none."""
    return str(PREFECT_API_URL.value() or "")


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Make sure one Prefect API serves the flow's process and all its workers.

    With ``PREFECT_API_URL`` set (a team server, or a test harness), that server
    is used as it is.  Without, Prefect's own temporary server is started once
    in this process (the same one Prefect would start lazily) and its URL is put
    into the settings for the duration of the block: tasks shipped to process
    and Dask workers carry those settings, so no worker starts a server.

    Yields
    ------
    str
        The API URL every run of the block reports to.
    """
    url = configured_api_url()
    if url:
        yield url
        return
    # Imported here: the server module is heavy and only needed without a URL.
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide singleton ephemeral mode uses
    server.start()
    logger.debug("using the temporary Prefect API at %s", server.api_url)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server.api_url


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
        return ThreadPoolTaskRunner(max_workers=execution.workers)
    if execution.runner is Runner.PROCESSES:
        # The pool copies this process's settings (including the API URL from
        # prefect_api) into every worker's environment.
        return ProcessPoolTaskRunner(max_workers=execution.workers)
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
