"""Mutation fuzzing of site deliveries through the index, the gate and ingest.

Shared by ``tests/anonymization/test_fuzz_hostile.py`` (a short campaign in
the normal suite) and ``benchmarks/fuzz.py`` (longer campaigns).  Sources:

* a tiny phantom study (6 CT and 4 PET slices of the small phantom, cropped
  from :func:`curation.phantom.write_study`), copied once per fuzzed study
  with its own UIDs, a few of its files mutated;
* the DICOM files that ship inside pydicom's wheel
  (``pydicom.data.get_testdata_files()``);
* deid-data's files (real identified headers), when a folder is given.

Mutations (deterministic for a seed): bit flips (mostly in the header),
truncation, an element's value swapped for a hostile one (``"ab"``,
``"../x"``, ``"\\x00"``, huge numbers, a long string, non-ASCII...), an
element re-encoded with a wrong VR, deleted elements, huge Rows/Columns/
NumberOfFrames, a deflate bomb (a Deflated dataset inflating to 24 MiB), and
two valid re-encodings (Deflated, Implicit VR) that must still convert.

Every mutated file must end as a skipped file of the index, or as a file of a
study that was converted or rejected with a reason code; the gate is also run
on every mutated file that can be read.  Any exception escaping
:func:`~curation.dicomindex.index_site`,
:func:`~anonymization.gate.check_datasets` or
:func:`~curation.ingest.ingest_study` is counted as ``uncaught`` (the campaign
carries on and records where).
"""

from __future__ import annotations

import io
import logging
import resource
import shutil
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from anonymization.gate import check_datasets
from curation.config import MissingHeadPolicy, SiteConfig
from curation.dicomfile import READ_ERRORS, read_dicom_file
from curation.dicomindex import index_site
from curation.errors import CurationError
from curation.ingest import ingest_study
from curation.model import ConvertedCase, Rejection
from curation.state import StatePaths

HOSTILE_VALUES: tuple[bytes, ...] = (
    b"ab", b"../x", b"../siteB/1.2.3", b"\x00", b"", b"-1", b"0", b"65535", b"4294967296",
    b"99999999999999999999999999", b"1e999", b"-1e999", b"nan", b"inf", b"\xff\xfe\xfd\xfc", "ä".encode("latin-1"),
    "Müller^Jörg".encode(), b"1.2..3", b"01.2.3", b"\\\\\\", b"A" * 5000, b"1\\2\\3\\4\\5\\6\\7",
    b"MUELLER^HANS", b" ", b"1.2.840.10008.1.2.1.99", b"YES", b"NO",
)
#: Elements the pipeline reads: where a hostile value is most likely to matter.
TARGET_TAGS: tuple[int, ...] = tuple(
    int(Tag(k)) for k in (
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "SOPClassUID",
        "Modality", "SeriesNumber", "InstanceNumber", "ImageType", "CorrectedImage", "Units",
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "NumberOfSlices",
        "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
        "PhotometricInterpretation", "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "PixelData",
        "PatientName", "PatientID", "PatientIdentityRemoved", "BurnedInAnnotation", "SpecificCharacterSet",
        "SeriesDescription", "StudyDate", "AcquisitionTime", "PatientWeight", "DecayCorrection",
        "RadiopharmaceuticalInformationSequence", "AccessionNumber", "PatientBirthDate",
    )
)
_VRS = ("US", "SS", "UL", "DS", "IS", "UI", "PN", "LO", "CS", "OB", "UN", "FD", "AT", "SQ", "DA")
BOMB_MIB = 24  # above curation.dicomfile.MAX_HEADER_BYTES plus a phantom slice


@dataclass
class Tally:
    """What a campaign did: files, outcomes and the uncaught exceptions (with where they happened)."""

    files: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    gate: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    uncaught: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mib: float = 0.0


# ---------------------------------------------------------------------------
# sources


