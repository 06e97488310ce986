"""``petct-release serve CONFIG``: the deployments and the scheduled build.

Serves one ``ingest-<site>`` deployment per site and a ``build-release``
deployment carrying ``[schedule] build_cron``.  Only a real Prefect server runs
schedules (Prefect's temporary server has no scheduler), so without
``PREFECT_API_URL`` this starts ``prefect server start`` on a free loopback
port, with its database under ``state_dir/prefect``, says so with the UI's
address, and serves against it; with ``PREFECT_API_URL`` set it uses that
server.  The deployed flows carry the task runner of ``[execution]``.

While it serves, it records the server's URL in ``state_dir/prefect/served.json``:
every other command for the same state folder then reports to this server
(its runs show in the same UI) instead of starting a temporary one.

Stopping: Ctrl-C (SIGINT) and SIGTERM ask Prefect's runner to stop the way
Prefect's own SIGTERM handler does (its polling loops are cancelled from
inside its event loop), rather than raising ``KeyboardInterrupt`` wherever the
main thread happens to be, which could leave the loop waiting for ever.  A
second Ctrl-C, or a runner still running :data:`STOP_GRACE_S` seconds later,
ends ``serve`` at once: every thread's stack goes to stderr, the record and
the local server go, and the exit code is 1.  ``kill -USR1`` prints every
thread's stack at any time, for a steward who wants to know what ``serve`` is
doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from curation.atomic import atomic_write_json
from curation.config import Config, load_config
from curation.threads import stage_threads
from flows.localserver import local_prefect_server, served_record

logger = logging.getLogger(__name__)

#: Deployment of the scheduled release build.
BUILD_DEPLOYMENT = "build-release"
#: Seconds Prefect's runner gets to stop after Ctrl-C or SIGTERM before ``serve`` ends at once.
STOP_GRACE_S = 60.0


def ingest_deployment_name(site_id: str) -> str:
    """The deployment that ingests one site: ``ingest-<site>``."""
    return f"ingest-{site_id}"


def serve(config_path: str) -> None:
    """Serve the deployments of ``config_path`` until interrupted.

    Without ``PREFECT_API_URL``, a local Prefect server is started on loopback
    (state under ``state_dir/prefect``) for as long as this runs.

    Raises
    ------
    curation.config.ConfigError
        When the configuration (or ``PETCT_RELEASE_STAGE_THREADS``) is invalid.
    """
    from flows.runners import configured_api_url, process_wide_api_url

    config = load_config(config_path)
    stage_threads()  # a bad PETCT_RELEASE_STAGE_THREADS is refused here, not in every case of every scheduled run
    record = served_record(config.release.state_dir)
    if threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    url = configured_api_url()
    if url:
        logger.info("serving the deployments of %s against the Prefect API at %s", config.path, url)
        with _recorded(config.release.state_dir, url):
            _serve(config, url, lambda: _forget(record))
        return
    home = config.release.state_dir / "prefect"
    logger.info("no PREFECT_API_URL: starting a local Prefect server (state in %s)", home)
    with local_prefect_server(home) as server:
        logger.info(
            "started a local Prefect server for the schedules; Prefect UI at %s (API %s)",
            server.ui_url,
            server.api_url,
        )
        # Flow runs start in child processes: they find the server through the environment.
        with process_wide_api_url(server.api_url), _recorded(config.release.state_dir, server.api_url):
            _serve(config, server.api_url, lambda: (_forget(record), server.stop()))


@contextlib.contextmanager
def _recorded(state_dir: Path, api_url: str) -> Iterator[None]:
    """Record the served API in ``state_dir`` for other commands while the block runs."""
    path = served_record(state_dir)
    atomic_write_json(path, {"api_url": api_url, "pid": os.getpid()})
    logger.info("commands for this state folder report to %s while this serves (%s)", api_url, path)
    try:
        yield
    finally:
        _forget(path)


def _forget(path: Path) -> None:
    """Remove the served record at ``path`` if this process wrote it."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


