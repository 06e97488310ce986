"""The ``petct-release`` command line (the commands of the README's usage section).

Every command that ingests or builds runs through the Prefect flows of
:mod:`flows.flows`, so a CLI run and a deployment run are the same code and
leave the same audit trail; they report to the server of ``serve`` for the
same state folder when it runs (:func:`flows.runners.prefect_api`).  The
commands that only read a zip or read or edit the state (``verify``,
``status``, ``withdraw``, ``audit``, ``report``) never import Prefect nor start a server;
``verify --state`` still records its result in the audit log.

Exit codes
----------
0
    Success.  A run in which some studies were *rejected* is a success:
    rejection (with its reason code) is a normal outcome for a study.
1
    The work ran but something failed a check: ``verify`` found a problem,
    the audit chain is broken, a task failed unexpectedly during a run, or
    another build of the same release holds the build lock.
2
    Usage or configuration error: a bad argument, an invalid ``release.toml``
    (the message names key, value and what is allowed), a missing file, an
    unknown site or case number.

Errors are printed as ``petct-release: error: <sentence>`` on stderr.
Prefect is imported only by the commands that run flows, after the logging
environment below is set (Prefect reads its settings when first imported).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from curation.config import Config, ConfigError, load_config
from curation.errors import RunRefusedError
from curation.registry import Registry, format_case_number, parse_case_number
from curation.state import StatePaths
from flows import progress
from flows.audit import (
    AuditError,
    AuditEvent,
    AuditLog,
    case_history,
    check_verification_record,
    verify_chain,
)
from flows.status import format_table, rejected_text, site_status

logger = logging.getLogger(__name__)

PROG = "petct-release"
#: Our packages: their INFO lines are what a steward reads while work runs.
OUR_LOGGERS = ("curation", "anonymization", "release", "flows")
#: Prefect's console output is kept to warnings; its run logs still reach the
#: API at INFO (PREFECT_LOGGING_LEVEL stays INFO: at WARNING, Prefect drops INFO run logs everywhere).
_PREFECT_ENV_DEFAULTS = {
    # a steward's machine holding patient data does not phone home unless asked to
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    # the default 20 s is too short for a first start on a busy 2-core machine
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
DEMO_CASES_DEFAULT = 2
_REHASH_HELP = (
    "read and hash every DICOM file again (by default a file whose size, mtime, ctime and inode "
    "are unchanged since it was read is not read)"
)
DEMO_OUT_DEFAULT = "demo-output"


class UsageError(Exception):
    """A mistake in what the user asked for (exit code 2)."""


class CheckFailed(Exception):
    """The work ran but a check failed (exit code 1)."""


# ---------------------------------------------------------------------------
# argument parsing


def _case_arg(text: str) -> str:
    try:
        return format_case_number(parse_case_number(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors read ``petct-release: error: <sentence>``."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog[len(PROG) :].strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"{PROG}: error: {where}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``petct-release`` (one sub-command per command of the README)."""
    parser = _Parser(
        prog=PROG,
        description="Turn anonymised multi-site PET/CT DICOM into a public dataset release.",
        epilog="Exit codes: 0 success, 1 a check failed, 2 usage or configuration error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="synthesise 3 phantom sites, run everything, print the zip path")
    p.add_argument("--out", type=Path, default=Path(DEMO_OUT_DEFAULT), help="folder for the demo")
    p.add_argument("--cases", type=_positive_int, default=DEMO_CASES_DEFAULT, help="cases per site")

    p = sub.add_parser("ingest", help="index, PHI gate, series selection, conversion, metadata")
    p.add_argument("config", type=Path, metavar="CONFIG")
    p.add_argument("--site", metavar="ID", help="only this site (default: every site)")
    p.add_argument("--rehash", action="store_true", help=_REHASH_HELP)

    for name, text in (
        ("build", "number, segmentations, deface, layout, spreadsheets, zip"),
        ("run", "ingest every site, then build (the main flow)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", type=Path, metavar="CONFIG")
        p.add_argument(
            "--force",
            action="store_true",
            help="replace an existing zip of the same name and version whose content differs",
        )
        if name == "run":
            p.add_argument("--rehash", action="store_true", help=_REHASH_HELP)

    p = sub.add_parser("verify", help="integrity, structure, geometry, PHI scan; exit 1 on any failure")
    p.add_argument("zip", type=Path, metavar="ZIP|DIR", help="the release zip, or the folder of a release in parts")
    p.add_argument("--state", type=Path, metavar="DIR", help="state_dir: also leak scan and defacing")

    p = sub.add_parser("status", help="per site: studies seen, cases ready, rejected, released")
    p.add_argument("config", type=Path, metavar="CONFIG")

    p = sub.add_parser("withdraw", help="exclude a case from later releases; numbers never reused")
    p.add_argument("config", type=Path, metavar="CONFIG")
    p.add_argument("--case", type=_case_arg, required=True, metavar="NNNN")
    p.add_argument("--reason", required=True, metavar="TEXT")

    p = sub.add_parser("audit", help="show or verify the audit chain")
    p.add_argument("config", type=Path, metavar="CONFIG")
    p.add_argument("--case", type=_case_arg, metavar="NNNN", help="one case's history, DICOM to zip")
    p.add_argument("--verify", action="store_true", help="check the chain; exit 1 at the first bad line")

    p = sub.add_parser("serve", help="serve the deployments with their schedules")
    p.add_argument("config", type=Path, metavar="CONFIG")

    p = sub.add_parser("report", help="write the steward's QC report (state_dir/report/index.html)")
    p.add_argument("config", type=Path, metavar="CONFIG")
    return parser


# ---------------------------------------------------------------------------
# logging and progress


def _prepare_environment() -> None:
    for key, value in _PREFECT_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _setup_logging(stream: Any) -> Callable[[], None]:
    """Send our packages' INFO lines to ``stream`` through one handler.

    The handler sits on our own loggers (not the root) with propagation off:
    Prefect replaces the root logger's handlers when it configures logging on
    first use, and leaves named loggers alone.  On a terminal with a progress
    bar, the lines are printed through the bar's console so they scroll above it.

    Returns
    -------
    callable
        Undoes the set-up (the loggers get back their level and propagation).
    """
    reporter = progress.reporter()
    if isinstance(reporter, progress.BarProgress):
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=reporter.console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.setLevel(logging.INFO)
    saved = []
    for name in OUR_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        lg.propagate = False

    def undo() -> None:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate

    return undo


# ---------------------------------------------------------------------------
# shared helpers


def _config(path: Path) -> Config:
    return load_config(path)  # ConfigError names the file; it becomes exit code 2


def _state(config: Config) -> StatePaths:
    return StatePaths(config.release.state_dir)


def _start_api(config: Config) -> None:
    """Start the temporary Prefect server now, when the flow will need one, so that it starts while Prefect is imported."""
    from curation.threads import stage_threads
    from flows.localserver import launch_early

    stage_threads()  # a bad PETCT_RELEASE_STAGE_THREADS is refused before anything starts (exit 2)
    launch_early(config.release.state_dir)


def _flows() -> ModuleType:
    """Import :mod:`flows.flows` (Prefect and the flows: most of a flow command's start-up) with the garbage collector paused.

    Importing makes hundreds of thousands of objects and next to no garbage, yet
    the collector's passes over them cost 0.1-0.3 s of CPU.  The imported heap is
    then frozen (:func:`gc.freeze`, the pattern its documentation gives): the
    collections of the run itself no longer walk it.
    """
    if "flows.flows" not in sys.modules and gc.isenabled():  # once, and never against a caller's choice
        gc.disable()
        try:
            import flows.flows
        finally:
            gc.freeze()
            gc.enable()
    import flows.flows

    return flows.flows


def _print_summary(summary: Any, out: Any) -> None:
    """Print a :class:`flows.flows.RunSummary`; raise CheckFailed when a task failed."""
    progress.close()
    print(
        f"converted {summary.converted}, rejected {rejected_text(summary.rejected)}, "
        f"released {summary.released}, failed {summary.failed}",
        file=out,
    )
    if summary.nothing_to_do:
        print("nothing left to do: every study, case and the zip are up to date", file=out)
    if summary.failed:
        raise CheckFailed(
            f"{summary.failed} task(s) failed unexpectedly (flow run {summary.flow_run_id}); "
            "their errors are in the log above and in the audit log"
        )


def _print_zip(summary: Any, out: Any) -> None:
    if summary.zip_path:
        print(summary.zip_path, file=out)


def _verify(zip_path: Path, state_dir: Path | None, out: Any) -> None:
    from flows.decisions import verify_and_record

    result = verify_and_record(zip_path, state_dir)
    progress.close()
    for problem in result.problems:
        print(f"problem: {problem}", file=out)
    if result.problems:
        raise CheckFailed(f"{zip_path}: verify found {len(result.problems)} problem(s)")
    print(f"verified: {zip_path}", file=out)


# ---------------------------------------------------------------------------
# commands


def cmd_demo(args: argparse.Namespace, out: Any) -> None:
    """Synthesise the phantom sites (once per ``--out``), curate, verify, print the zip."""
    from curation.phantom import DemoFolderError, demo_sites

    try:
        config_path = demo_sites(args.out.resolve(), cases_per_site=args.cases)
    except DemoFolderError as exc:
        raise UsageError(str(exc)) from None
    config = _config(config_path)
    _start_api(config)
    summary = _flows().run_curate(str(config_path))
    _print_summary(summary, out)
    if not summary.zip_path:
        raise CheckFailed(f"{config_path}: the demo built no zip (no case was ready for release)")
    _verify(Path(summary.zip_path), config.release.state_dir, out)
    print(summary.zip_path, file=out)


def cmd_ingest(args: argparse.Namespace, out: Any) -> None:
    """Ingest one site (``--site``) or every site; print the summary."""
    config = _config(args.config)
    if args.site is not None:
        config.site(args.site)  # ConfigError naming the known sites
    _start_api(config)
    summary = _flows().run_ingest(str(config.path), args.site, rehash=args.rehash)
    _print_summary(summary, out)


def cmd_build(args: argparse.Namespace, out: Any) -> None:
    """Build the release from the ingested cases; print the summary and the zip."""
    config = _config(args.config)  # before importing Prefect: a config error is quick
    _start_api(config)
    summary = _flows().run_build(str(config.path), force=args.force)
    _print_summary(summary, out)
    _print_zip(summary, out)


def cmd_run(args: argparse.Namespace, out: Any) -> None:
    """Ingest every site, then build; print the summary and the zip."""
    config = _config(args.config)
    _start_api(config)
    summary = _flows().run_curate(str(config.path), force=args.force, rehash=args.rehash)
    _print_summary(summary, out)
    _print_zip(summary, out)


def cmd_verify(args: argparse.Namespace, out: Any) -> None:
    """Verify a release zip or a folder of parts (with ``--state``: also the leak scan and the defacing)."""
    if not (args.zip.is_file() or args.zip.is_dir()):
        raise UsageError(f"{args.zip}: no such release zip or folder of parts")
    if args.state is not None and not args.state.is_dir():
        raise UsageError(f"{args.state}: no such state folder (--state)")
    _verify(args.zip.resolve(), args.state.resolve() if args.state else None, out)


def cmd_status(args: argparse.Namespace, out: Any) -> None:
    """Print the per-site status table."""
    config = _config(args.config)
    state = _state(config)
    print(f"release {config.release.release_path.name}   state {state.root}", file=out)
    print(format_table(site_status(config)), file=out)


def cmd_withdraw(args: argparse.Namespace, out: Any) -> None:
    """Withdraw a case from later releases (its number is never given again)."""
    config = _config(args.config)
    state = _state(config)
    reason = args.reason.strip()
    if not reason:
        raise UsageError("--reason must say why the case is withdrawn")
    if not state.registry.is_file():
        raise UsageError(f"{state.registry}: no registry yet (no case has been numbered); nothing to withdraw")
    registry = Registry(state.registry)
    number = parse_case_number(args.case)
    before = {e.number: e for e in registry.entries()}
    if number not in before:
        high = max(before, default=0)
        raise UsageError(
            f"case {args.case} is not in the registry {state.registry} (numbers given: 1 to {high})"
        )
    if before[number].withdrawn:
        print(f"case {args.case} was already withdrawn ({before[number].reason}); nothing to do", file=out)
        return
    entry = registry.withdraw(number, reason)
    AuditLog(state.audit_log).append(
        AuditEvent.WITHDRAWN,
        site=entry.site,
        study=entry.StudyInstanceUID,
        case=args.case,
        parameters={"reason": reason, "cases": [args.case]},
        outcome="withdrawn",
    )
    print(
        f"case {args.case} (site {entry.site}) withdrawn: it leaves the next build; "
        "its number is never given again",
        file=out,
    )


def _short(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={str(v)[:12]}" for k, v in sorted(mapping.items()))


def format_record(record: dict[str, Any], *, full: bool) -> str:
    """One audit record as a line a steward reads (parameters in full with ``full``)."""
    head = f"{record['seq']:>6}  {record['time']}  {record['event']:<20} {record['outcome']:<9}"
    where = " ".join(
        f"{key}={record[key]}" for key in ("site", "case", "study") if record.get(key)
    )
    parts = [head, where]
    if record.get("inputs"):
        parts.append(f"in[{_short(record['inputs'])}]")
    if record.get("outputs"):
        parts.append(f"out[{_short(record['outputs'])}]")
    if record.get("parameters"):
        text = json.dumps(record["parameters"], sort_keys=True, separators=(",", ":"))
        if not full and len(text) > 160:
            text = text[:157] + "..."
        parts.append(text)
    parts.append(f"by {record['actor']}")
    if record.get("flow_run_id"):
        parts.append(f"run {record['flow_run_id']}")
    return "  ".join(p for p in parts if p)


def _release_verifications(state: StatePaths) -> list[str]:
    """Check that the log still holds, as written, the verification each release manifest names."""
    problems = []
    for path in state.release_manifests():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        verified = manifest.get("verified") if isinstance(manifest, dict) else None
        if not isinstance(verified, dict):
            continue
        problem = check_verification_record(
            state.audit_log, seq=int(verified.get("audit_seq", 0)), record_hash=str(verified.get("audit_hash", "")),
            zip_name=str(manifest.get("zip", "")), sha256=str(verified.get("zip_sha256", "")),
        )
        if problem:
            problems.append(problem)
    return problems


def cmd_audit(args: argparse.Namespace, out: Any) -> None:
    """Show the audit log, one case's history, or verify the chain."""
    config = _config(args.config)
    state = _state(config)
    path = state.audit_log
    if args.verify:
        report = verify_chain(path)
        if report.note:
            print(f"note: {report.note}", file=out)
        if not report.ok:
            raise CheckFailed(f"{path}: the audit chain is broken at line {report.first_bad_line}: {report.problem}")
        problems = _release_verifications(state)
        if problems:
            raise CheckFailed("; ".join(problems))
        print(f"{path}: audit chain intact, {report.records} records", file=out)
    if args.case:
        number = parse_case_number(args.case)
        entries = {e.number: e for e in Registry(state.registry).entries()} if state.registry.is_file() else {}
        if number not in entries:
            raise UsageError(f"case {args.case} is not in the registry {state.registry}")
        entry = entries[number]
        print(f"case {args.case}: site {entry.site}, study {entry.StudyInstanceUID}"
              + (f", withdrawn ({entry.reason})" if entry.withdrawn else ""), file=out)
        for record in case_history(path, study=entry.StudyInstanceUID, case=args.case):
            print(format_record(record, full=True), file=out)
    elif not args.verify:
        for record in AuditLog(path).records():
            print(format_record(record, full=False), file=out)


def cmd_serve(args: argparse.Namespace, out: Any) -> None:
    """Serve the deployments with their schedules until interrupted."""
    from flows.serve import serve

    config = _config(args.config)
    with contextlib.suppress(KeyboardInterrupt):
        serve(str(config.path))
    print("stopped serving", file=out)


def cmd_report(args: argparse.Namespace, out: Any) -> None:
    """Write the steward's QC report from the state folder and print where it is (no Prefect)."""
    from flows.report import write_report

    config = _config(args.config)
    path = write_report(config)
    print(f"QC report: {path}  (open {path.as_uri()} in a browser)", file=out)


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], None]] = {
    "demo": cmd_demo,
    "ingest": cmd_ingest,
    "build": cmd_build,
    "run": cmd_run,
    "verify": cmd_verify,
    "status": cmd_status,
    "withdraw": cmd_withdraw,
    "audit": cmd_audit,
    "serve": cmd_serve,
    "report": cmd_report,
}
#: Commands that do long work (a progress bar on a terminal).
_LONG = frozenset({"demo", "ingest", "build", "run", "verify", "serve"})


