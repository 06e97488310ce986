"""Prefect servers on loopback, found or started without importing Prefect.

Two kinds, both ``prefect server start`` in a subprocess with its SQLite
database in a ``PREFECT_HOME`` folder (``state_dir/prefect`` for a release):

- the **served** server of ``petct-release serve`` (every service, the UI and
  the scheduler), which records its URL in ``state_dir/prefect/served.json``
  for the other commands (:func:`served_api_url`);
- a **temporary** server for a command when nothing else serves its state
  folder (:func:`launch_early`, :func:`temporary_server`): only the services a
  flow run needs (the task-run recorder, the event persister and the event and
  log streams; no scheduler, no UI, no block registration), started once per
  process and stopped when the process exits, like Prefect's own ephemeral
  server.

Why not Prefect's ephemeral mode (``SubprocessASGIServer``): importing the module
that holds it costs 1.5-3.5 s in the command's process, and it is started only
after the command has imported Prefect and the flows.  Starting the server from
here, before those imports (:func:`launch_early`), lets its own start-up (about
3.5 s: imports, then the database's migrations) run on the other core while the
command imports.

A new database is created by 116 Alembic migrations (about 5 s on 2 cores).
The first temporary server that migrates one leaves a copy of the empty schema
(:func:`save_schema_template`: the migrated tables and nothing else) in the
user's cache, one per Prefect version; a new state folder's database starts as
a copy of it (:func:`seed_database`).  The server still runs its migrations on
every start: on a database at the current revision they do nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

#: The database file Prefect keeps under ``PREFECT_HOME`` (its default connection URL).
DATABASE_NAME = "prefect.db"
#: Documented Prefect settings of a temporary server: what a CLI flow run does not
#: use is off.  The task-run recorder and the event persister stay on (task runs
#: and events reach the database and the UI of a later ``serve``).
TEMPORARY_SERVER_SETTINGS = {
    "PREFECT_SERVER_UI_ENABLED": "false",
    # our flows use no blocks (``serve``'s full server registers them in the same database),
    # and without memoising Prefect does not load its collections to hash the block registry
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_ENABLED": "false",
}
#: Tables a freshly migrated database may hold rows in; a template with rows
#: anywhere else (a run, a log) is not kept.
_SCHEMA_TABLES = frozenset({"alembic_version", "block_type", "block_schema", "block_schema_reference", "configuration"})
#: Seconds a temporary server may take to answer (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, as Prefect's own).
_DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class LocalServer:
    """A ``prefect server start`` process on loopback.

    Attributes
    ----------
    api_url, ui_url
        Its API (``.../api``) and UI addresses.
    home
        Its ``PREFECT_HOME``: the database lives there.
    process
        The server process.
    log_path
        Where its output goes (``home/server.log``).
    """

    api_url: str
    ui_url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def wait_healthy(self, timeout: float) -> None:
        """Wait until ``/api/health`` answers.

        Raises
        ------
        RuntimeError
            When the process exits first or ``timeout`` seconds pass; the message
            holds the end of its log.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                if self.process.poll() is not None:
                    raise ServerExitedError(
                        f"prefect server start exited with code {self.process.returncode}; "
                        f"its log {self.log_path} ends with:\n{self._log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the Prefect server at {self.api_url} was not healthy after {timeout:.0f} s "
                        f"(log: {self.log_path}):\n{self._log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the server and wait for it (killed after 20 s)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        except OSError:
            return "(no log)"


class ServerExitedError(RuntimeError):
    """A server process exited before it answered (for example its port was taken meanwhile)."""


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Run by the server's interpreter before it becomes ``python -m prefect server start``: Linux's
#: parent-death signal (``PR_SET_PDEATHSIG``, kept across ``execv``) makes a killed command or
#: ``serve`` take its server with it instead of leaving it running on the state folder.  Linux
#: sends it when the starting *thread* ends, so only servers started by a main thread use it.
_TIED_TO_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"  # 1: PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the process that started this Prefect server has ended')\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def start_server(home: Path, *, temporary: bool) -> LocalServer:
    """Start ``prefect server start`` on a free loopback port (without waiting for it).

    Parameters
    ----------
    home
        Its ``PREFECT_HOME`` (created): the SQLite database lives there.
    temporary
        Only the services a flow run needs (:data:`TEMPORARY_SERVER_SETTINGS`);
        else every service, the scheduler and the UI.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    if temporary:
        env.update(TEMPORARY_SERVER_SETTINGS)
    log_path = home / "server.log"
    command = ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        # the server ends with the process that started it, even when that one is killed
        command = ["-c", _TIED_TO_PARENT, str(os.getpid()), *command]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return LocalServer(f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}", home, process, log_path)


@contextlib.contextmanager
def local_prefect_server(home: Path, *, timeout: float = 180.0) -> Iterator[LocalServer]:
    """Run a full ``prefect server start`` (scheduler, UI) on a free loopback port until the block ends.

    Parameters
    ----------
    home
        ``PREFECT_HOME`` of the server: its SQLite database lives there.
    timeout
        Seconds to wait for ``/api/health`` (about 12 s on a fresh database).

    Raises
    ------
    RuntimeError
        When the server exits or is not healthy within ``timeout``; the message
        holds the end of its output.
    """
    server = start_server(home, temporary=False)
    try:
        server.wait_healthy(timeout)
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# the served server's record


def served_record(state_dir: Path) -> Path:
    """Where ``serve`` records the URL of the server it serves against: ``state_dir/prefect/served.json``."""
    return Path(state_dir) / "prefect" / "served.json"


def served_api_url(state_dir: Path, *, timeout: float = 1.0) -> str:
    """The API URL ``serve`` recorded for ``state_dir``, if its process lives and the server answers.

    Parameters
    ----------
    state_dir
        The release's state folder.
    timeout
        Seconds to wait for the server's ``/health``.

    Returns
    -------
    str
        The URL, or ``""`` when there is no record, its ``serve`` is gone or
        the server does not answer (a stale record is left for ``serve`` to replace).
    """
    try:
        record = json.loads(served_record(state_dir).read_text(encoding="utf-8"))
        url, pid = str(record["api_url"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:  # alive, another user's
        pass
    return url if _answers(f"{url}/health", timeout) else ""


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str, timeout: float) -> bool:
    """Whether a GET of ``url`` answers 200 within ``timeout`` seconds.

    With the standard library: an ``httpx`` client loads the CA bundle for its
    TLS context whatever the URL (about 40 ms of CPU per check, twice per
    command), and a loopback server speaks plain HTTP.  No proxy: the server is on this machine.
    """
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):  # URLError and timeouts are OSErrors
        return False


# ---------------------------------------------------------------------------
# the temporary server: one per process and PREFECT_HOME, stopped at exit

_temporary: dict[Path, LocalServer] = {}
#: Homes whose server :func:`launch_early` started and no flow has used yet.
_unclaimed: set[Path] = set()
#: Homes whose database this process created by migrating (no template to copy).
_migrating: set[Path] = set()


def launch_early(state_dir: Path) -> None:
    """Start the temporary server for ``state_dir`` now, before the command imports Prefect.

    Does nothing when the command will not need one: ``PREFECT_API_URL`` is in
    the environment, Prefect is imported already (its settings decide, in
    :func:`flows.runners.prefect_api`), or ``serve`` answers for ``state_dir``.
    The server is waited for by :func:`temporary_server`.
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules or served_api_url(state_dir):
        return
    _unclaimed.add(_launch(Path(state_dir) / "prefect").home)


def _launch(home: Path) -> LocalServer:
    home = home.resolve()
    if not seed_database(home) and not (home / DATABASE_NAME).exists():
        _migrating.add(home)
    server = start_server(home, temporary=True)
    _temporary[home] = server
    atexit.register(server.stop)
    logger.debug("started a temporary Prefect server at %s (database in %s)", server.api_url, home)
    return server


def temporary_server(home: Path, *, timeout: float | None = None) -> LocalServer:
    """The temporary server of ``home``, started once per process (or by :func:`launch_early`) and healthy.

    It is stopped when the process exits (after Prefect has sent the run's last
    logs and events), so every flow run of the process uses it.

    Raises
    ------
    RuntimeError
        When it does not answer in time (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``,
        default 120 s) or exits three times before answering.
    """
    home = Path(home).resolve()
    _unclaimed.discard(home)
    if timeout is None:
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or _DEFAULT_TIMEOUT)
    for attempt in range(3):
        server = _temporary.get(home)
        if server is None or server.process.poll() is not None:
            server = _launch(home)
        try:
            server.wait_healthy(timeout)
        except ServerExitedError:  # e.g. its port was taken between choosing and binding it
            if attempt == 2:
                raise
            continue
        if home in _migrating:
            _migrating.discard(home)
            save_schema_template(home / DATABASE_NAME)
        return server
    raise AssertionError("unreachable")