class _Stopper:
    """The signal handler of a serving process: stop the runner, and end at once when it will not stop.

    The first SIGINT or SIGTERM schedules the runner's ``astop`` in its own
    event loop (as Prefect's SIGTERM handler does) and starts a watchdog; a
    second signal, or the watchdog after ``grace`` seconds, dumps every
    thread's stack to stderr, calls ``cleanup`` (the served record, the local
    server) and exits with code 1 without waiting for anything else.
    """

    def __init__(self, runner: Any, grace: float, cleanup: Callable[[], object]) -> None:
        self._runner = runner
        self._grace = grace
        self._cleanup = cleanup
        self._signals = 0
        self.stopped = threading.Event()

    def __call__(self, signum: int, frame: object) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            self._force(f"{name} again while stopping")
        loop = getattr(self._runner, "_loop", None)
        if loop is None:
            # Runner.start has not begun: no event loop runs, the deployments are being registered.
            raise KeyboardInterrupt
        logger.info("%s: stopping the runner (within %.0f s; %s again stops at once)", name, self._grace, name)
        asyncio.run_coroutine_threadsafe(_stop_when_started(self._runner), loop)
        threading.Thread(target=self._watch, name="serve-stop-watchdog", daemon=True).start()

    def _watch(self) -> None:
        if not self.stopped.wait(self._grace):
            self._force(f"Prefect's runner did not stop within {self._grace:.0f} s")

    def _force(self, why: str) -> None:
        logger.error("%s: serve ends now; every thread's stack follows", why)
        for handler in logging.getLogger().handlers + logger.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            self._cleanup()
        finally:
            os._exit(1)


async def _run(runner: Any) -> None:
    """Run ``runner`` until it stops; say so once it polls for flow runs."""

    async def announce() -> None:
        while not runner.started:
            await asyncio.sleep(0.05)
        logger.info("the runner polls for flow runs; stop with Ctrl-C")

    announcer = asyncio.create_task(announce())
    try:
        await runner.start()
    finally:
        announcer.cancel()


async def _stop_when_started(runner: Any) -> None:
    """Stop ``runner`` from inside its event loop, once it has started (``astop`` refuses before)."""
    while not runner.started:
        await asyncio.sleep(0.05)
    await runner.astop()


def _serve(config: Config, api_url: str, cleanup: Callable[[], object]) -> None:
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.flows import build_release_flow, ingest_site_flow
    from flows.runners import make_task_runner

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        runner = Runner(name=f"petct-release-{config.release.name}", pause_on_shutdown=False)
        task_runner = make_task_runner(config.execution, api_url=api_url)
        for site in config.sites:
            runner.add_flow(
                ingest_site_flow.with_options(task_runner=task_runner),
                name=ingest_deployment_name(site.id),
                parameters={"config_path": str(config.path), "site_id": site.id},
                description=f"Ingest the DICOM drop of site {site.id} ({config.path.name}).",
                tags=["petct-release", config.release.name],
            )
        runner.add_flow(
            build_release_flow.with_options(task_runner=task_runner),
            name=BUILD_DEPLOYMENT,
            cron=config.schedule.build_cron,
            parameters={"config_path": str(config.path), "force": False},
            description=f"Build {config.release.zip_name} from the ingested cases ({config.path.name}).",
            tags=["petct-release", config.release.name],
        )
        names = [ingest_deployment_name(s.id) for s in config.sites] + [BUILD_DEPLOYMENT]
        logger.info(
            "serving deployments %s; build-release runs on cron %r",
            ", ".join(names),
            config.schedule.build_cron,
        )
        stopper = _Stopper(runner, STOP_GRACE_S, cleanup)
        main = threading.current_thread() is threading.main_thread()
        if main:
            # Runner.start installs self.handle_sigterm for SIGTERM: the stopper takes its place.
            runner.handle_sigterm = stopper  # type: ignore[method-assign]
            signal.signal(signal.SIGINT, stopper)
        try:
            asyncio.run(_run(runner))
        except (KeyboardInterrupt, TerminationSignal):
            pass
        finally:
            stopper.stopped.set()
            if main:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        logger.info("stopped serving")
