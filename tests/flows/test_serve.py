"""``serve``: a real Prefect server on loopback, the deployments, the cron, a run through the API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import httpx
import pytest

from flows.audit import AuditLog
from tests.flows.conftest import REPO, CuratedDemo

# The serve process logs our INFO lines to stderr (Prefect's own handlers are
# left alone: it replaces the root logger's handlers when it configures logging).
_SERVE = (
    "import logging, sys\n"
    "handler = logging.StreamHandler(sys.stderr)\n"
    "logging.getLogger('flows').addHandler(handler)\n"
    "logging.getLogger('flows').setLevel(logging.INFO)\n"
    "from flows.serve import serve\n"
    "serve(sys.argv[1])\n"
)


class _Lines:
    """Collect a stream's lines in a thread; wait for one matching a pattern."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if match := re.search(pattern, line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{''.join(self.lines)[-4000:]}")
                self._cond.wait(left)


def _task_runs_and_logs(api_url: str, flow_run_id: object, *, timeout: float) -> tuple[list[Any], list[str]]:
    """A flow run's task runs and log messages, once the server has recorded a task run (it does so from events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        while True:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if (task_runs and logs) or time.monotonic() > deadline:
                return task_runs, [log.message for log in logs]
            time.sleep(0.5)


def test_serve_starts_a_server_registers_deployments_and_runs_the_build(curated_demo: CuratedDemo) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config = curated_demo.config
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    serve = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(curated_demo.config_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    api_url = ""
    try:
        log = _Lines(serve.stderr)
        match = log.wait_for(r"Prefect UI at (http://127\.0\.0\.1:\d+) \(API (\S+)\)", timeout=240)
        ui_url, api_url = match.group(1), match.group(2)
        assert api_url == f"{ui_url}/api"
        assert (config.release.state_dir / "prefect").is_dir()
        log.wait_for(r"serving deployments .*build-release", timeout=120)

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        build = client.read_deployment_by_name("build_release/build-release")
                        break
                    except Exception:  # not registered yet
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)
                crons = [s.schedule.cron for s in build.schedules]
                assert crons == [config.schedule.build_cron]
                assert build.parameters["config_path"] == str(config.path)
                for site in config.sites:
                    ingest = client.read_deployment_by_name(f"ingest_site/ingest-{site.id}")
                    assert ingest.parameters == {"config_path": str(config.path), "site_id": site.id}
                    assert not ingest.schedules

            run = run_deployment("build_release/build-release", timeout=300, poll_interval=1, as_subflow=False)
        assert run.state is not None and run.state.is_completed(), run.state
        records = [r for r in AuditLog(curated_demo.state.audit_log).records() if r["flow_run_id"] == str(run.id)]
        assert [r["event"] for r in records] == ["release-reused"]
        assert records[0]["outputs"] == {curated_demo.zip_path.name: curated_demo.zip_sha256}

        # a command run by hand for the same state folder reports to the served server
        served = config.release.state_dir / "prefect" / "served.json"
        assert json.loads(served.read_text())["api_url"] == api_url
        site = config.sites[0].id
        cli = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(config.path), "--site", site],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr[-3000:]
        with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest_site"])))
        assert [(r.parameters.get("site_id"), r.deployment_id) for r in runs] == [(site, None)]
        assert runs[0].state is not None and runs[0].state.is_completed()
        # with its task runs (recorded from its events) and its logs, sent before the command exited
        task_runs, logs = _task_runs_and_logs(api_url, runs[0].id, timeout=60)
        names = sorted(t.name for t in task_runs)
        assert names.count(f"index-{site}") == 1 and names.count(f"case-{site}") == len(names) - 1, names
        assert all(t.state_type is not None and t.state_type.value == "COMPLETED" for t in task_runs)
        assert any("Finished in state Completed" in line for line in logs), logs
    finally:
        serve.send_signal(signal.SIGINT)
        killed = False
        try:
            # serve ends by itself within STOP_GRACE_S (60 s) of SIGINT, its runner stopped or not
            serve.wait(timeout=120)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
            killed = True
    assert not killed, "serve did not end within 120 s of SIGINT"
    if serve.returncode != 0:
        # Prefect's runner did not stop in time: serve ended itself and printed every thread's stack
        assert "serve ends now; every thread's stack follows" in "".join(log.lines)
        warnings.warn("serve's runner did not stop within 60 s of SIGINT; its stacks:\n"
                      + "".join(log.lines)[-6000:], stacklevel=1)
    _assert_server_gone(api_url)
    # serve removes its record on the way out
    assert not (config.release.state_dir / "prefect" / "served.json").exists()


def _assert_server_gone(api_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{api_url}/health", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(0.5)
    pytest.fail(f"the Prefect server at {api_url} still answers after serve ended")


def test_a_second_ctrl_c_ends_serve_at_once_with_its_server_and_record(curated_demo: CuratedDemo) -> None:
    config = curated_demo.config
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    serve = subprocess.Popen([sys.executable, "-c", _SERVE, str(curated_demo.config_path)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        log = _Lines(serve.stderr)
        api_url = log.wait_for(r"\(API (\S+)\)", timeout=240).group(1)
        log.wait_for(r"the runner polls for flow runs; stop with Ctrl-C", timeout=120)
        record = config.release.state_dir / "prefect" / "served.json"
        assert json.loads(record.read_text())["api_url"] == api_url
        serve.send_signal(signal.SIGINT)
        log.wait_for(r"SIGINT: stopping the runner", timeout=30)
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 1
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    log.wait_for(r"SIGINT again while stopping: serve ends now; every thread's stack follows", timeout=5)
    assert "Thread 0x" in "".join(log.lines) or "Current thread 0x" in "".join(log.lines)
    _assert_server_gone(api_url)
    assert not record.exists()