def _error(text: str) -> None:
    print(f"{PROG}: error: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``petct-release`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Run as the program (``argv`` None), the process ends right after: the heap is
    frozen first (:func:`gc.freeze`), which spares the interpreter's last garbage
    collections over everything Prefect and the flows built (about 0.3 s at exit).
    """
    code = _main(argv)
    if argv is None:
        gc.freeze()
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed "petct-release: error: ..." already
        return int(exc.code) if isinstance(exc.code, int) else 2
    _prepare_environment()
    use_bar = args.command in _LONG and sys.stderr.isatty()
    reporter: progress.LogProgress | progress.BarProgress = (
        progress.BarProgress(sys.stderr) if use_bar else progress.LogProgress()
    )
    with progress.use_reporter(reporter):
        undo_logging = _setup_logging(sys.stderr)
        try:
            COMMANDS[args.command](args, sys.stdout)
        except (ConfigError, UsageError) as exc:
            _error(str(exc))
            return 2
        except CheckFailed as exc:
            _error(str(exc))
            return 1
        except AuditError as exc:
            _error(str(exc))
            return 1
        except RunRefusedError as exc:  # another build holds the lock, or a different release exists
            _error(str(exc))
            return 1
        finally:
            undo_logging()
    return 0


if __name__ == "__main__":
    sys.exit(main())
