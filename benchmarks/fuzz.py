"""Fuzz campaigns: mutated DICOM through the index, the gate and ingest (see ``tests/fuzzing.py``).

Writes ``--files`` mutated files (half from a tiny phantom study, copied per
fuzzed study with its own UIDs, half from pydicom's test files and, with
``--deid-dir``, deid-data's), runs them through
:func:`curation.dicomindex.index_site`, :func:`anonymization.gate.check_datasets`
and :func:`curation.ingest.ingest_study`, and prints the outcome counts, the
first uncaught exceptions if any, the peak RSS, and last the files per second.
Exit code 1 when an exception escaped or a file has no outcome.

Usage::

    .venv/bin/python benchmarks/fuzz.py --files 20000 --seed 3 [--deid-dir DIR] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzzing import run_campaign  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deid-dir", type=Path, default=None, help="deid-data's deid_data/data folder")
    parser.add_argument("--max-source-bytes", type=int, default=1 << 20)
    parser.add_argument("--work", type=Path, default=None, help="keep the drop and state here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the report")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="petct-fuzz-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tally = run_campaign(work, files=args.files, seed=args.seed, deid_dir=args.deid_dir,
                             max_source_bytes=args.max_source_bytes)
    bad = bool(tally.uncaught) or tally.outcomes.get("lost", 0) > 0
    if args.json:
        print(json.dumps({"files": tally.files, "outcomes": dict(tally.outcomes), "gate": dict(tally.gate),
                          "mutations": dict(tally.mutations), "uncaught": tally.uncaught,
                          "seconds": tally.seconds, "peak_rss_mib": tally.peak_rss_mib}))
        return 1 if bad else 0
    print(f"mutations (first applied): {dict(sorted(tally.mutations.items()))}")
    print("outcomes per mutated file:")
    for outcome, count in sorted(tally.outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {outcome:40s} {count:7d}")
    print(f"gate on each readable mutated file: {dict(sorted(tally.gate.items()))}")
    for text in tally.uncaught[:5]:
        print(f"UNCAUGHT {text}")
    print(f"uncaught exceptions: {len(tally.uncaught)}; peak RSS {tally.peak_rss_mib:.0f} MiB")
    print(f"fuzz: {tally.files} files in {tally.seconds:.1f} s = {tally.files / tally.seconds:.1f} files/s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