def discard_early() -> None:
    """Stop the servers :func:`launch_early` started that no flow used, once another API turned out to be in force.

    (``PREFECT_API_URL`` set in a Prefect profile rather than the environment,
    or ``serve`` started meanwhile.)
    """
    for home in list(_unclaimed):
        _unclaimed.discard(home)
        server = _temporary.pop(home, None)
        if server is not None:
            server.stop()


# ---------------------------------------------------------------------------
# the schema template


def cache_dir() -> Path:
    """The user's cache folder for the pipeline (``PETCT_RELEASE_CACHE``, else ``$XDG_CACHE_HOME/petct-release``)."""
    explicit = os.environ.get("PETCT_RELEASE_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "petct-release"


def schema_template() -> Path:
    """The migrated, empty Prefect database of the installed Prefect version (it may not exist yet)."""
    return cache_dir() / f"prefect-{importlib.metadata.version('prefect')}-schema.db"


def seed_database(home: Path) -> bool:
    """Start ``home``'s database as a copy of the schema template, when there is none yet.

    Returns
    -------
    bool
        Whether the database was created from the template.
    """
    target = home / DATABASE_NAME
    template = schema_template()
    if target.exists() or not template.is_file():
        return False
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=home, prefix=".seed-", delete=False) as tmp, open(template, "rb") as src:
        shutil.copyfileobj(src, tmp)
    try:
        os.link(tmp.name, target)  # never replaces a database another command created meanwhile
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp.name)
    logger.debug("started %s from the schema template %s", target, template)
    return True


def save_schema_template(database: Path) -> None:
    """Keep a copy of a just-migrated database as the schema template, when there is none yet.

    The copy is kept only if it holds rows in the schema's own tables alone
    (:data:`_SCHEMA_TABLES`); failing to write it costs only the next migration.
    """
    template = schema_template()
    if template.exists():
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=template.parent, prefix=".template-")
        os.close(fd)
        try:
            with contextlib.closing(sqlite3.connect(database)) as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                tables = [t for (t,) in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                filled = [t for t in tables if dst.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone()]
            if not set(filled) <= _SCHEMA_TABLES or "alembic_version" not in filled:
                logger.debug("%s holds rows in %s: not kept as the schema template", database, filled)
                return
            os.replace(tmp, template)
            tmp = ""
        finally:
            if tmp:
                os.unlink(tmp)
    except (OSError, sqlite3.Error) as error:
        logger.debug("could not keep the schema template %s: %s", template, error)
