"""Our ingest against ``dcm2niix`` at its fastest gzip level, on the same study: time, and output size.

Writes one ``make_phantom(size="bench")`` study (320 CT slices of 512x512 and
205 PET slices of 200x200, no decoys), then alternates, several times:

* ours: :func:`curation.ingest.ingest_study` into a fresh state folder: read
  each selected file once, de-identification gate, geometry QA, CT and PET
  conversion, metadata, outcome (exactly what ``petct-release ingest`` does per
  study), and also with :func:`curation.dicomindex.index_site` in front (the
  whole equivalent of dcm2niix's own folder scan);
* ``dcm2niix -z y -1``: the wheel's binary at its fastest gzip level, the
  time to beat.

Once, ``dcm2niix -z y`` (its default gzip level, 6) gives the size to compare
ours with.  Then the same study re-encoded to JPEG-LS Lossless and to JPEG 2000
Lossless (:mod:`curation.phantom.encode`; pyjpegls and pylibjpeg-openjpeg
encode, the same plugins decode in ours): ours against ``dcm2niix -z y -1`` on
the same compressed files.

Prints each repetition, the sizes, the compressed runs' ratios, then the ratios
of the uncompressed study side by side, the last line being ours/dcm2niix
(targets: time <= 1.0, size <= 1.15).  The voxels are compared with dcm2niix's
by ``tests/curation/test_convert.py``.

    .venv/bin/python benchmarks/convert_vs_dcm2niix.py [--repeats 5] [--keep DIR] [--encodings jpeg-ls,jpeg-2000]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import dcm2niix

from curation import nifti
from curation.config import MissingHeadPolicy, SiteConfig
from curation.dicomindex import index_site
from curation.ingest import ingest_study
from curation.model import ConvertedCase
from curation.phantom import make_phantom, write_study
from curation.phantom.encode import ENCODINGS, recode_study
from curation.state import StatePaths


def _site(dicom_dir: Path) -> SiteConfig:
    return SiteConfig(
        id="bench",
        dicom_dir=dicom_dir,
        segmentations_dir=dicom_dir,
        lesions_dir=None,
        license="CC-BY-4.0",
        deface=False,
        indication="benchmark",
        clinical_sheet=None,
        pseudonym_pattern="",
        deface_missing_head=MissingHeadPolicy.HOLD,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _dcm2niix(dicom_dir: Path, out: Path, *flags: str) -> tuple[float, float, int]:
    """Wall and CPU seconds of one dcm2niix run and the bytes of the .nii.gz it wrote."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run([dcm2niix.bin, *flags, "-o", str(out), str(dicom_dir)], check=True, capture_output=True)
    seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu
    size = sum(p.stat().st_size for p in out.glob("*.nii.gz"))
    shutil.rmtree(out)
    return seconds, cpu, size


def _study_files(dicom_dir: Path) -> SimpleNamespace:
    """What recode_study reads of a study (root, files by role) for the study already in ``dicom_dir``."""
    (study,) = index_site("bench", dicom_dir).studies
    files = {s.Modality.lower(): tuple(Path(f) for f in s.files) for s in study.series}
    return SimpleNamespace(root=dicom_dir, files=files)


