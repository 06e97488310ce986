"""The fixed start-up of a flow command: ``petct-release ingest`` on a site with nothing in it.

Three runs of the real command line, each in its own process, on one config
whose only site has an empty ``dicom_dir``:

1. cold: a new state folder, no server running (imports, a temporary Prefect
   server on a new database, one flow run).  The new database is a copy of the
   empty schema the first start on the machine leaves in the user's cache
   (``flows.localserver``); ``--first`` empties a private cache first, so the
   figure includes Prefect's migrations as on a machine's very first run;
2. warm: the same command again (the temporary server's database in the state
   folder exists now);
3. served: while ``petct-release serve`` runs for that state folder (the
   command reports to its server and starts none).

It also prints ``--help`` and ``status`` (which never start a server).
Targets (issue 14): cold <= 6 s, served <= 2 s.

Usage::

    .venv/bin/python benchmarks/startup.py [--first]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "flows.cli"]

CONFIG = """\
[release]
name = "startup-bench"
version = "1.0.0"

[[site]]
id = "empty"
dicom_dir = "drop"
segmentations_dir = "seg"
license = "CC-BY-4.0"
deface = false
indication = "none"
"""


_CACHE: dict[str, str] = {}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env["PYTHONPATH"] = str(REPO)
    env.update(_CACHE)
    return env


def timed(args: list[str], cwd: Path) -> float:
    """Wall seconds of one CLI command (it must exit 0)."""
    start = time.perf_counter()
    run = subprocess.run([*CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {run.returncode}:\n{run.stderr[-3000:]}")
    return seconds


def wait_served(state: Path, timeout: float = 240) -> None:
    """Wait until ``serve`` has recorded a server that answers."""
    sys.path.insert(0, str(REPO))
    from flows.localserver import served_api_url

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served_api_url(state):
            return
        time.sleep(0.5)
    raise RuntimeError("serve did not record a healthy server")


def main() -> int:
    first = "--first" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="petct-startup-") as tmp:
        root = Path(tmp)
        if first:  # no schema template: the machine's first start
            _CACHE["PETCT_RELEASE_CACHE"] = str(root / "cache")
        (root / "drop").mkdir()
        (root / "seg").mkdir()
        config = root / "release.toml"
        config.write_text(CONFIG, encoding="utf-8")
        t_help = timed(["--help"], root)
        t_cold = timed(["ingest", str(config)], root)
        t_warm = timed(["ingest", str(config)], root)
        t_status = timed(["status", str(config)], root)
        serve = subprocess.Popen([*CLI, "serve", str(config)], cwd=root, env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_served(root / ".petct")
            timed(["ingest", str(config)], root)  # the served server's first run of this flow
            t_served = min(timed(["ingest", str(config)], root) for _ in range(3))
            record = json.loads((root / ".petct" / "prefect" / "served.json").read_text())
        finally:
            serve.terminate()
            serve.wait(timeout=60)
    print(f"--help:                         {t_help:6.2f} s")
    print(f"status:                         {t_status:6.2f} s")
    what = "first on the machine: migrations" if first else "schema template"
    print(f"ingest, cold (new state, no server, {what}): {t_cold:6.2f} s   (target <= 6)")
    print(f"ingest, second run (warm database):  {t_warm:6.2f} s")
    print(f"ingest while serve runs ({record['api_url']}): {t_served:6.2f} s   (target <= 2)")
    print(f"ratio: cold {t_cold / 6:.2f} of target, served {t_served / 2:.2f} of target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
