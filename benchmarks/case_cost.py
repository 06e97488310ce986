"""What one clinical-size case costs end to end, stage by stage, against ``dcm2niix -z y -1``.

Writes one whole-body study at clinical sampling (``make_phantom(size="bench")``
with its label maps: CT 512x512x320, PET 200x200x205, seven category maps on
the CT grid and a lesion mask), then runs the stages one after the other, each
in a process of its own (as a worker runs it; imports done before the clock
starts, those a stage makes when first used too), and prints each stage's wall time, CPU time and peak RSS:

* index: :func:`curation.dicomindex.index_site` (a first run: every file read and hashed);
* ingest: gate, QA, conversion (:func:`curation.ingest.ingest_study`);
* prepare: label maps, lesion, defacing (:func:`curation.prepare.prepare_case`);
* package: spreadsheets, card, checksums, zip (:func:`release.assemble.assemble_release`);
* verify: checks and leak scan in one pass over each member (:mod:`release.verify`), the
  chunks on ``--workers`` processes as a run's workers take them.

Beside it, in the same run, the wheel's ``dcm2niix -z y -1`` (its fastest gzip level)
converts the same study.  The last line is the ratio of the case's total to
dcm2niix's time (target: 4 on 2 cores) and the largest peak RSS (target: 1 GiB).

Usage::

    .venv/bin/python benchmarks/case_cost.py [--repeat N] [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("index", "ingest", "prepare", "package", "verify")


def _config(work: Path) -> tuple[object, object]:
    from curation.config import (
        Config,
        DefacingSettings,
        ExecutionSettings,
        MissingHeadPolicy,
        ReleaseSettings,
        ScheduleSettings,
        SiteConfig,
    )

    study = work.parent / "study"  # the runs share the study written once
    site = SiteConfig("site", study / "drop", study / "seg", study / "lesions", "CC-BY-4.0", True, "benchmark",
                      None, "", MissingHeadPolicy.HOLD)
    config = Config(work / "release.toml",
                    ReleaseSettings("bench", "1.0.0", work / "dist", work / "state", "builtin:enhance-pet"),
                    DefacingSettings(), ExecutionSettings(), ScheduleSettings(), (site,))
    return config, site


def _maxrss_mb(who: int) -> float:
    """Peak RSS in MB: this process's own (VmHWM: ru_maxrss would count the parent's at fork), or its children's."""
    if who == resource.RUSAGE_SELF:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(who).ru_maxrss / 1024.0