def _compressed_run(work: Path, dicom_dir: Path, encoding: str, site: SiteConfig, repeats: int) -> float | None:
    """Re-encode the study to ``encoding``, then time ours against ``dcm2niix -z y -1``; the median ratio."""
    encoded_dir = work / f"dicom-{encoding}"
    if not encoded_dir.is_dir():
        started = time.perf_counter()
        recode_study(_study_files(dicom_dir), encoded_dir, encoding)
        print(f"{encoding}: re-encoded in {time.perf_counter() - started:.1f} s")
    (study,) = index_site("bench", encoded_dir).studies
    size_mb = sum(Path(f).stat().st_size for s in study.series for f in s.files) / 1e6
    print(f"{encoding}: {size_mb:.0f} MB of {ENCODINGS[encoding][0]} DICOM")
    ours, theirs = [], []
    for rep in range(repeats):
        state = StatePaths(work / f"state-{encoding}-{rep}")
        started = time.perf_counter()
        outcome = ingest_study(study, site, state)
        ours.append(time.perf_counter() - started)
        if not isinstance(outcome, ConvertedCase):
            print(f"ingest rejected the {encoding} study: {outcome.reason}: {outcome.message}")
            return None
        seconds, _, _ = _dcm2niix(encoded_dir, work / f"dcm2niix-{encoding}-{rep}", "-z", "y", "-1")
        theirs.append(seconds)
        print(f"{encoding} rep {rep + 1}: ours {ours[-1]:.2f} s, dcm2niix -z y -1 {theirs[-1]:.2f} s")
        shutil.rmtree(state.root)
    return statistics.median(ours) / statistics.median(theirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    parser.add_argument(
        "--gzip-level",
        type=int,
        default=nifti.GZIP_LEVEL,
        help=f"our ISA-L level (default {nifti.GZIP_LEVEL}, what ingest uses; 0-2: 3 is CPU-dependent)",
    )
    parser.add_argument("--encodings", default="jpeg-ls,jpeg-2000",
                        help="compressed runs, names of curation.phantom.encode.ENCODINGS ('' for none)")
    args = parser.parse_args(argv)
    encodings = [e for e in args.encodings.split(",") if e]
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        parser.error(f"--encodings: {unknown} not in {', '.join(ENCODINGS)}")
    logging.basicConfig(level=logging.WARNING)
    nifti.GZIP_LEVEL = args.gzip_level  # a what-if: ingest itself never changes it

    work = args.keep or Path(tempfile.mkdtemp(prefix="petct-bench-"))
    dicom_dir = work / "dicom"
    try:
        if not dicom_dir.is_dir():
            phantom = make_phantom(size="bench", seed=0, feet_first=False)
            write_study(phantom, dicom_dir, vendor="siemens", seed=0, patient_id="BENCH-0001",
                        patient_name="BENCH-0001", decoys=False)
        index = index_site("bench", dicom_dir)
        (study,) = index.studies
        counts = {s.Modality: len(s.files) for s in study.series}
        size_mb = sum(Path(f).stat().st_size for s in study.series for f in s.files) / 1e6
        print(f"study: {counts} slices, {size_mb:.0f} MB of DICOM in {dicom_dir}; our ISA-L level {nifti.GZIP_LEVEL}")
        site = _site(dicom_dir)

        ours, ours_indexed, theirs, ours_cpu, theirs_cpu = [], [], [], [], []
        ours_bytes = 0
        for rep in range(args.repeats):
            state = StatePaths(work / f"state-{rep}")
            # CPU of every thread of ours (and of any child process, reaped by then)
            cpu, started = time.process_time() + _children_cpu(), time.perf_counter()
            outcome = ingest_study(study, site, state)
            ours.append(time.perf_counter() - started)
            ours_cpu.append(time.process_time() + _children_cpu() - cpu)
            if not isinstance(outcome, ConvertedCase):
                print(f"ingest rejected the benchmark study: {outcome.reason}: {outcome.message}")
                return 1
            ours_bytes = sum(Path(image.path).stat().st_size for image in (outcome.ct, outcome.pt))

            state = StatePaths(work / f"state-{rep}-indexed")
            started = time.perf_counter()
            for indexed in index_site("bench", dicom_dir).studies:
                ingest_study(indexed, site, state)
            ours_indexed.append(time.perf_counter() - started)

            seconds, cpu, fastest_bytes = _dcm2niix(dicom_dir, work / f"dcm2niix-{rep}", "-z", "y", "-1")
            theirs.append(seconds)
            theirs_cpu.append(cpu)
            print(
                f"rep {rep + 1}: ours {ours[-1]:.2f} s ({ours_cpu[-1]:.2f} s CPU), index+ours {ours_indexed[-1]:.2f} s, "
                f"dcm2niix -z y -1 {theirs[-1]:.2f} s ({theirs_cpu[-1]:.2f} s CPU)"
            )
            shutil.rmtree(work / f"state-{rep}")
            shutil.rmtree(work / f"state-{rep}-indexed")
        default_seconds, _, default_bytes = _dcm2niix(dicom_dir, work / "dcm2niix-default", "-z", "y")

        ratios = {}
        for encoding in encodings:
            ratios[encoding] = _compressed_run(work, dicom_dir, encoding, site, args.repeats)
            if ratios[encoding] is None:
                return 1
        for encoding, value in ratios.items():
            print(f"median wall-time ratio ours/dcm2niix -z y -1 on {encoding} files: {value:.2f}")

        med = statistics.median
        print(f"output: ours {ours_bytes / 1e6:.1f} MB; dcm2niix -z y {default_bytes / 1e6:.1f} MB "
              f"({default_seconds:.2f} s); dcm2niix -z y -1 {fastest_bytes / 1e6:.1f} MB")
        print(f"median ours {med(ours):.2f} s, index+ours {med(ours_indexed):.2f} s, dcm2niix -z y -1 {med(theirs):.2f} s")
        print(f"median wall-time ratio (index + ours)/(dcm2niix -z y -1): {med(ours_indexed) / med(theirs):.2f}")
        print(f"median CPU-time ratio ours/(dcm2niix -z y -1): {med(ours_cpu) / med(theirs_cpu):.2f} "
              f"({med(ours_cpu):.2f} s vs {med(theirs_cpu):.2f} s; ours on two cores: the conversions run in "
              "threads beside the header reading and the gate)")
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores)")
        print(f"ours/dcm2niix: time {med(ours) / med(theirs):.2f} vs -z y -1 (target <= 1.0), "
              f"size {ours_bytes / default_bytes:.3f} vs -z y (target <= 1.15)")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
