"""A release in parts: writing and verifying it on 2 workers against 1, and against the single zip.

Prepares one clinical-size case (``make_phantom(size="bench")``: CT 512x512x320,
PET 200x200x205, seven label maps, defaced; as ``verify_scaling.py`` does) and
releases ``--cases`` copies of it (at least 8, each its own case number) with
``packaging = "parts"`` and ``--max-part-size`` (default 200MB, so the CT
folder is split by case range).  Each run starts from nothing written (the
part records and the output are removed first) and is timed as a build does
it, the parts' work on a pool of 1 or 2 worker processes (started and warm
before the clock, as a run's workers are):

* parts: :func:`release.parts.plan_parts`, one :func:`release.parts.write_part`
  per part on the pool, :func:`release.parts.finish_parts` (metadata), then
  :func:`release.verify.plan_verify_parts`, one :func:`release.verify.verify_chunk`
  per chunk of every part (and per part's hashing) on the pool, and
  :func:`release.verify.finish_verify`;
* single: :func:`release.assemble.assemble_release` (one task writes the zip),
  then its verification with the chunks on the pool of 2.

Every verification runs with the state (every check and the leak scan).  Prints
each run, the medians and, last, the speed-up of 2 workers over 1 for the
parts (target: at least 1.7 on 2 cores) and the single zip's time over the
parts' on 2 workers.

Usage::

    .venv/bin/python benchmarks/parts.py [--cases 8] [--repeats 3] [--max-part-size 200MB] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
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

import verify_scaling  # noqa: E402


def _inputs(root: Path, cases: int, max_part_size: str) -> tuple[object, list[object], object]:
    """The prepared bench case released ``cases`` times: (parts config, entries, labels)."""
    import case_cost

    from curation.config import Packaging, parse_size
    from curation.labels import load_release_labels
    from release.assemble import ReleaseEntry

    verify_scaling.build_release(root, 1)  # the study, its ingest and prepare, once (kept with --keep)
    work = root / "case"
    config, site = case_cost._config(work)
    release = dataclasses.replace(config.release, packaging=Packaging.PARTS,  # type: ignore[attr-defined]
                                  max_part_size=parse_size(max_part_size))
    config = dataclasses.replace(config, release=release)  # type: ignore[call-overload]
    entries = [ReleaseEntry(n, case_cost._load(work, "prepared"), case_cost._load(work, "case"), "benchmark",
                            site.license) for n in range(1, cases + 1)]  # type: ignore[attr-defined]
    return config, entries, load_release_labels(release.labels)


def _clean(config: object) -> None:
    """Nothing written: no output, no staged file, no part record or layout (every part is written again)."""
    release = config.release  # type: ignore[attr-defined]
    shutil.rmtree(release.output_dir, ignore_errors=True)
    shutil.rmtree(release.state_dir / "parts", ignore_errors=True)


def _timed(call: tuple[str, object]) -> tuple[object, float]:
    """Run ``write_part`` or ``verify_chunk`` on a job; its result and this process's CPU seconds for it."""
    from release.parts import write_part
    from release.verify import verify_chunk

    kind, job = call
    cpu = time.process_time()
    result = (write_part if kind == "write" else verify_chunk)(job)  # type: ignore[operator]
    return result, time.process_time() - cpu


def _warm(_: int) -> None:
    import release.parts
    import release.verify  # noqa: F401


def parts_on(pool: ProcessPoolExecutor, config: object, entries: list[object], labels: object) -> tuple[
    float, float, int, bool, list[float], list[float]
]:
    """Write and verify a release in parts with the parts' work on ``pool``.

    Returns (write s, verify s, zips, ok, each part's CPU s, each verify job's CPU s).
    """
    from release.parts import finish_parts, plan_parts
    from release.verify import finish_verify, plan_verify_parts

    state_dir = config.release.state_dir  # type: ignore[attr-defined]
    started = time.perf_counter()
    plan = plan_parts(config, entries)  # type: ignore[arg-type]
    written_parts = list(pool.map(_timed, [("write", job) for job in plan.jobs]))
    parts = [part for part, _ in written_parts]
    result = finish_parts(config, entries, labels, parts, plan.layout, pipeline_version="benchmark")  # type: ignore[arg-type]
    written = time.perf_counter()
    vplan = plan_verify_parts(config.release.parts_name, {n: Path(p) for n, p in result.locations().items()},  # type: ignore[attr-defined]
                              state_dir=state_dir)
    checked = list(pool.map(_timed, [("verify", vplan.job(i)) for i in range(len(vplan.chunks))]))
    report = finish_verify(vplan, [chunk for chunk, _ in checked])  # type: ignore[misc]
    return (written - started, time.perf_counter() - written, len(result.parts), report.ok,
            [cpu for _, cpu in written_parts], [cpu for _, cpu in checked])


