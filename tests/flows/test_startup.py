"""What a command costs before its work: the modules it imports and the Prefect server it starts."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from curation.threads import threads_per_worker
from tests.flows.conftest import CuratedDemo, run_python

#: Heavy packages and what should import them: Prefect for flows only, Dask for
#: the dask runner, scikit-image for defacing, dicom2nifti for conversion,
#: openpyxl for spreadsheets; Prefect's server only in the server's own process.
HEAVY = ("prefect", "prefect.server.api.server", "dask", "distributed", "skimage", "dicom2nifti", "openpyxl")

# Runs the CLI's main() on argv and prints which of HEAVY it imported (and its exit code).
_MAIN = (
    "import json, sys\n"
    "from flows.cli import main\n"
    "heavy = json.loads(sys.argv[1])\n"
    "before = [m for m in heavy if m in sys.modules]\n"
    "code = main(sys.argv[2:])\n"
    "print(json.dumps({'code': code, 'on_import': before, 'after': [m for m in heavy if m in sys.modules]}))\n"
)

_EMPTY_SITE = """\
[release]
name = "startup-test"
version = "1.0.0"

[[site]]
id = "empty"
dicom_dir = "drop"
segmentations_dir = "seg"
license = "CC-BY-4.0"
deface = false
indication = "none"
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PETCT_RELEASE_CACHE")}
    env.update(extra)
    return env


def _imported(*argv: str, env: dict[str, str]) -> dict[str, object]:
    run = run_python(_MAIN, json.dumps(HEAVY), *argv, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_commands_that_only_read_import_no_prefect_and_no_heavy_package(curated_demo: CuratedDemo) -> None:
    env = _env()
    help_run = _imported("--help", env=env)
    assert help_run["on_import"] == [] and help_run["after"] == [] and help_run["code"] == 0

    status = _imported("status", str(curated_demo.config_path), env=env)
    assert status["code"] == 0 and status["after"] == []

    verify = _imported("verify", str(curated_demo.zip_path), env=env)
    assert verify["code"] == 0
    # verify reads the release's spreadsheets (openpyxl); nothing else heavy
    assert set(verify["after"]) <= {"openpyxl"}, verify


#: What only a build, a conversion or reading a DICOM file needs: never imported by
#: ``import flows.flows`` nor by an ``ingest`` on a site with no study (the served start-up,
#: issue 14); the index imports pydicom only when it has a file to read.
BUILD_ONLY = ("nibabel", "release.assemble", "release.verify", "curation.prepare", "curation.qc",
              "curation.ingest", "fastapi", "pydicom", "PIL")


def test_the_flows_import_prefect_but_not_its_server_nor_what_only_workers_use() -> None:
    code = (
        "import json, sys\n"
        "import flows.flows\n"
        f"print(json.dumps([m for m in {HEAVY + BUILD_ONLY!r} if m in sys.modules]))\n"
    )
    run = run_python(code, env=_env())
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == ["prefect"]


def _flow_runs(database: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow ON flow.id = flow_run.flow_id"
        ).fetchall()


_INGEST = (
    "import json, sys\n"
    "from flows import localserver\n"
    "from flows.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "servers = [s.process.pid for s in localserver._temporary.values()]\n"
    "print(json.dumps({'code': code, 'servers': servers,\n"
    "                  'server_module': 'prefect.server.api.server' in sys.modules,\n"
    f"                  'build_only': [m for m in {BUILD_ONLY!r} if m in sys.modules]}}))\n"
)


def _ingest(root: Path, cache: Path) -> dict[str, object]:
    (root / "drop").mkdir(parents=True)
    (root / "seg").mkdir()
    config = root / "release.toml"
    config.write_text(_EMPTY_SITE, encoding="utf-8")
    run = run_python(_INGEST, "ingest", str(config), env=_env(PETCT_RELEASE_CACHE=str(cache)))
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_command_starts_one_temporary_server_before_its_imports_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.localserver import schema_template

    cache = tmp_path / "cache"
    first = _ingest(tmp_path / "one", cache)
    assert first["code"] == 0 and len(first["servers"]) == 1  # type: ignore[arg-type]
    assert first["server_module"] is False  # the command's process never imports Prefect's server
    assert first["build_only"] == []  # nor, for a site with no study, what a build or a conversion needs
    with pytest.raises(ProcessLookupError):
        os.kill(first["servers"][0], 0)  # type: ignore[index]  # stopped when the command ended
    # the run is in the state folder's database
    state = tmp_path / "one" / ".petct" / "prefect"
    assert _flow_runs(state / "prefect.db") == [("ingest_site", "COMPLETED")]

    # the first migration left the empty schema for the next new state folder
    monkeypatch.setenv("PETCT_RELEASE_CACHE", str(cache))
    template = schema_template()
    assert template.is_file() and template.parent == cache
    assert _flow_runs(template) == []
    with contextlib.closing(sqlite3.connect(template)) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    with contextlib.closing(sqlite3.connect(state / "prefect.db")) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (revision,)

    second = _ingest(tmp_path / "two", cache)
    assert second["code"] == 0
    assert _flow_runs(tmp_path / "two" / ".petct" / "prefect" / "prefect.db") == [("ingest_site", "COMPLETED")]
    assert _flow_runs(template) == []  # the template is copied, never used


def test_seeding_never_replaces_an_existing_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.localserver import DATABASE_NAME, schema_template, seed_database

    monkeypatch.setenv("PETCT_RELEASE_CACHE", str(tmp_path / "cache"))
    home = tmp_path / "prefect"
    assert seed_database(home) is False  # no template yet
    schema_template().parent.mkdir(parents=True)
    schema_template().write_bytes(b"template")
    (home).mkdir()
    (home / DATABASE_NAME).write_bytes(b"runs of this release")
    assert seed_database(home) is False
    assert (home / DATABASE_NAME).read_bytes() == b"runs of this release"
    other = tmp_path / "other"
    assert seed_database(other) is True
    assert (other / DATABASE_NAME).read_bytes() == b"template"
    assert [p.name for p in other.iterdir()] == [DATABASE_NAME]  # no temporary file left


_NESTED = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "import httpx\n"
    "from flows import localserver\n"
    "one, two, three = (Path(p) for p in sys.argv[1:4])\n"
    "localserver.launch_early(one)\n"
    "from flows.runners import prefect_api\n"
    "from prefect.settings import PREFECT_API_URL, temporary_settings\n"
    "out = {}\n"
    "with prefect_api(one) as url:\n"
    "    out['claimed'] = url == localserver._temporary[(one / 'prefect').resolve()].api_url\n"
    "    with prefect_api(two) as inner:  # a run inside a run reports where the outer one does\n"
    "        out['inner'] = inner == url\n"
    "    out['outer_alive'] = httpx.get(url + '/health').status_code == 200\n"
    "    localserver._unclaimed.add(localserver._launch(three / 'prefect').home)  # as launch_early does\n"
    "    early = localserver._temporary[(three / 'prefect').resolve()]\n"
    "    with temporary_settings(updates={PREFECT_API_URL: url}), prefect_api(three) as configured:\n"
    "        out['configured'] = configured == url\n"
    "    out['early_stopped'] = early.process.poll() is not None\n"
    "    out['outer_alive_after'] = httpx.get(url + '/health').status_code == 200\n"
    "print(json.dumps(out))\n"
)