def run_stage(stage: str, work: Path, workers: int) -> dict[str, float]:
    """Run one stage in this process on the files of ``work``; its wall and CPU seconds and peak RSS."""
    from concurrent.futures import ProcessPoolExecutor

    from curation.dicomindex import index_site
    from curation.ingest import ingest_study
    from curation.labels import load_release_labels, release_source_table
    from curation.model import ConvertedCase, PreparedCase
    from curation.prepare import prepare_case
    from curation.state import StatePaths
    from release.assemble import ReleaseEntry, assemble_release
    from release.verify import finish_verify, plan_verify, verify_chunk

    _import_what_the_stage_imports_when_used(stage)
    config, site = _config(work)
    state = StatePaths(config.release.state_dir)
    labels = load_release_labels(config.release.labels)
    source = release_source_table(labels)  # the phantom's release-named maps hold release values
    pool = ProcessPoolExecutor(workers) if stage == "verify" else None
    if pool is not None:  # workers started and warm before the clock, as a run's are
        list(pool.map(_warm, range(workers)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, cpu = time.perf_counter(), time.process_time()
    if stage == "index":
        (record,) = index_site(site.id, site.dicom_dir, cache=state.stat_cache(site.id)).studies
        _save(work, "record", record)
    elif stage == "ingest":
        case = ingest_study(_load(work, "record"), site, state)
        assert isinstance(case, ConvertedCase), case
        _save(work, "case", case)
    elif stage == "prepare":
        prepared = prepare_case(_load(work, "case"), site, state, defacing=config.defacing,
                                release_labels=labels, source_table=source)
        assert isinstance(prepared, PreparedCase), prepared
        _save(work, "prepared", prepared)
    elif stage == "package":
        entry = ReleaseEntry(1, _load(work, "prepared"), _load(work, "case"), "benchmark", site.license)
        result = assemble_release(config, [entry], labels, pipeline_version="benchmark")
        _save(work, "zip", result.zip_path)
    elif stage == "verify":
        plan = plan_verify(Path(_load(work, "zip")), state_dir=state.root, chunks=2 * workers)
        results = list(pool.map(verify_chunk, [plan.job(i) for i in range(len(plan.chunks))]))
        report = finish_verify(plan, results)
        assert report.ok, report.problems
    seconds, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if pool is not None:
        pool.shutdown()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # verify's pool
    children_cpu = children.ru_utime + children.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": seconds, "cpu": cpu + children_cpu,
            "maxrss_mb": max(_maxrss_mb(resource.RUSAGE_SELF), _maxrss_mb(resource.RUSAGE_CHILDREN))}


def _import_what_the_stage_imports_when_used(stage: str) -> None:
    """Import before the clock what a stage imports only when it first needs it.

    The commands import dicom2nifti, scikit-image and openpyxl where they are used, so
    starting a flow does not pay for them (issue 14); a worker pays once, for its first
    case, not per case (dicom2nifti with SciPy: 0.4 s; scikit-image's morphology: 0.25 s).
    """
    if stage == "ingest":
        from curation.convert import configure_dicom2nifti

        configure_dicom2nifti()  # dicom2nifti and the SciPy it imports: about 0.4 s, once per worker
    if stage == "prepare":
        import scipy.ndimage  # noqa: F401
        import skimage.morphology  # noqa: F401  (measure.label imports it on its first call: 0.25 s)
        from skimage import measure  # noqa: F401
    if stage in ("package", "verify"):
        import openpyxl  # noqa: F401


def _warm(_: int) -> None:
    import release.verify  # noqa: F401


def _save(work: Path, name: str, value: object) -> None:
    (work / f"{name}.pickle").write_bytes(pickle.dumps(value))


def _load(work: Path, name: str) -> object:
    return pickle.loads((work / f"{name}.pickle").read_bytes())


def _stage_in_process(stage: str, work: Path, workers: int) -> dict[str, float]:
    run = subprocess.run(
        [sys.executable, __file__, "--stage", stage, "--work", str(work), "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def _dcm2niix(dicom_dir: Path, out: Path, *flags: str) -> tuple[float, int]:
    import dcm2niix

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run([dcm2niix.bin, *flags, "-o", str(out), str(dicom_dir)], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return seconds, sum(p.stat().st_size for p in out.glob("*.nii.gz"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="cases timed (median reported)")
    parser.add_argument("--workers", type=int, default=2, help="verify's worker processes (the cores)")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the study in and reuse")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.work, args.workers)))
        return 0

    root = args.keep or Path(tempfile.mkdtemp(prefix="petct-case-cost-"))
    study = root / "study"
    try:
        if not (study / "drop").is_dir():
            from curation.phantom import (
                make_phantom,
                write_lesion,
                write_segmentations,
                write_study,
            )

            phantom = make_phantom(size="bench", with_labels=True)
            record = write_study(phantom, study / "drop", vendor="siemens", seed=1, patient_id="SITE-0001",
                                 patient_name="SITE-0001", decoys=False)
            write_segmentations(phantom, study / "seg", record.StudyInstanceUID)
            write_lesion(phantom, study / "lesions", record.StudyInstanceUID)
            del phantom
        dicom_mb = sum(p.stat().st_size for p in (study / "drop").rglob("*") if p.is_file()) / 1e6
        runs: list[dict[str, dict[str, float]]] = []
        theirs: list[float] = []
        for rep in range(args.repeat):
            work = root / f"run-{rep}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            runs.append({stage: _stage_in_process(stage, work, args.workers) for stage in STAGES})
            seconds, _ = _dcm2niix(study / "drop", root / "dcm2niix", "-z", "y", "-1")
            theirs.append(seconds)
            total = sum(r["seconds"] for r in runs[-1].values())
            print(f"rep {rep + 1}: " + ", ".join(f"{s} {runs[-1][s]['seconds']:.2f} s" for s in STAGES)
                  + f"; total {total:.2f} s; dcm2niix -z y -1 {seconds:.2f} s")
            release_mb = sum(p.stat().st_size for p in (work / "dist").rglob("*.zip")) / 1e6
            shutil.rmtree(work)

        print(f"one case: CT 512x512x320, PET 200x200x205, 7 label maps; {dicom_mb:.0f} MB of DICOM in, "
              f"{release_mb:.0f} MB in the release zip; verify on {args.workers} worker processes")
        print(f"  {'stage':10s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS MB':>12s}")
        total = 0.0
        peak = 0.0
        for stage in STAGES:
            wall = statistics.median(r[stage]["seconds"] for r in runs)
            cpu = statistics.median(r[stage]["cpu"] for r in runs)
            rss = max(r[stage]["maxrss_mb"] for r in runs)
            total += wall
            peak = max(peak, rss)
            print(f"  {stage:10s} {wall:8.2f} {cpu:8.2f} {rss:12.0f}")
        d2n = statistics.median(theirs)
        print(f"  {'total':10s} {total:8.2f}   (median of {args.repeat}); dcm2niix -z y -1: {d2n:.2f} s")
        print(f"one case end to end / dcm2niix -z y -1: {total / d2n:.2f} (target <= 4); "
              f"largest peak RSS of a stage: {peak:.0f} MB (target <= 1024)")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