def tiny_phantom_study(folder: Path) -> list[Path]:
    """6 CT and 4 PET slices (contiguous) of a small-phantom study: a study that converts, quickly."""
    from curation.phantom import make_phantom, write_study

    phantom = make_phantom(size="small", seed=0)
    study = write_study(phantom, folder / "full", vendor="siemens", seed=7, patient_id="FUZ-0001",
                        patient_name="FUZ-0001", decoys=False)
    kept = []
    for role, count in (("ct", 6), ("pt", 4)):
        by_z = sorted(study.files[role], key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                              .ImagePositionPatient[2]))
        middle = len(by_z) // 2
        for n, path in enumerate(by_z[middle : middle + count]):
            ds = pydicom.dcmread(path)
            if "NumberOfSlices" in ds:
                ds.NumberOfSlices = count
            target = folder / "base" / f"{role}{n}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            kept.append(target)
    shutil.rmtree(folder / "full")
    return kept


def pydicom_sources(max_bytes: int) -> list[Path]:
    """The files of pydicom's own test data that ship in its wheel, up to ``max_bytes`` each."""
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = get_testdata_files()
    return sorted(p for p in map(Path, files) if p.is_file() and p.stat().st_size <= max_bytes)


def deid_sources(deid_dir: Path | None, max_bytes: int) -> list[Path]:
    """deid-data's DICOM files (not its zips), up to ``max_bytes`` each."""
    if deid_dir is None:
        return []
    return sorted(p for p in Path(deid_dir).rglob("*.dcm") if p.stat().st_size <= max_bytes)


# ---------------------------------------------------------------------------
# mutations


def _parse(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _write(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _pick_tag(ds: Dataset, rng: np.random.Generator) -> int:
    present = [int(t) for t in ds.keys()]  # noqa: SIM118 (iterating converts elements)
    if present and rng.random() < 0.4:
        return int(rng.choice(present))
    return int(rng.choice(TARGET_TAGS))


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _set_raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def flip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 17))):
        span = min(len(out), 2048) if rng.random() < 0.7 else len(out)
        at = int(rng.integers(0, max(span, 1)))
        if at < len(out):
            out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, max(len(data), 1)))]


def swap_value(data: bytes, rng: np.random.Generator) -> bytes:
    ds = _parse(data)
    tag = _pick_tag(ds, rng)
    _set_raw(ds, tag, _vr_of(tag), HOSTILE_VALUES[int(rng.integers(0, len(HOSTILE_VALUES)))])
    return _write(ds)


def wrong_vr(data: bytes, rng: np.random.Generator) -> bytes:
    ds = _parse(data)
    tag = _pick_tag(ds, rng)
    vr = _VRS[int(rng.integers(0, len(_VRS)))]
    value = rng.integers(0, 256, int(rng.integers(0, 17)), dtype=np.uint8).tobytes()
    if rng.random() < 0.5:
        value = HOSTILE_VALUES[int(rng.integers(0, len(HOSTILE_VALUES)))]
    _set_raw(ds, tag, vr, value)
    return _write(ds)


def delete(data: bytes, rng: np.random.Generator) -> bytes:
    ds = _parse(data)
    for _ in range(int(rng.integers(1, 4))):
        present = [int(t) for t in ds.keys()]  # noqa: SIM118 (iterating converts elements)
        targets = [t for t in TARGET_TAGS if t in present]
        pool = targets if targets and rng.random() < 0.7 else present
        if pool:
            del ds[int(rng.choice(pool))]
    return _write(ds)


def huge_dims(data: bytes, rng: np.random.Generator) -> bytes:
    ds = _parse(data)
    choice = int(rng.integers(0, 4))
    if choice == 0:
        _set_raw(ds, 0x00280010, "US", (65535).to_bytes(2, "little"))
        _set_raw(ds, 0x00280011, "US", (65535).to_bytes(2, "little"))
    elif choice == 1:
        _set_raw(ds, 0x00280008, "IS", b"100000")
    elif choice == 2:
        _set_raw(ds, 0x00280010, "US", b"\x00\x00")
    else:
        _set_raw(ds, 0x00280100, "US", (64).to_bytes(2, "little"))
        _set_raw(ds, 0x00280002, "US", (255).to_bytes(2, "little"))
    return _write(ds)


