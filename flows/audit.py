"""The audit log: ``state_dir/audit.jsonl``, an append-only hash chain.

One JSON object per line (keys sorted, compact separators, UTF-8)::

    {"actor": "steward@host", "case": "0003", "event": "converted",
     "flow_run_id": "...", "hash": "<sha256 of this record without 'hash'>",
     "inputs": {"dicom": "<sha256>"}, "outcome": "ok",
     "outputs": {"CT": "<sha256>", "PT": "<sha256>"}, "parameters": {...},
     "prev": "<sha256 of the previous line's bytes>", "seq": 17,
     "site": "leipzig", "study": "<StudyInstanceUID>", "time": "2026-11-28T20:41:07.123456Z"}

``seq`` is the record's 1-based line number; ``prev`` is the sha256 of the
exact bytes of the previous line (without its newline; 64 zeros for the first
line); ``hash`` is the sha256 of the record's canonical JSON without the
``hash`` key.  Beside the log, ``audit.jsonl.head`` holds the count and the
line sha256 of the last record, replaced atomically after every append.  The
log is internal (it holds StudyInstanceUIDs) and is never released.

What :func:`verify_chain` detects, naming the first bad line:

- an edited record (its ``hash`` no longer matches; if the editor recomputed
  ``hash``, the next line's ``prev`` no longer matches; if it was the last
  line, the head file no longer matches);
- a removed, inserted, duplicated or moved line (``seq`` is not the line
  number, or ``prev`` does not match the line before);
- a truncated tail, whole lines or part of the last line (the head file
  records more records than the log holds);
- a line appended without this module (the head file records fewer records).

What it cannot detect: someone who rewrites the whole chain *and* the head
file consistently, since no secret is involved.  Against that, keep a copy of
the head (or of a release record's zip sha256) elsewhere and compare.

Concurrency and crashes: every append holds ``audit.jsonl.lock`` (a
:mod:`filelock` lock, which works across threads, processes and Dask
workers sharing the filesystem) around reading the last line, writing the
new line with one ``write`` of the full line, ``fsync`` and the head update.
A crash during the write can leave an unfinished last line (no newline);
the next append cuts it off and first writes an ``audit-recovered`` record
giving its byte length.  A crash between the line's ``fsync`` and the head
update leaves one valid record past the head; the next append accepts it and
notes it in an ``audit-recovered`` record too.  Any other disagreement
between log and head is tampering or data loss: :meth:`AuditLog.append`
raises :class:`AuditError` rather than extend a broken chain.  An append
reads only the end of the log (a few milliseconds whatever its length); the
whole chain is checked by :func:`verify_chain` (``audit CONFIG --verify``).

Release-level records (numbering, release packaged, verify) list the case
numbers they concern in ``parameters["cases"]``; :func:`case_history` uses
that to follow a case from DICOM to zip.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from filelock import FileLock

from curation.atomic import atomic_write_text

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
#: Keys every record carries.
RECORD_KEYS = frozenset(
    {
        "actor",
        "case",
        "event",
        "flow_run_id",
        "hash",
        "inputs",
        "outcome",
        "outputs",
        "parameters",
        "prev",
        "seq",
        "site",
        "study",
        "time",
    }
)


class AuditEvent(StrEnum):
    """The events of the flows and the CLI.

    A stage's own events are declared by the stage (``done_event``, e.g.
    ``study-converted``, ``case-prepared``; ``<stage>-failed`` for a task that
    raised), so a new stage brings its events with it.
    """

    SITE_INDEXED = "site-indexed"
    INDEX_FAILED = "index-failed"
    STUDY_REJECTED = "study-rejected"
    CASE_HELD_BACK = "case-held-back"
    CASE_NUMBERED = "case-numbered"
    RELEASE_PACKAGED = "release-packaged"
    RELEASE_REUSED = "release-reused"
    RELEASE_VERIFIED = "release-verified"
    RELEASE_PUBLISHED = "release-published"
    RELEASE_QUARANTINED = "release-quarantined"
    WITHDRAWN = "withdrawn"
    #: written when an append repairs what a crash left behind
    AUDIT_RECOVERED = "audit-recovered"

_LOCK_TIMEOUT_S = 600.0
_TAIL_CHUNK = 64 * 1024

# filelock's lock is per lock *object*; threads of one process appending to the
# same log through different AuditLog objects are serialised here as well.
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class AuditError(RuntimeError):
    """The audit log and its head file disagree in a way no crash explains."""


@dataclass(frozen=True)
class ChainReport:
    """The result of :func:`verify_chain`.

    Attributes
    ----------
    ok
        True when every line and the head file agree.
    records
        The number of complete records read.
    first_bad_line
        The 1-based line number where the chain first fails, or None.
    problem
        A sentence saying what is wrong at that line ("" when ok).
    note
        Something worth saying that is not a failure (an unfinished last line
        left by a crash, to be cut off by the next append), else "".
    """

    ok: bool
    records: int
    first_bad_line: int | None
    problem: str
    note: str = ""


def current_actor() -> str:
    """The user and host appending records, as ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no USER variable
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """The sha256 of a record's canonical JSON without its ``hash`` key."""
    return _sha256(_canonical({k: v for k, v in record.items() if k != "hash"}))


