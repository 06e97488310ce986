"""Cost follows change: indexing an unchanged estate of DICOM files against hashing it all.

Writes an estate of small DICOM files (``--files``, at least 20,000: 16x16 CT
slices, 50 per series, two series per study), waits until every file is older
than the stat cache's racy window (:data:`curation.statcache.RACY_SECONDS`),
then times, each in turn and several times:

* full: :func:`curation.dicomindex.index_site` with ``rehash=True`` (every file
  read, hashed and parsed; the stat cache rewritten);
* no-op: the same with the stat cache of the previous run (no file read).

Prints each repetition, then the medians per 10,000 files side by side; the
last line is the ratio (target: the no-op index under 1 s per 10,000 files).

Usage::

    .venv/bin/python benchmarks/index_estate.py [--files 20000] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation import dicomindex, statcache  # noqa: E402

PER_SERIES = 50


def _template() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName = "ESTATE^BENCH"
    ds.StudyDate = "20240101"
    ds.SeriesDescription = "estate"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(256, dtype=np.uint16).tobytes()
    return ds


def write_estate(root: Path, files: int) -> int:
    """``files`` small DICOM files under ``root`` (studies/series folders); returns how many."""
    ds = _template()
    written = 0
    study = 0
    while written < files:
        ds.StudyInstanceUID = generate_uid()
        ds.PatientID = f"EST-{study:05d}"
        for series in range(2):
            ds.SeriesInstanceUID = generate_uid()
            ds.SeriesNumber = series + 1
            folder = root / f"study{study:05d}" / f"series{series}"
            folder.mkdir(parents=True)
            for k in range(PER_SERIES):
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.InstanceNumber = k + 1
                ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
                written += 1
        study += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="estate folder to keep and reuse")
    args = parser.parse_args(argv)
    if args.files < 20_000:
        parser.error("--files must be at least 20,000 (the issue's estate)")
    logging.basicConfig(level=logging.WARNING)

    work = args.keep or Path(tempfile.mkdtemp(prefix="petct-estate-"))
    drop, cache = work / "drop", work / "state" / "stat-cache.json"
    try:
        if not drop.is_dir():
            started = time.perf_counter()
            count = write_estate(drop, args.files)
            print(f"estate: {count} files written in {time.perf_counter() - started:.0f} s")
            time.sleep(statcache.RACY_SECONDS + 0.5)  # every file settled: none is racy
        full, noop = [], []
        for rep in range(args.repeats):
            started = time.perf_counter()
            index = dicomindex.index_site("estate", drop, cache=cache, rehash=True)
            full.append(time.perf_counter() - started)
            files, read = dicomindex.LAST_TIMING.files, dicomindex.LAST_TIMING.files_read
            assert read == files, (read, files)
            started = time.perf_counter()
            again = dicomindex.index_site("estate", drop, cache=cache)
            noop.append(time.perf_counter() - started)
            assert again == index and dicomindex.LAST_TIMING.files_read == 0
            print(f"rep {rep + 1}: {files} files, {len(index.studies)} studies; full hash {full[-1]:.2f} s, "
                  f"no-op {noop[-1]:.2f} s (0 files read)")
        per = 10_000 / files
        full_10k, noop_10k = statistics.median(full) * per, statistics.median(noop) * per
        print(f"per 10,000 files (median of {args.repeats}): full hash {full_10k:.2f} s, no-op index {noop_10k:.2f} s")
        print(f"no-op index {noop_10k:.2f} s per 10,000 files (target < 1 s) beside full hash {full_10k:.2f} s: "
              f"ratio full/no-op {full_10k / noop_10k:.1f}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