def single_on(pool: ProcessPoolExecutor, config: object, entries: list[object], labels: object) -> tuple[float, float, bool]:
    """Write the single zip (one task) and verify it with the chunks on ``pool``: (write s, verify s, ok)."""
    from curation.config import Packaging
    from release.assemble import assemble_release
    from release.verify import finish_verify, plan_verify, verify_chunk

    single = dataclasses.replace(config, release=dataclasses.replace(config.release, packaging=Packaging.SINGLE))  # type: ignore[call-overload, attr-defined]
    started = time.perf_counter()
    result = assemble_release(single, entries, labels, pipeline_version="benchmark", force=True)  # type: ignore[arg-type]
    written = time.perf_counter()
    plan = plan_verify(Path(result.zip_path), state_dir=config.release.state_dir)  # type: ignore[attr-defined]
    report = finish_verify(plan, list(pool.map(verify_chunk, [plan.job(i) for i in range(len(plan.chunks))])))
    return written - started, time.perf_counter() - written, report.ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-part-size", default="200MB")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the study and case in and reuse")
    args = parser.parse_args(argv)
    if args.cases < 8:
        parser.error("--cases must be at least 8 (the issue's release)")
    logging.basicConfig(level=logging.ERROR)

    root = args.keep or Path(tempfile.mkdtemp(prefix="petct-parts-"))
    try:
        config, entries, labels = _inputs(root, args.cases, args.max_part_size)
        pools = {n: ProcessPoolExecutor(n) for n in (1, 2)}
        for n, pool in pools.items():
            list(pool.map(_warm, range(n)))
        totals: dict[str, list[float]] = {"parts-1": [], "parts-2": [], "single-2": []}
        steps: dict[str, list[tuple[float, float]]] = {key: [] for key in totals}
        costs: list[tuple[list[float], list[float]]] = []
        for rep in range(args.repeats):
            for n in (1, 2):
                _clean(config)
                write, verify, count, ok, write_cpu, verify_cpu = parts_on(pools[n], config, entries, labels)
                costs.append((write_cpu, verify_cpu))
                assert ok, "the release in parts failed verify"
                totals[f"parts-{n}"].append(write + verify)
                steps[f"parts-{n}"].append((write, verify))
                print(f"rep {rep + 1}: parts ({count} zips), {n} worker(s): write {write:.2f} s, "
                      f"verify {verify:.2f} s, total {write + verify:.2f} s")
            _clean(config)
            write, verify, ok = single_on(pools[2], config, entries, labels)
            assert ok, "the single zip failed verify"
            totals["single-2"].append(write + verify)
            steps["single-2"].append((write, verify))
            print(f"rep {rep + 1}: single zip, 2 workers verifying: write {write:.2f} s, verify {verify:.2f} s, "
                  f"total {write + verify:.2f} s")
        _clean(config)
        for pool in pools.values():
            pool.shutdown()
        median = {key: statistics.median(values) for key, values in totals.items()}
        for key in totals:
            write = statistics.median(w for w, _ in steps[key])
            verify = statistics.median(v for _, v in steps[key])
            print(f"median {key}: write {write:.2f} s, verify {verify:.2f} s, total {median[key]:.2f} s")
        # the same from the jobs' own CPU times (steadier on a shared machine): how evenly they split
        write_cpu, verify_cpu = min(costs, key=lambda c: sum(c[0]) + sum(c[1]))
        alone = sum(write_cpu) + sum(verify_cpu)
        shared = verify_scaling.makespan(write_cpu, 2) + verify_scaling.makespan(verify_cpu, 2)
        print(f"jobs' CPU: {len(write_cpu)} parts {sum(write_cpu):.2f} s, {len(verify_cpu)} verify jobs "
              f"{sum(verify_cpu):.2f} s; 2 workers taking them in turn would finish in {shared:.2f} s: "
              f"split speed-up {alone / shared:.2f}")
        print(f"speed-up of 2 workers over 1, parts written and verified: {median['parts-1'] / median['parts-2']:.2f} "
              f"(target >= 1.7); single zip over parts on 2 workers: {median['single-2'] / median['parts-2']:.2f}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
