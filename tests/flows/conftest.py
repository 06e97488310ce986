"""Fixtures for the flow tests: one Prefect test server and one curated demo per session.

The whole pipeline on the phantom sites is the expensive part of the suite, so
it runs once per session (``curated_demo``) and the tests that only read its
results share it.  Tests that must run the pipeline in their own folder (kill
and resume, Dask) compare their zip with this one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from curation.atomic import sha256_file
from curation.config import Config, load_config
from curation.state import StatePaths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A temporary Prefect server (SQLite in a temporary folder) for the session.

    Flows run in this process report to it; subprocesses get its URL so they do
    not start servers of their own.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@dataclass(frozen=True)
class CuratedDemo:
    """The phantom sites after one ``curate`` run with the threads runner."""

    root: Path
    config_path: Path
    config: Config
    state: StatePaths
    summary: object  # flows.flows.RunSummary
    zip_path: Path
    zip_sha256: str  # of the zip right after the first run
    zip_mtime_ns: int


def write_demo_config(root: Path, **execution: object) -> Path:
    """Write the three small phantom sites into ``root``; set ``[execution]`` keys.

    Returns the config path.  The same seed gives the same DICOM (and so the
    same release bytes) whatever the folder.
    """
    from curation.phantom import write_demo_sites

    config_path = Path(write_demo_sites(root, cases_per_site=1, size="small"))
    if execution:
        text = config_path.read_text(encoding="utf-8")
        lines = "".join(f"{key} = {_toml(value)}\n" for key, value in execution.items())
        # Replace the [execution] table (the demo writes one) or add it.
        pattern = re.compile(r"^\[execution\]\n(?:(?!\[).*\n)*", re.MULTILINE)
        if pattern.search(text):
            text = pattern.sub(lambda _: f"[execution]\n{lines}\n", text, count=1)
        else:
            text += f"\n[execution]\n{lines}"
        config_path.write_text(text, encoding="utf-8")
    return config_path


def use_parts(config_path: Path, max_part_size: str) -> None:
    """Switch a demo config to ``packaging = "parts"`` with ``max_part_size``."""
    text = config_path.read_text(encoding="utf-8")
    old = 'packaging = "single"\nmax_part_size = "50GB"\n'
    assert old in text, "the demo config writes the packaging keys at their defaults"
    config_path.write_text(text.replace(old, f'packaging = "parts"\nmax_part_size = "{max_part_size}"\n'),
                           encoding="utf-8")


def copy_demo(demo: CuratedDemo, root: Path) -> Path:
    """A private copy of the curated demo folder (state, drops, zip) under ``root``; returns its config path.

    The copy's records name the prepared volumes of the original state folder,
    which the copy reads and never writes (they are unchanged, so nothing is prepared again).
    """
    shutil.copytree(demo.root, root, symlinks=True)
    return root / demo.config_path.relative_to(demo.root)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="session")
def curated_demo(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> CuratedDemo:
    """Run ``curate`` once on the small phantom sites (threads runner, 2 workers)."""
    from flows.flows import run_curate

    root = tmp_path_factory.mktemp("curated-demo")
    config_path = write_demo_config(root, runner="threads", workers=2)
    summary = run_curate(str(config_path))
    config = load_config(config_path)
    assert summary.zip_path, f"curate built no zip: {summary}"
    zip_path = Path(summary.zip_path)
    return CuratedDemo(
        root=root,
        config_path=config_path,
        config=config,
        state=StatePaths(config.release.state_dir),
        summary=summary,
        zip_path=zip_path,
        zip_sha256=sha256_file(zip_path),
        zip_mtime_ns=zip_path.stat().st_mtime_ns,
    )


def run_python(code: str, *args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` from the repository with ``env``."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
