"""Leak-scan throughput on a phantom release: MB/s of bytes searched.

Builds a release of the phantom sites once (the plain stage functions of
``benchmarks/scaling.py``: index, ingest, prepare, number, package) into
``--workdir`` (kept, so a second run, e.g. on another branch, scans the same
zip), then times :func:`anonymization.leakscan.scan_zip` over it with the
state's recorded sensitive values, plus ``--extra-values`` random UIDs and IDs
(a site's worth of SOPInstanceUIDs), ``--reps`` times.  Throughput counts every
byte the scan searches: the zip's own bytes, every member, the decompressed
stream of every ``.nii.gz`` and the XML inside each ``.xlsx``.  The last line
is the median MB/s.

Usage::

    .venv/bin/python benchmarks/leakscan_speed.py [--workdir DIR] [--cases-per-site 2] [--size demo] [--reps 3]
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _searched_bytes(zip_path: Path) -> int:
    """Every byte the scan searches: the zip, each member, gunzipped streams, nested zips' members."""

    def count(data: bytes, depth: int) -> int:
        total = len(data)
        if data[:2] == b"\x1f\x8b":
            total += len(gzip.decompress(data))
        elif data[:4] == b"PK\x03\x04" and depth < 4:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                total += sum(count(zf.read(i), depth + 1) for i in zf.infolist() if not i.is_dir())
        return total

    return count(zip_path.read_bytes(), 0)


def build(workdir: Path, *, cases_per_site: int, size: str) -> tuple[Path, Path]:
    """The phantom release zip and its state_dir under ``workdir`` (built once)."""
    from benchmarks.scaling import plain_pipeline, write_sites
    from curation.config import load_config

    config_path = workdir / "release.toml"
    if not config_path.is_file():
        write_sites(workdir, cases_per_site=cases_per_site, size=size, runner="threads", workers=1)
    config = load_config(config_path)
    zips = sorted(Path(config.release.output_dir).glob("*.zip"))
    if not zips:
        plain_pipeline(config)
        zips = sorted(Path(config.release.output_dir).glob("*.zip"))
    return zips[0], Path(config.release.state_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/petct-leakscan-bench"))
    parser.add_argument("--cases-per-site", type=int, default=2)
    parser.add_argument("--size", default="demo", choices=["small", "demo", "large"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--extra-values", type=int, default=100_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from anonymization.leakscan import Matcher, scan_zip, value_digest
    from curation.state import load_sensitive_values

    args.workdir.mkdir(parents=True, exist_ok=True)
    zip_path, state_dir = build(args.workdir, cases_per_site=args.cases_per_site, size=args.size)
    values = set(load_sensitive_values(state_dir))
    rng = np.random.default_rng(0)
    values |= {f"2.25.{int(rng.integers(1, 2**62))}{int(rng.integers(1, 2**62))}"
               for _ in range(args.extra_values)}
    values |= {f"{int(rng.integers(10**6, 10**10))}" for _ in range(args.extra_values // 10)}
    # names, dates in the three recorded forms, short values: a site's refused values
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    for _ in range(args.extra_values // 50):
        family, given = ("".join(rng.choice(letters, int(rng.integers(3, 10)))) for _ in range(2))
        values.add(f"{family}^{given}")
        values.add("".join(rng.choice(letters, int(rng.integers(3, 6)))))
        day = int(rng.integers(20000, 46000))  # an xlsx serial: days since 1899-12-30
        date = np.datetime64("1899-12-30") + np.timedelta64(day, "D")
        values |= {str(date).replace("-", ""), str(date), str(day)}
    # random dates can be the release's own (shifted) dates: those are not the point here
    found = {leak.value_digest for leak in scan_zip(zip_path, values)}
    values = {v for v in values if value_digest(v) not in found}
    searched = _searched_bytes(zip_path)
    times, builds = [], []
    for _ in range(args.reps):
        start = time.perf_counter()
        Matcher(values)
        builds.append(time.perf_counter() - start)
        start = time.perf_counter()
        leaks = scan_zip(zip_path, values)
        times.append(time.perf_counter() - start)
        if leaks:
            print(f"the phantom release has {len(leaks)} leak(s): the benchmark needs a clean release")
            return 1
    seconds, build_seconds = statistics.median(times), statistics.median(builds)
    import anonymization.leakscan as module

    print(f"leak scan module: {module.__file__}")
    print(f"release:          {zip_path} ({zip_path.stat().st_size / 1e6:.1f} MB zipped)")
    print(f"bytes searched:   {searched / 1e6:.1f} MB (zip, members, gunzipped NIfTI, xlsx XML)")
    print(f"sensitive values: {len(values)}")
    print(f"scan_zip times:   {', '.join(f'{t:.2f}' for t in times)} s (matcher build, median {build_seconds:.2f} s)")
    print(f"searching only:   {searched / 1e6 / (seconds - build_seconds):.1f} MB/s (scan_zip minus the build)")
    print(f"leak scan:        {searched / 1e6 / seconds:.1f} MB/s (scan_zip, median of {args.reps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