def head_path(path: Path) -> Path:
    """The head file kept beside the log ``path``."""
    return path.with_name(path.name + ".head")


def lock_path(path: Path) -> Path:
    """The lock file kept beside the log ``path``."""
    return path.with_name(path.name + ".lock")


def _read_head(path: Path) -> tuple[int, str] | None:
    """``(count, sha256 of the last line)`` from the head file, None when absent."""
    head = head_path(path)
    try:
        data = json.loads(head.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuditError(f"{head}: the audit head file cannot be read ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("count"), int):
        raise AuditError(f"{head}: the audit head file has no whole-number 'count': {data!r}")
    return data["count"], str(data.get("sha256", ""))


def read_head(path: Path) -> tuple[int, str] | None:
    """``(records, sha256 of the last line)`` from the log's head file, None when there is none.

    A steward who keeps a copy of the head elsewhere can tell later whether
    the chain was rewritten; the report shows it.

    Raises
    ------
    AuditError
        When the head file exists but cannot be read.
    """
    return _read_head(path)


def _write_head(path: Path, count: int, line_sha: str) -> None:
    atomic_write_text(head_path(path), json.dumps({"count": count, "sha256": line_sha}) + "\n")


def _jsonable_mapping(value: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"audit {name} must be a mapping, got {type(value).__name__}")
    out = {str(k): v for k, v in value.items()}
    try:
        _canonical(out)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"audit {name} {out!r} is not JSON-serialisable ({exc})") from None
    return out


class AuditLog:
    """Append records to, and read, one audit log.

    Parameters
    ----------
    path
        The log file (``StatePaths.audit_log``); its folder is created on the
        first append.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def _thread_lock(self) -> threading.Lock:
        key = str(self.path.resolve())
        with _THREAD_LOCKS_GUARD:
            return _THREAD_LOCKS.setdefault(key, threading.Lock())

    def append(
        self,
        event: str,
        *,
        site: str = "",
        study: str = "",
        case: str = "",
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        outcome: str = "ok",
        flow_run_id: str = "",
    ) -> dict[str, Any]:
        """Append one record to the chain and return it as written.

        Parameters
        ----------
        event
            What happened (``converted``, ``rejected``, ``numbered``,
            ``withdrawn``, ``release-packaged``...).
        site, study, case
            The site id, StudyInstanceUID and case number (``NNNN``) concerned,
            ``""`` when not applicable.
        inputs, outputs
            File role -> sha256 of the content read / written.
        parameters
            Any JSON-serialisable settings or findings; release-level records
            list their case numbers under ``"cases"``.
        outcome
            ``ok``, ``rejected``, ``failed``...
        flow_run_id
            The Prefect flow run, ``""`` outside a flow (CLI ``withdraw``).

        Returns
        -------
        dict
            The record, including ``seq``, ``prev`` and ``hash``.

        Raises
        ------
        AuditError
            When the log and its head file disagree in a way no crash
            explains (see the module docstring); nothing is written then.
        TypeError
            When a mapping argument is not JSON-serialisable.
        """
        if not event:
            raise ValueError("an audit record needs a non-empty event name")
        body = {
            "actor": current_actor(),
            "case": str(case),
            "event": str(event),
            "flow_run_id": str(flow_run_id),
            "inputs": _jsonable_mapping(inputs, "inputs"),
            "outcome": str(outcome),
            "outputs": _jsonable_mapping(outputs, "outputs"),
            "parameters": _jsonable_mapping(parameters, "parameters"),
            "site": str(site),
            "study": str(study),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock(), FileLock(str(lock_path(self.path)), timeout=_LOCK_TIMEOUT_S):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                count, last_sha = self._prepare_tail(fd)
                record, line_sha = _write_record(fd, body, count + 1, last_sha)
                _write_head(self.path, count + 1, line_sha)
            finally:
                os.close(fd)
        return record

    def _prepare_tail(self, fd: int) -> tuple[int, str]:
        """Check the end of the log against the head, repair crash leftovers.

        Returns the number of records and the sha256 of the last line.
        """
        size = os.fstat(fd).st_size
        end, partial = _complete_end(fd, size)
        recovered: list[dict[str, Any]] = []
        if partial:
            recovered.append(
                {
                    "problem": "an unfinished record (no final newline) left by an interrupted "
                    "append was discarded",
                    "discarded_bytes": partial,
                }
            )
        last_line = _last_line(fd, end)
        if last_line is None:
            count, last_sha = 0, GENESIS
        else:
            last = _parse_line(last_line, self.path, None)
            count, last_sha = int(last["seq"]), _sha256(last_line)
        head = _read_head(self.path)
        if head is None and count > 0:
            raise AuditError(
                f"{head_path(self.path)} is missing while {self.path} holds {count} records: "
                "the end of the chain cannot be checked; run `petct-release audit CONFIG --verify`"
            )
        if head is not None and head != (count, last_sha):
            head_count, head_sha = head
            behind = count - head_count
            report = _verify_unlocked(self.path, check_head=False)  # the lock is held already
            covered = (
                report.ok
                and report.records == count
                and 0 < behind <= 1
                and _line_sha(self.path, head_count) == head_sha
            )
            if not covered:
                raise AuditError(
                    f"{self.path}: the log holds {count} records ending in line sha256 "
                    f"{last_sha[:12]}..., but {head_path(self.path)} records {head_count} ending in "
                    f"{head_sha[:12]}...: the log was truncated or changed; nothing was appended. "
                    "Run `petct-release audit CONFIG --verify` to find the first bad line."
                )
            logger.warning("%s: record %d was written but the head not updated (crash)", self.path, count)
            recovered.append(
                {
                    "problem": "a record was written but the head file not updated (interrupted "
                    "append); the head now covers it",
                    "unheaded_records": behind,
                }
            )
        # Only now, with the head checked, is anything changed on disk.
        if partial:
            os.ftruncate(fd, end)
            os.fsync(fd)
            logger.warning(
                "%s: cut off an unfinished record of %d bytes left by a crash", self.path, partial
            )
        for params in recovered:
            body = {
                "actor": current_actor(),
                "case": "",
                "event": AuditEvent.AUDIT_RECOVERED.value,
                "flow_run_id": "",
                "inputs": {},
                "outcome": "ok",
                "outputs": {},
                "parameters": params,
                "site": "",
                "study": "",
            }
            _, last_sha = _write_record(fd, body, count + 1, last_sha)
            count += 1
            _write_head(self.path, count, last_sha)
        return count, last_sha

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in order (an unfinished last line is left out).

        Raises
        ------
        AuditError
            When a complete line is not a JSON object.
        """
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")[:-1]  # the piece after the last newline is unfinished
        return [_parse_line(line, self.path, i) for i, line in enumerate(lines, start=1)]


def _write_record(fd: int, body: dict[str, Any], seq: int, prev: str) -> tuple[dict[str, Any], str]:
    record = dict(body, seq=seq, prev=prev, time=_utc_now())
    record["hash"] = record_hash(record)
    line = _canonical(record)
    data = line + b"\n"
    # One write of the whole line: with O_APPEND it lands at the end in one piece.
    written = os.write(fd, data)
    while written < len(data):  # only on a full disk or a signal; finish the line
        written += os.write(fd, data[written:])
    os.fsync(fd)
    return record, _sha256(line)


def _complete_end(fd: int, size: int) -> tuple[int, int]:
    """Offset just past the last newline, and the length of the unfinished piece after it."""
    pos = size
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            end = start + idx + 1
            return end, size - end
        pos = start
    return 0, size


def _last_line(fd: int, end: int) -> bytes | None:
    """The bytes of the last complete line ending at ``end`` (without newline)."""
    if end == 0:
        return None
    pos = end - 1  # the final newline
    buf = b""
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        idx = buf.rfind(b"\n")
        if idx >= 0:
            return buf[idx + 1 :]
        pos = start
    return buf


def _line_sha(path: Path, line_no: int) -> str:
    if line_no == 0:
        return GENESIS
    with open(path, "rb") as fh:
        for i, line in enumerate(fh, start=1):
            if i == line_no:
                return _sha256(line.rstrip(b"\n"))
    return ""


def _parse_line(line: bytes, path: Path, line_no: int | None) -> dict[str, Any]:
    where = f"{path}, line {line_no}" if line_no else f"{path}, last line"
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuditError(f"{where}: not a JSON record ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        raise AuditError(f"{where}: not an audit record (no whole-number 'seq')")
    return record


def verify_chain(path: Path, *, check_head: bool = True) -> ChainReport:
    """Check every line of the audit log and the head file.

    The append lock is held while the log and head are read, so a record
    being appended by a running flow is never mistaken for tampering.  Where
    the lock cannot be created (a read-only copy of ``state_dir``), the files
    are read without it.

    Parameters
    ----------
    path
        The log (``state_dir/audit.jsonl``).
    check_head
        Compare the end of the log with ``audit.jsonl.head`` (detects a
        truncated tail and lines appended behind the log's back).

    Returns
    -------
    ChainReport
        ``ok`` and, when not ok, the first bad line and a sentence.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return _verify_unlocked(path, check_head=check_head)
    with contextlib.ExitStack() as stack:
        stack.enter_context(AuditLog(path)._thread_lock())
        try:
            stack.enter_context(FileLock(str(lock_path(path)), timeout=_LOCK_TIMEOUT_S))
        except OSError as exc:  # a read-only copy of state_dir: nobody appends there
            logger.debug("%s: verifying without the append lock (%s)", path, exc)
        return _verify_unlocked(path, check_head=check_head)


def _verify_unlocked(path: Path, *, check_head: bool) -> ChainReport:
    if not path.exists():
        if check_head and head_path(path).exists():
            head = _read_head(path)
            if head and head[0] > 0:
                return ChainReport(
                    False, 0, 1, f"{path} is missing but its head file records {head[0]} records"
                )
        return ChainReport(True, 0, None, "")
    data = path.read_bytes()
    pieces = data.split(b"\n")
    lines, tail = pieces[:-1], pieces[-1]
    prev_sha = GENESIS
    for i, line in enumerate(lines, start=1):
        problem = _check_line(line, i, prev_sha)
        if problem:
            return ChainReport(False, i - 1, i, f"line {i}: {problem}")
        prev_sha = _sha256(line)
    count = len(lines)
    note = ""
    if tail:
        note = (
            f"line {count + 1} is an unfinished record of {len(tail)} bytes (no final newline), "
            "as an interrupted append leaves; the next append cuts it off"
        )
    if not check_head:
        return ChainReport(True, count, None, "", note)
    try:
        head = _read_head(path)
    except AuditError as exc:
        return ChainReport(False, count, count + 1 if count else 1, str(exc), note)
    if head is None:
        if count == 0:
            return ChainReport(True, 0, None, "", note)
        return ChainReport(
            False,
            count,
            count,
            f"{head_path(path)} is missing: the end of the chain cannot be checked "
            f"(the log holds {count} records)",
            note,
        )
    head_count, head_sha = head
    if head_count > count:
        what = (
            f"line {count + 1} is incomplete (no final newline)"
            if tail
            else f"line {count + 1} is missing"
        )
        return ChainReport(
            False,
            count,
            count + 1,
            f"line {count + 1}: the head file records {head_count} records but the log holds only "
            f"{count} complete ones ({what}): the end of the log was truncated",
            note,
        )
    if head_count < count:
        return ChainReport(
            False,
            count,
            head_count + 1,
            f"line {head_count + 1}: the head file records {head_count} records but the log holds "
            f"{count}: line {head_count + 1} onwards were appended without updating the head "
            "(not through the audit API, or an append interrupted before its head update)",
            note,
        )
    if count and head_sha != prev_sha:
        return ChainReport(
            False,
            count,
            count,
            f"line {count}: its sha256 {prev_sha[:12]}... differs from the one the head file "
            f"records ({head_sha[:12]}...): the last record was edited",
            note,
        )
    return ChainReport(True, count, None, "", note)


def _check_line(line: bytes, line_no: int, prev_sha: str) -> str:
    """The problem with one line, ``""`` when it is sound."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not a JSON record ({exc})"
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    missing = sorted(RECORD_KEYS - set(record))
    if missing:
        return f"the record lacks {', '.join(missing)}"
    if record["hash"] != record_hash(record):
        return (
            f"the record's content does not match its hash {str(record['hash'])[:12]}...: "
            "the record was edited"
        )
    if record["seq"] != line_no:
        return (
            f"seq is {record['seq']!r} where line {line_no} was expected: a line was removed, "
            "inserted or moved at or before this point"
        )
    if record["prev"] != prev_sha:
        before = f"line {line_no - 1}" if line_no > 1 else "the start of the log"
        return (
            f"prev {str(record['prev'])[:12]}... does not match the sha256 of {before} "
            f"({prev_sha[:12]}...): {before} was changed, or a line was removed or inserted here"
        )
    if _canonical(record) != line:
        return "the line is not in canonical form (sorted keys, compact): it was rewritten"
    return ""


def check_verification_record(path: Path, *, seq: int, record_hash: str, zip_name: str, sha256: str) -> str:
    """Check that the audit log still holds a release's verification where its manifest says.

    The build manifest of a published release names the ``seq`` and ``hash`` of
    the ``release-verified`` record of its bytes.  A log whose tail was cut or
    rewritten (together with its head file, which :func:`verify_chain` alone
    cannot tell from a shorter honest log) no longer has that record there.

    Parameters
    ----------
    path
        The log.
    seq, record_hash
        Where the manifest says the record is, and its ``hash``.
    zip_name, sha256
        The release zip and the bytes that were verified.

    Returns
    -------
    str
        ``""`` when the record is there as recorded, else a sentence saying what is wrong.
    """
    found: dict[str, Any] | None = None
    if Path(path).exists():
        with open(path, "rb") as fh:
            for line_no, line in enumerate(fh, start=1):
                if line_no == seq:
                    try:
                        found = json.loads(line.decode("utf-8"))
                    except (UnicodeDecodeError, ValueError):
                        found = {}
                    break
    where = f"{path}: the verification of {zip_name} recorded at line {seq}"
    if found is None:
        return f"{where} is missing: the log was cut short (its tail removed or rewritten)"
    if found.get("hash") != record_hash:
        return f"{where} is not the record that was written there: the log was rewritten"
    if (found.get("event") != AuditEvent.RELEASE_VERIFIED or found.get("outcome") != "ok"
            or (found.get("inputs") or {}).get(zip_name) != sha256):
        return f"{where} is not a successful verification of these bytes"
    return ""


def case_history(
    path: Path, *, study: str | None = None, case: str | None = None
) -> list[dict[str, Any]]:
    """Every record about one study or case, in log order.

    A record belongs to the history when its ``study`` is ``study``, or its
    ``case`` is ``case``, or ``case`` is among its ``parameters["cases"]``
    (release-level records: numbering, release packaged, verify).

    Parameters
    ----------
    path
        The audit log.
    study
        A StudyInstanceUID.
    case
        A case number as released (``NNNN``).

    Raises
    ------
    ValueError
        When neither ``study`` nor ``case`` is given.
    """
    if not study and not case:
        raise ValueError("case_history needs a study (StudyInstanceUID) or a case number")
    out = []
    for record in AuditLog(path).records():
        params = record.get("parameters") or {}
        listed = params.get("cases", ()) if isinstance(params, dict) else ()
        if (
            (study and record.get("study") == study)
            or (case and record.get("case") == case)
            or (case and isinstance(listed, list) and case in listed)
        ):
            out.append(record)
    return out
