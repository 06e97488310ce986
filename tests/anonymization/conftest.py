"""Fixtures for the gate and leak-scan tests.

``deid_data_dir`` fetches the ``deid-data`` source distribution from PyPI at
test time (real DICOM files that carry names, IDs, birth dates, addresses and
institution data; never committed), and ``dicom_anonymizer_2024b`` the tag lists
of ``dicom-anonymizer`` (PS3.15 2024b), both through :func:`fetch_sdist` (pinned
by sha256) into a cache folder shared by test runs and xdist workers.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from filelock import FileLock
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

DEID_DATA_VERSION = "0.0.20"
DEID_DATA_SHA256 = "33d455f13c82f76a39e8eb52d2808a35d7cde29c120819e246c863432281b8ed"
#: dicom-anonymizer carries PS3.15 2024b Table E.1-1 as lists of tags per basic-profile action
#: (``dicomanonymizer/dicom_anonymization_databases/dicomfields_2024b.py``, identical in 1.0.13.post1 to 2.1.0).
DICOM_ANONYMIZER_VERSION = "2.1.0"
DICOM_ANONYMIZER_SHA256 = "ee8ff2013a960d27c41481a8768612ea6bea1802641b0d3baf8a356867213c47"
DICOM_ANONYMIZER_2024B = "dicomanonymizer/dicom_anonymization_databases/dicomfields_2024b.py"

# pip's words for "the registry cannot be reached" (anything else is a real failure)
_OFFLINE_MARKERS = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No matching distribution found",
    "Could not find a version that satisfies",
    "ProxyError",
    "timed out",
)


def _test_cache() -> Path:
    cache = Path(tempfile.gettempdir()) / "petct-release-test-cache"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def fetch_sdist(cache: Path, project: str, version: str, sha256: str) -> Path:
    """The source distribution of ``project==version`` from PyPI, pinned by its sha256.

    Downloaded with ``pip download --no-deps --no-binary :all:`` into ``cache``
    once (the caller holds a lock); skips the test only when pip cannot reach
    the registry.  Nothing in it is imported or run.
    """

    def found() -> Path | None:
        names = {project, project.replace("-", "_"), project.replace("_", "-")}
        return next((cache / f"{n}-{version}.tar.gz" for n in sorted(names)
                     if (cache / f"{n}-{version}.tar.gz").is_file()), None)

    sdist = found()
    if sdist is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"{project}=={version}", "-d", str(cache), "--disable-pip-version-check"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            output = done.stdout + done.stderr
            if any(marker in output for marker in _OFFLINE_MARKERS):
                pytest.skip(f"pip cannot reach the package registry to fetch {project}: {output.strip()[-300:]}")
            raise RuntimeError(f"pip download of {project} failed:\n{output}")
        sdist = found()
        if sdist is None:
            raise RuntimeError(f"pip download of {project}=={version} left no {project}-{version}.tar.gz in {cache}")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != sha256:
        sdist.unlink()
        raise RuntimeError(f"{sdist.name}: sha256 {digest} is not the pinned {sha256}")
    return sdist


def _fetch_deid_data(cache: Path) -> Path:
    """Download and unpack deid-data into ``cache`` once; return its data folder."""
    data_dir = cache / f"deid-data-{DEID_DATA_VERSION}" / "deid_data" / "data"
    if data_dir.is_dir():
        return data_dir
    sdist = fetch_sdist(cache, "deid-data", DEID_DATA_VERSION, DEID_DATA_SHA256)
    unpack = cache / "unpack.partial"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/deid_data/data/" in m.name and (m.isfile() or m.isdir())]
        tar.extractall(unpack, members=members, filter="data")
    (unpack / f"deid-data-{DEID_DATA_VERSION}").rename(cache / f"deid-data-{DEID_DATA_VERSION}")
    unpack.rmdir()
    return data_dir


@pytest.fixture(scope="session")
def deid_data_dir() -> Path:
    """The unpacked ``deid_data/data`` folder of deid-data (cached across runs)."""
    cache = _test_cache()
    with FileLock(str(cache / "deid-data.lock")):
        return _fetch_deid_data(cache)


@pytest.fixture(scope="session")
def dicom_anonymizer_2024b() -> dict[str, list[tuple[int, ...]]]:
    """dicom-anonymizer's PS3.15 2024b tag lists by action (``X_TAGS``, ``Z_D_TAGS``, ...).

    Read from the pinned sdist with :func:`ast.literal_eval`: the module is never imported.
    A tag is ``(group, element)``, or ``(group, element, group mask, element mask)``
    for the repeating groups (curves 50xx, overlays 60xx).
    """
    cache = _test_cache()
    with FileLock(str(cache / "dicom-anonymizer.lock")):
        sdist = fetch_sdist(cache, "dicom-anonymizer", DICOM_ANONYMIZER_VERSION, DICOM_ANONYMIZER_SHA256)
    member = f"dicom_anonymizer-{DICOM_ANONYMIZER_VERSION}/{DICOM_ANONYMIZER_2024B}"
    with tarfile.open(sdist) as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise RuntimeError(f"{sdist.name}: no {member}")
        source = handle.read().decode("utf-8")
    lists: dict[str, list[tuple[int, ...]]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.endswith("_TAGS") and name != "ALL_TAGS":
                lists[name] = [tuple(t) for t in ast.literal_eval(node.value)]
    return lists


def _read_deid_file(data_dir: Path, relative: str) -> pydicom.Dataset:
    """Read a deid-data header (``x.zip!member`` reads a member of a zip), without pixels."""
    import zipfile

    if "!" in relative:
        archive, member = relative.split("!", 1)
        with zipfile.ZipFile(data_dir / archive) as zf, zf.open(member) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=True)
    return pydicom.dcmread(data_dir / relative, stop_before_pixels=True)


def _clean_dataset() -> Dataset:
    """A CT header as a well-behaved site delivers it (pseudonyms ``SITE-0001``)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1001"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "2.25.1001"
    ds.StudyInstanceUID = "2.25.1002"
    ds.SeriesInstanceUID = "2.25.1003"
    ds.FrameOfReferenceUID = "2.25.1004"
    ds.PatientName = "SITE-0001"
    ds.PatientID = "SITE-0001"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "basic profile"
    ds.PatientSex = "F"
    ds.PatientAge = "061Y"
    ds.PatientWeight = "71.5"
    ds.StudyDate = "20210304"
    ds.StudyTime = "101500"
    ds.Modality = "CT"
    ds.SeriesDescription = "CT WB 3mm"
    ds.Manufacturer = "SIEMENS"
    ds.StationName = "CT01"
    ds.BurnedInAnnotation = "NO"
    return ds


@pytest.fixture
def make_clean_ds() -> Callable[[], Dataset]:
    """Factory of fresh clean CT headers (they pass the gate with the pattern ``^SITE-\\d{4}$``)."""
    return _clean_dataset


@pytest.fixture(scope="session")
def read_deid(deid_data_dir: Path) -> Callable[[str], pydicom.Dataset]:
    """Read a deid-data header by relative path (``x.zip!member`` for a zip member)."""
    return lambda relative: _read_deid_file(deid_data_dir, relative)


@pytest.fixture
def clean_ds() -> Dataset:
    """One fresh clean CT header (see ``make_clean_ds``)."""
    return _clean_dataset()
