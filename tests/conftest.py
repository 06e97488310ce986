"""Session-wide test set-up.

Prefect reads its settings when it is first imported, so the quiet, fast test
settings (see docs/ARCHITECTURE.md, "Facts about Prefect") are set here, before any
test module imports ``flows``.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)  # tests always use the embedded engine
# the schema template of a temporary server's database goes to a folder of this session, not ~/.cache
os.environ.setdefault("PETCT_RELEASE_CACHE", tempfile.mkdtemp(prefix="petct-test-cache-"))

# ---------------------------------------------------------------------------
# shared fixtures (phantom sites) below

import pytest


@pytest.fixture(scope="session")
def small_phantom():
    """The small head-first phantom (curation.phantom.make_phantom(size="small", seed=0))."""
    from curation.phantom import make_phantom

    return make_phantom(size="small", seed=0)


@pytest.fixture(scope="session")
def small_phantom_ffs():
    """The same phantom scanned feet first (PatientPosition FFS)."""
    from curation.phantom import make_phantom

    return make_phantom(size="small", seed=0, feet_first=True)


@pytest.fixture(scope="session")
def small_study(tmp_path_factory, small_phantom):
    """One Siemens-style study of the small phantom with every decoy; returns its StudyFiles.

    Shared by the session: treat the files as read-only.
    """
    from curation.phantom import write_study

    drop = tmp_path_factory.mktemp("small_study") / "drop"
    return write_study(
        small_phantom, drop, vendor="siemens", seed=1, patient_id="LEI-0001", patient_name="LEI-0001"
    )


@pytest.fixture(scope="session")
def demo_sites(tmp_path_factory):
    """Three small phantom sites (1 good case each plus the rejected ones); returns release.toml.

    ``tests.phantom_helpers.read_manifest(path)`` says what each study must become.
    Shared by the session: treat the folder as read-only (point state_dir/output_dir
    elsewhere or copy the tree when a test writes).
    """
    from curation.phantom import write_demo_sites

    return write_demo_sites(tmp_path_factory.mktemp("demo_sites"), cases_per_site=1, size="small")


@pytest.fixture
def demo_sites_copy(demo_sites, tmp_path):
    """A private copy of the ``demo_sites`` tree for a test that writes state or outputs; returns release.toml."""
    import shutil

    root = tmp_path / "sites"
    shutil.copytree(demo_sites.parent, root, ignore=shutil.ignore_patterns(".petct", "dist"))
    return root / demo_sites.name
