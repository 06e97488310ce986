"""Verification on 2 workers against 1, on a release of bench-size cases.

Prepares one clinical-size case (``make_phantom(size="bench")``: CT 512x512x320,
PET 200x200x205, seven label maps, defaced) and packages a release of
``--cases`` copies of it (at least 8; each its own case number, so the zip holds
``9 x cases`` image members).  Then, several times and alternately, it verifies
the release with the state (every check and the leak scan) as a run does:
:func:`release.verify.plan_verify` in the flow's process, one
:func:`release.verify.verify_chunk` per chunk on a pool of 1 or 2 worker
processes (started and warm before the clock, as a run's workers are), then
:func:`release.verify.finish_verify`.  Prints each run, the medians and, last,
the speed-up of 2 workers over 1 (target: at least 1.7 on 2 cores).

Usage::

    .venv/bin/python benchmarks/verify_scaling.py [--cases 8] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import case_cost  # noqa: E402


def build_release(root: Path, cases: int) -> tuple[Path, Path]:
    """One bench case prepared under ``root``, released ``cases`` times; (zip, state_dir)."""
    from curation.labels import load_release_labels
    from curation.state import StatePaths
    from release.assemble import ReleaseEntry, assemble_release

    study = root / "study"
    if not (study / "drop").is_dir():
        from curation.phantom import make_phantom, write_lesion, write_segmentations, write_study

        phantom = make_phantom(size="bench", with_labels=True)
        record = write_study(phantom, study / "drop", vendor="siemens", seed=1, patient_id="SITE-0001",
                             patient_name="SITE-0001", decoys=False)
        write_segmentations(phantom, study / "seg", record.StudyInstanceUID)
        write_lesion(phantom, study / "lesions", record.StudyInstanceUID)
        del phantom
    work = root / "case"
    work.mkdir(exist_ok=True)
    for stage, record in (("index", "record"), ("ingest", "case"), ("prepare", "prepared")):
        if not (work / f"{record}.pickle").is_file():
            case_cost.run_stage(stage, work, 1)
    config, site = case_cost._config(work)
    entries = [ReleaseEntry(n, case_cost._load(work, "prepared"), case_cost._load(work, "case"), "benchmark",
                            site.license) for n in range(1, cases + 1)]
    labels = load_release_labels(config.release.labels)
    result = assemble_release(config, entries, labels, pipeline_version="benchmark", force=True)
    return Path(result.zip_path), StatePaths(config.release.state_dir).root


def _warm(_: int) -> None:
    import release.verify  # noqa: F401


def _timed_chunk(job: object) -> tuple[object, float]:
    from release.verify import verify_chunk

    cpu = time.process_time()
    result = verify_chunk(job)  # type: ignore[arg-type]
    return result, time.process_time() - cpu


def verify_on(pool: ProcessPoolExecutor, workers: int, zip_path: Path,
              state_dir: Path) -> tuple[float, list[float], bool]:
    """Wall seconds of one verification with the chunks on ``pool``; each chunk's CPU seconds; ok."""
    from release.verify import finish_verify, plan_verify

    started = time.perf_counter()
    plan = plan_verify(zip_path, state_dir=state_dir, workers=workers)  # cut for the workers, as the flow does
    timed = list(pool.map(_timed_chunk, [plan.job(i) for i in range(len(plan.chunks))]))
    report = finish_verify(plan, [result for result, _ in timed])  # type: ignore[misc]
    return time.perf_counter() - started, [cpu for _, cpu in timed], report.ok


def makespan(costs: list[float], workers: int) -> float:
    """When ``workers`` taking the next chunk in order as they come free finish ``costs``."""
    free = [0.0] * workers
    for cost in costs:
        free[free.index(min(free))] += cost
    return max(free)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the study and case in and reuse")
    args = parser.parse_args(argv)
    if args.cases < 8:
        parser.error("--cases must be at least 8 (the issue's release)")
    logging.basicConfig(level=logging.WARNING)

    root = args.keep or Path(tempfile.mkdtemp(prefix="petct-verify-scaling-"))
    try:
        zip_path, state_dir = build_release(root, args.cases)
        print(f"release: {args.cases} bench-size cases, {zip_path.stat().st_size / 1e9:.2f} GB zip")
        pools = {n: ProcessPoolExecutor(n) for n in (1, 2)}
        for n, pool in pools.items():
            list(pool.map(_warm, range(n)))
        walls: dict[int, list[float]] = {1: [], 2: []}
        costs: list[list[float]] = []
        for rep in range(args.repeats):
            for n in (1, 2):
                seconds, cpu, ok = verify_on(pools[n], n, zip_path, state_dir)
                assert ok
                walls[n].append(seconds)
                if n == 2:  # the split the 2 workers got
                    costs.append(cpu)
                print(f"rep {rep + 1}: {n} worker(s): {seconds:.2f} s ({len(cpu)} chunks, {sum(cpu):.2f} s CPU)")
        for pool in pools.values():
            pool.shutdown()
        one, two = statistics.median(walls[1]), statistics.median(walls[2])
        print(f"median verify: 1 worker {one:.2f} s, 2 workers {two:.2f} s ({args.cases} cases)")
        # the same from the chunks' own CPU times (steadier on a shared machine): how evenly they split
        cheapest = min(costs, key=sum)
        print(f"chunks' CPU: {sum(cheapest):.2f} s in all; 2 workers taking them in turn would finish in "
              f"{makespan(cheapest, 2):.2f} s: split speed-up {sum(cheapest) / makespan(cheapest, 2):.2f}")
        print(f"speed-up of 2 workers over 1: {one / two:.2f} (target >= 1.7)")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