class _BombParts:
    """A deflate stream of BOMB_MIB MiB of zeros, compressed once and appended to every bomb."""

    zeros: bytes | None = None

    @classmethod
    def tail(cls) -> bytes:
        if cls.zeros is None:
            packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            chunk = bytes(16 << 20)
            parts = [packer.compress(chunk) for _ in range(BOMB_MIB // 16)]
            cls.zeros = b"".join(parts) + packer.flush()
        return cls.zeros


def deflate_bomb(data: bytes, rng: np.random.Generator) -> bytes:
    ds = _parse(data)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    plain = io.BytesIO()
    ds.save_as(plain, implicit_vr=False, little_endian=True, enforce_file_format=False)
    whole = plain.getvalue()
    # where the dataset starts: after the file meta (group 0002) of what pydicom just wrote
    start = 132 + 12 + int.from_bytes(whole[140:144], "little")
    head = whole[:start]
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(whole[start:]) + packer.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, not final
    return head + body + _BombParts.tail()


def reencode_deflated(data: bytes, rng: np.random.Generator) -> bytes:
    ds = _parse(data)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def reencode_implicit(data: bytes, rng: np.random.Generator) -> bytes:
    ds = _parse(data)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "flip": flip,
    "truncate": truncate,
    "swap-value": swap_value,
    "wrong-vr": wrong_vr,
    "delete": delete,
    "huge-dims": huge_dims,
    "deflate-bomb": deflate_bomb,
    "deflated": reencode_deflated,
    "implicit-vr": reencode_implicit,
}
#: relative frequency of each mutation
_WEIGHTS = {"flip": 4, "truncate": 2, "swap-value": 6, "wrong-vr": 3, "delete": 3, "huge-dims": 1,
            "deflate-bomb": 0.3, "deflated": 1, "implicit-vr": 1}


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """Apply one to three mutations; (their names joined by ``+``, the mutated bytes)."""
    names = list(_WEIGHTS)
    weights = np.array([_WEIGHTS[n] for n in names], dtype=float)
    applied = []
    for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = MUTATIONS[name](data, rng)
        except Exception:  # a mutation pydicom cannot write: a byte flip instead
            name = "flip"
            data = flip(data, rng)
        applied.append(name)
        if name == "deflate-bomb":
            break  # nothing to add after a bomb
    return "+".join(applied), data


# ---------------------------------------------------------------------------
# the campaign


def _site(root: Path) -> SiteConfig:
    return SiteConfig(
        id="fuzz", dicom_dir=root / "drop", segmentations_dir=root / "seg", lesions_dir=None,
        license="CC-BY-4.0", deface=False, indication="fuzz", clinical_sheet=None, pseudonym_pattern="",
        deface_missing_head=MissingHeadPolicy.HOLD,
    )


def _new_uids(data: bytes, originals: list[bytes], study: int) -> bytes:
    """The base study's UIDs replaced by same-length UIDs of fuzzed study ``study``."""
    for original in originals:
        tag = f"{study:06d}".encode()
        data = data.replace(original, original[: -len(tag)] + tag)
    return data


def _gate(ds: Dataset) -> str:
    """The gate's verdict on one dataset: passed, findings, or an element it cannot decode."""
    try:
        report = check_datasets([ds])
    except CurationError as exc:
        return f"rejected:{exc.reason.value}"
    return "findings" if report.findings else "passed"


def _catching(tally: Tally, where: str, call: Callable[[], object]) -> object | None:
    try:
        return call()
    except Exception as exc:  # the point: count what escapes, carry on
        tally.uncaught.append(f"{where}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}")
        return None


def run_campaign(work: Path, *, files: int, seed: int, deid_dir: Path | None = None,
                 max_source_bytes: int = 1 << 20, per_study: int = 4) -> Tally:
    """Write about ``files`` mutated files under ``work`` and run them through index, gate and ingest.

    Parameters
    ----------
    work
        An empty folder (the drop, the state and the base study go there).
    files
        How many mutated files to write (half from the phantom study, half
        from pydicom's and deid-data's files).
    seed
        Makes every mutation reproducible.
    deid_dir
        deid-data's ``data`` folder, or None.
    max_source_bytes
        Real files larger than this are not used (mutated copies are written).
    per_study
        Mutated files per fuzzed phantom study (its other files stay intact).

    Returns
    -------
    Tally
    """
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    tally = Tally()
    work = Path(work)
    drop = work / "drop"
    base = tiny_phantom_study(work / "source")
    base_bytes = [p.read_bytes() for p in base]
    first = pydicom.dcmread(base[0], stop_before_pixels=True)
    last = pydicom.dcmread(base[-1], stop_before_pixels=True)
    originals = sorted({str(first.StudyInstanceUID).encode(), str(first.SeriesInstanceUID).encode(),
                        str(last.SeriesInstanceUID).encode(), str(first.FrameOfReferenceUID).encode()})
    real = [*pydicom_sources(max_source_bytes), *deid_sources(deid_dir, max_source_bytes)]
    real_bytes = [p.read_bytes() for p in real]
    rng = np.random.default_rng(seed)
    mutated: dict[Path, str] = {}  # path -> mutation

    phantom_files = files // 2
    study = 0
    while len(mutated) < phantom_files:
        study += 1
        folder = drop / f"phantom-{study:05d}"
        folder.mkdir(parents=True)
        chosen = set(rng.choice(len(base), size=min(per_study, phantom_files - len(mutated)), replace=False).tolist())
        for k, data in enumerate(base_bytes):
            data = _new_uids(data, originals, study)
            path = folder / f"{k:02d}.dcm"
            if k in chosen:
                name, data = mutate(data, rng)
                mutated[path] = name
            path.write_bytes(data)
    n = 0
    while len(mutated) < files:
        source = int(rng.integers(0, len(real)))
        name, data = mutate(real_bytes[source], rng)
        path = drop / "real" / f"{n:05d}-{real[source].name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        mutated[path] = name
        n += 1
    tally.files = len(mutated)
    tally.mutations.update(name.split("+")[0] for name in mutated.values())

    # the gate, on every mutated file the pipeline's reader reads (as the study it would be alone)
    for path in mutated:
        try:
            ds = read_dicom_file(path, stop_before_pixels=True)
        except (*READ_ERRORS, MemoryError):  # not the gate's input: counted, not a finding
            tally.gate["unreadable"] += 1
            continue
        report = _catching(tally, f"gate {path.name}", lambda ds=ds: _gate(ds))
        if report is not None:
            tally.gate[report] += 1  # type: ignore[index]

    index = _catching(tally, "index_site", lambda: index_site("fuzz", drop))
    if index is None:
        tally.seconds = time.perf_counter() - started
        return tally
    skipped = {Path(s.path) for s in index.skipped}  # type: ignore[attr-defined]
    site, state = _site(work), StatePaths(work / "state")
    outcome_of_file: dict[Path, str] = {}
    for record in index.studies:  # type: ignore[attr-defined]
        outcome = _catching(tally, f"ingest_study {record.key}", lambda r=record: ingest_study(r, site, state))
        if isinstance(outcome, ConvertedCase):
            label = "converted"
        elif isinstance(outcome, Rejection):
            label = f"rejected:{outcome.reason.value}"
        else:
            label = "uncaught"
        for series in record.series:
            for name in series.files:
                outcome_of_file[Path(name)] = label
    for path in mutated:
        tally.outcomes["skipped" if path.absolute() in skipped or path in skipped
                       else outcome_of_file.get(path.absolute(), "lost")] += 1
    tally.seconds = time.perf_counter() - started
    tally.peak_rss_mib = _peak_rss_mib()
    return tally


def _peak_rss_mib() -> float:
    """This process's own peak RSS (MiB).

    ``VmHWM`` of ``/proc/self/status`` belongs to the process's own memory map;
    ``ru_maxrss`` also counts the parent's RSS at fork time (Linux carries it
    across exec), so a campaign started by a test worker that holds 1 GiB
    would report 1 GiB whatever the campaign used.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