def test_runs_inside_runs_share_one_server_and_an_unneeded_early_server_is_stopped(tmp_path: Path) -> None:
    states = [tmp_path / name for name in ("one", "two", "three")]
    run = run_python(_NESTED, *map(str, states), env=_env(PETCT_RELEASE_CACHE=str(tmp_path / "cache"),
                                                          PREFECT_HOME=str(tmp_path / "home")))
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {
        "claimed": True, "inner": True, "outer_alive": True, "configured": True,
        "early_stopped": True, "outer_alive_after": True,
    }
    assert not (tmp_path / "two" / "prefect").exists()  # the inner run started no server of its own


_HOLD_A_SERVER = """
import sys, time
from pathlib import Path
from flows.localserver import start_server
server = start_server(Path(sys.argv[1]), temporary=True)
server.wait_healthy(180)
print(server.api_url, server.process.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_command_takes_its_server_with_it(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    import httpx

    holder = subprocess.Popen([sys.executable, "-c", _HOLD_A_SERVER, str(tmp_path / "prefect")],
                              env=_env(PETCT_RELEASE_CACHE=str(tmp_path / "cache")), stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        api_url, pid = holder.stdout.readline().split()
        assert httpx.get(f"{api_url}/health", timeout=10).status_code == 200
        holder.send_signal(signal.SIGKILL)  # no finally, no atexit: only the parent-death signal is left
        holder.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(int(pid), signal.SIGKILL)
            pytest.fail(f"the server {pid} outlived the killed process that started it")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{api_url}/health", timeout=2)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_served_record_is_trusted_only_while_its_server_answers_and_never_through_a_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.localserver import served_api_url, served_record

    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    served_record(tmp_path).parent.mkdir(parents=True)
    served_record(tmp_path).write_text(json.dumps({"api_url": url, "pid": os.getpid()}), encoding="utf-8")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy that does not answer
    monkeypatch.setenv("no_proxy", "")
    try:
        assert served_api_url(tmp_path) == url
        served_record(tmp_path).write_text(json.dumps({"api_url": url + "/nowhere", "pid": os.getpid()}))
        assert served_api_url(tmp_path) == ""  # answers, but not 200
    finally:
        server.shutdown()
        server.server_close()
    served_record(tmp_path).write_text(json.dumps({"api_url": url, "pid": os.getpid()}), encoding="utf-8")
    assert served_api_url(tmp_path, timeout=0.5) == ""  # nothing answers any more


# A process-pool flow whose workers log; prints which API the flow ran on, the
# messages that API holds for the run, and the Prefect servers this process started.
_POOL_LOGS = (
    "import json, sys, time\n"
    "from pathlib import Path\n"
    "from prefect import flow, get_run_logger, task\n"
    "from prefect.client.orchestration import get_client\n"
    "from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId\n"
    "from curation.config import ExecutionSettings, Runner\n"
    "from flows import localserver\n"
    "from flows.runners import make_task_runner, prefect_api\n"
    "from prefect.settings import PREFECT_API_SSL_CERT_FILE\n"
    "from curation.threads import stage_threads\n"
    "@task\n"
    "def speak(i):\n"
    "    get_run_logger().info('worker %d was here', i)\n"
    "    return str(PREFECT_API_SSL_CERT_FILE.value()), stage_threads()\n"
    "@flow(name='pool-logs')\n"
    "def pool(n):\n"
    "    return [f.result() for f in [speak.submit(i) for i in range(n)]]\n"
    "with prefect_api(Path(sys.argv[1])) as url:\n"
    "    runner = make_task_runner(ExecutionSettings(Runner.PROCESSES, 2), api_url=url)\n"
    "    state = pool.with_options(task_runner=runner)(2, return_state=True)\n"
    "    run_id, seen = state.state_details.flow_run_id, state.result()\n"
    "    ca_files, threads = sorted({ca for ca, _ in seen}), sorted({n for _, n in seen})\n"
    "    messages = []\n"
    "    with get_client(sync_client=True) as client:\n"
    "        for _ in range(300):  # the log worker sends every 2 s\n"
    "            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))\n"
    "            messages = sorted(log.message for log in logs if 'was here' in log.message)\n"
    "            if len(messages) == 2:\n"
    "                break\n"
    "            time.sleep(0.1)\n"
    "    servers = len(localserver._temporary)\n"
    "print(json.dumps({'messages': messages, 'servers': servers, 'ca_files': ca_files, 'threads': threads}))\n"
)


def test_a_process_pool_s_worker_logs_reach_the_flow_s_server_and_no_other_server_starts(tmp_path: Path) -> None:
    # Prefect forwards the workers' logs and events from a thread that reads the
    # process-global settings: they must name the flow's server too, or that thread
    # starts servers of its own and the logs go there.
    run = run_python(_POOL_LOGS, str(tmp_path / "state"),
                     env=_env(PETCT_RELEASE_CACHE=str(tmp_path / "cache"), PREFECT_HOME=str(tmp_path / "home"),
                              PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO", PREFECT_LOGGING_LEVEL="INFO"),
                     timeout=180)  # without the fix the extra servers' clients could hang at exit
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {
        "messages": ["worker 0 was here", "worker 1 was here"], "servers": 1,
        # the server is plain HTTP on loopback: no CA bundle is parsed for each client
        "ca_files": [str(Path(__file__).parents[2] / "flows" / "data" / "trusts-nothing.pem")],
        # two workers share the cores for their stages' threads (one each on 2 cores)
        "threads": [threads_per_worker(2)],
    }
    assert "Starting temporary server" not in run.stderr, run.stderr[-3000:]
    # nothing used Prefect's own home, where a server of its own keeps its database
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file()]


# A process-pool flow (our runner, 1 worker) whose tasks report the Prefect settings they run
# under, and whether the worker rebuilt a settings model for them; the last task is submitted
# under a temporary setting of its own.
_SETTLED_POOL = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "from prefect import flow, task\n"
    "from prefect.context import SettingsContext\n"
    "from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, PREFECT_TASKS_DEFAULT_RETRIES\n"
    "from prefect.settings import temporary_settings\n"
    "from curation.config import ExecutionSettings, Runner\n"
    "from flows.runners import make_task_runner, prefect_api\n"
    "@task\n"
    "def seen(i):\n"
    "    from curation.threads import stage_threads\n"
    "    return {'rebuilt': SettingsContext.__var__.get(None) is not None, 'url': str(PREFECT_API_URL.value()),\n"
    "            'ca_file': str(PREFECT_API_SSL_CERT_FILE.value()), 'retries': PREFECT_TASKS_DEFAULT_RETRIES.value(),\n"
    "            'threads': stage_threads()}\n"
    "@flow(name='settled-pool')\n"
    "def pool():\n"
    "    futures = [seen.submit(i) for i in range(3)]\n"
    "    with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 7}):\n"
    "        futures.append(seen.submit(3))\n"
    "    return [f.result() for f in futures]\n"
    "with prefect_api(Path(sys.argv[1])) as url:\n"
    "    runner = make_task_runner(ExecutionSettings(Runner.PROCESSES, 1), api_url=url)\n"
    "    print(json.dumps({'url': url, 'seen': pool.with_options(task_runner=runner)()}))\n"
)


def test_a_process_pool_worker_takes_the_settings_once_and_a_task_under_other_settings_takes_its_own(
    tmp_path: Path,
) -> None:
    # Prefect would ship every task with the whole settings model and rebuild it in the
    # worker (40 ms a task); our pool's workers start with the flow's settings instead
    run = run_python(_SETTLED_POOL, str(tmp_path / "state"),
                     env=_env(PETCT_RELEASE_CACHE=str(tmp_path / "cache"), PREFECT_HOME=str(tmp_path / "home")),
                     timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    ca_file = str(Path(__file__).parents[2] / "flows" / "data" / "trusts-nothing.pem")
    # one worker: its stages keep two threads where the machine has two cores
    same = {"rebuilt": False, "url": out["url"], "ca_file": ca_file, "retries": 0, "threads": threads_per_worker(1)}
    assert out["seen"] == [same, same, same, {**same, "rebuilt": True, "retries": 7}]


def test_the_settings_are_written_out_once_for_the_tasks_and_each_caller_gets_its_own_copy() -> None:
    from prefect.context import SettingsContext, serialize_context
    from prefect.settings import PREFECT_TASKS_DEFAULT_RETRIES, temporary_settings

    from flows.runners import SettingsWrittenOnce, _reporting_to

    with _reporting_to("http://127.0.0.1:9/api", {}):
        context = SettingsContext.get()
        assert isinstance(context, SettingsWrittenOnce)
        first = serialize_context()["settings_context"]
        # what Prefect's own context would write out for the same settings
        assert first == SettingsContext(profile=context.profile, settings=context.settings).serialize()
        first["settings"]["api"]["url"] = "changed by a caller"
        second = serialize_context()["settings_context"]
        assert second["settings"]["api"]["url"] == "http://127.0.0.1:9/api"
        with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 3}):  # new settings: written anew
            assert serialize_context()["settings_context"]["settings"]["tasks"]["default_retries"] == 3
        assert serialize_context()["settings_context"] == second


@pytest.mark.parametrize(("url", "plain"), [
    ("http://127.0.0.1:4200/api", True), ("http://localhost:4200/api", True), ("http://[::1]:4200/api", True),
    ("https://127.0.0.1:4200/api", False), ("http://prefect.example.org/api", False),
    ("https://prefect.example.org/api", False),
])
def test_only_a_plain_http_loopback_api_gets_the_ca_file_that_trusts_nothing(url: str, plain: bool) -> None:
    from prefect.settings import PREFECT_API_SSL_CERT_FILE

    from flows.runners import TRUSTS_NOTHING, _plain_loopback

    assert _plain_loopback(url) == ({PREFECT_API_SSL_CERT_FILE: str(TRUSTS_NOTHING)} if plain else {})


def test_the_ca_file_that_trusts_nothing_is_one_certificate_expired_the_day_it_was_made() -> None:
    import ssl

    from cryptography import x509  # Prefect's dependency

    from flows.runners import TRUSTS_NOTHING

    context = ssl.create_default_context(cafile=str(TRUSTS_NOTHING))  # what Prefect does with it
    assert context.cert_store_stats() == {"x509": 1, "crl": 0, "x509_ca": 0}  # not even a CA
    certificate = x509.load_pem_x509_certificate(TRUSTS_NOTHING.read_bytes())
    assert certificate.not_valid_before_utc == certificate.not_valid_after_utc
    assert certificate.subject == certificate.issuer  # self-signed; its key was never kept
