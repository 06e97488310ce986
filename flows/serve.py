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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from curation.atomic import atomic_write_json
from curation.config import Config, load_config
from flows.localserver import local_prefect_server, served_record

logger = logging.getLogger(__name__)

#: Deployment of the scheduled release build.
BUILD_DEPLOYMENT = "build-release"


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
        When the configuration is invalid.
    """
    from flows.runners import configured_api_url

    config = load_config(config_path)
    url = configured_api_url()
    if url:
        logger.info("serving the deployments of %s against the Prefect API at %s", config.path, url)
        with _recorded(config.release.state_dir, url):
            _serve(config, url)
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
        os.environ["PREFECT_API_URL"] = server.api_url
        try:
            with _recorded(config.release.state_dir, server.api_url):
                _serve(config, server.api_url)
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def _recorded(state_dir: Path, api_url: str) -> Iterator[None]:
    """Record the served API in ``state_dir`` for other commands while the block runs."""
    path = served_record(state_dir)
    atomic_write_json(path, {"api_url": api_url, "pid": os.getpid()})
    logger.info("commands for this state folder report to %s while this serves (%s)", api_url, path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                path.unlink()


def _serve(config: Config, api_url: str) -> None:
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
            "serving deployments %s; build-release runs on cron %r; stop with Ctrl-C",
            ", ".join(names),
            config.schedule.build_cron,
        )
        try:
            asyncio.run(runner.start())
        except (KeyboardInterrupt, TerminationSignal):
            logger.info("stopped serving")
