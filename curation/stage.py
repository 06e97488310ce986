"""Per-case stages: declare one, and it gets content-keyed reuse, its record and its audit entry.

A *stage* is one step of a study's way to the release (ingest, prepare, QC).
Each stage is a small class that declares

* what decides its outcome (:meth:`CaseStage.fingerprint_parts`: the content
  hashes of its inputs, its settings; the stage's :attr:`~CaseStage.version` is
  added by the framework),
* where its record goes (:meth:`CaseStage.record_path`),
* how it does the work (:meth:`CaseStage.produce`, a data problem raised as a
  :class:`~curation.errors.CurationError`),
* which files it wrote (:meth:`CaseStage.outputs`) and what the audit log
  should say about it (:meth:`CaseStage.parameters`).

:meth:`CaseStage.run` then does what every stage needs, in one place:

1. compute the fingerprint;
2. reuse the recorded outcome only while it carries the same fingerprint *and*
   every output file still hashes to the sha256 recorded for it (a damaged or
   edited file is redone).  What hashing an output gave is kept beside the
   record (``.<record>.output-stats.json``, a :class:`~curation.statcache.StatCache`)
   and trusted while the file's size, mtime, ctime and inode are unchanged, as
   the index does for DICOM files: writing a file always moves its ctime, so a
   changed output is always hashed again, and a no-op run reads no volume;
3. otherwise remove the stale record, do the work, and write the record last,
   atomically: the record is the commit point, so a run killed half-way leaves
   no record and the next run redoes the case;
4. turn a data problem into a :class:`~curation.model.Rejection` (recorded too,
   so an unchanged rejected case is not worked on again) and a
   :class:`MemoryError` into an ``unreadable`` rejection, so neither escapes.

The flows (``flows/``) run any stage through one task and record its
:class:`StageResult` in the audit log from the declarations above; nothing
about a stage is written out anywhere else.

Upstream records
----------------
A stage works on the records of the stages before it, oldest first:
``(StudyRecord,)`` for ingest, ``(ConvertedCase,)`` for prepare,
``(ConvertedCase, PreparedCase)`` for QC.  The first record names the study
(``site``, ``StudyInstanceUID``, ``key``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from curation.atomic import atomic_write_json, sha256_file
from curation.errors import CurationError, RejectReason
from curation.model import Phase, Rejection, from_jsonable, to_jsonable
from curation.statcache import FileStat, StatCache, now_ns

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: The ``status`` a record of a rejected study or held-back case carries.
REJECTED = "rejected"


class HashedFile(Protocol):
    """A file a stage wrote, with the sha256 recorded for it (e.g. :class:`~curation.model.ImageFile`)."""

    path: str
    sha256: str


class StudySubject(Protocol):
    """What the first upstream record of every stage has: the study it is about."""

    site: str
    StudyInstanceUID: str

    @property
    def key(self) -> str:
        """The study's key in ``state_dir`` (:func:`curation.model.study_key`)."""
        ...


@dataclass(frozen=True)
class StageResult(Generic[R]):
    """One run of a stage on one case.

    Attributes
    ----------
    stage
        The stage's :attr:`CaseStage.name`.
    outcome
        The stage's record, or the rejection.
    fresh
        True when the stage did its work (and wrote its record) in this call,
        False when the recorded outcome was reused.
    seconds
        Wall time of the call.
    """

    stage: str
    outcome: R | Rejection
    fresh: bool
    seconds: float


def write_record(path: Path, outcome: Any, *, status: str) -> None:
    """Write a stage's record ``{"status": ..., "record": ...}`` atomically.

    Parameters
    ----------
    path
        The record's path (:meth:`CaseStage.record_path`).
    outcome
        The stage's record or a :class:`~curation.model.Rejection`.
    status
        The stage's :attr:`CaseStage.done` word, or :data:`REJECTED`.
    """
    atomic_write_json(path, {"status": status, "record": to_jsonable(outcome)})


def output_stats_path(record: Path) -> Path:
    """Where the hashes of a record's outputs are kept with their stat: ``.<record name>.output-stats.json`` beside it.

    The leading dot keeps it out of every listing of records (as atomic-write temporaries).
    """
    return record.with_name(f".{record.stem}.output-stats.json")


def _intact(file: HashedFile, hashes: StatCache) -> bool:
    """Whether ``file`` still has its recorded sha256: hashed only when its stat changed since it was last hashed."""
    try:
        st = os.stat(file.path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    now = FileStat.of(st)
    known = hashes.get(file.path, now)
    if known is not None:
        return bool(known[0] == file.sha256)
    read_ns = now_ns()  # before reading: a write during the read shows as another stat next time
    digest = sha256_file(file.path)
    hashes.put(file.path, now, digest, read_ns=read_ns)
    return digest == file.sha256


def read_record(path: Path, record_type: type[R]) -> R | Rejection:
    """Read a record written by :func:`write_record`.

    Parameters
    ----------
    path
        The record's path.
    record_type
        The stage's record type (used unless the status is :data:`REJECTED`).

    Returns
    -------
    object
        The record, or the :class:`~curation.model.Rejection`.

    Raises
    ------
    OSError
        When the file cannot be read.
    ValueError, KeyError, TypeError
        When it is not such a record (damaged, or written by another version).
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if data["status"] == REJECTED:
        return from_jsonable(Rejection, data["record"])
    return from_jsonable(record_type, data["record"])


class CaseStage(ABC, Generic[R]):
    """One per-case step with content-keyed reuse (see the module docstring).

    Subclasses are frozen dataclasses holding the stage's settings (so a stage
    travels to process and Dask workers by pickling) and set the class
    attributes below.

    Attributes
    ----------
    name
        Short name: the task-run name and the audit log's ``stage`` parameter.
    phase
        Where a rejection by this stage is reported: a study rejected at ingest,
        or a case held back at build.
    version
        Part of every fingerprint: raise it when the stage changes what it
        decides or writes.
    record_type
        The frozen dataclass the stage records; it has ``site``,
        ``StudyInstanceUID`` and ``fingerprint`` fields and round-trips through
        :func:`curation.model.to_jsonable` / :func:`curation.model.from_jsonable`.
    done
        The record's ``status`` and the audit outcome when the stage succeeds
        (``"converted"``, ``"prepared"``, ...).
    done_event
        The audit event of a success (``"study-converted"``, ...).
    input_name
        Name under which the fingerprint appears in the audit record's inputs.
    """

    name: ClassVar[str]
    phase: ClassVar[Phase]
    version: ClassVar[int]
    record_type: ClassVar[type]
    done: ClassVar[str]
    done_event: ClassVar[str]
    input_name: ClassVar[str]

    # -- what a stage declares ---------------------------------------------

    @abstractmethod
    def record_path(self, subject: StudySubject) -> Path:
        """Where the stage's record of ``subject`` lives (inside ``state_dir``)."""

    @abstractmethod
    def fingerprint_parts(self, upstream: tuple[Any, ...]) -> Mapping[str, Any]:
        """Everything that decides the outcome, as JSON-serialisable content keys."""

    @abstractmethod
    def produce(self, upstream: tuple[Any, ...], fingerprint: str) -> R:
        """Do the work and return the record (not yet written).

        Raises
        ------
        curation.errors.CurationError
            For a data problem: the case becomes a rejection with its reason.
        """

    def outputs(self, record: R) -> Mapping[str, HashedFile]:
        """The files the record vouches for, by name (checked before reuse, listed in the audit log)."""
        return {}

    def parameters(self, record: R) -> dict[str, Any]:
        """What the audit record of a success says besides inputs and outputs."""
        return {}

    # -- what every stage gets ---------------------------------------------

    def fingerprint(self, upstream: tuple[Any, ...]) -> str:
        """The content key of this stage's outcome for ``upstream`` (sha256 hex)."""
        doc = {"stage": self.name, "version": self.version, **self.fingerprint_parts(upstream)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()

    def reusable(self, subject: StudySubject, fingerprint: str) -> R | Rejection | None:
        """The recorded outcome, if it has ``fingerprint`` and its outputs are intact."""
        path = self.record_path(subject)
        if not path.is_file():
            return None
        try:
            outcome = read_record(path, self.record_type)
        except (ValueError, KeyError, TypeError) as exc:  # damaged, or another version's record
            logger.warning("%s: unreadable %s record (%s); doing the %s again", path, self.name, exc, self.name)
            return None
        if outcome.fingerprint != fingerprint:  # type: ignore[attr-defined]
            return None
        if isinstance(outcome, Rejection):
            return outcome
        outputs = self.outputs(outcome)
        if not outputs:
            return outcome
        hashes = StatCache(output_stats_path(path), context={"stage": self.name})
        for name, file in outputs.items():
            if not _intact(file, hashes):
                logger.warning("site %s study %s: %s (%s) differs from its %s record; doing it again",
                               subject.site, subject.key, name, file.path, self.name)
                return None
        hashes.save()
        return outcome

    def run(self, upstream: tuple[Any, ...]) -> StageResult[R]:
        """Reuse the recorded outcome or do the work; record and return the outcome.

        Parameters
        ----------
        upstream
            The records of the earlier stages, oldest first.

        Returns
        -------
        StageResult
            The record or rejection, whether it was made now, and the wall time.
        """
        start = time.perf_counter()
        subject: StudySubject = upstream[0]
        fingerprint = self.fingerprint(upstream)
        reused = self.reusable(subject, fingerprint)
        if reused is not None:
            logger.info("site %s study %s: %s unchanged since the last run (%s)",
                        subject.site, subject.key, self.name, type(reused).__name__)
            return StageResult(self.name, reused, fresh=False, seconds=time.perf_counter() - start)
        path = self.record_path(subject)
        path.unlink(missing_ok=True)  # a stale record must not outlive a failed or interrupted redo
        outcome: R | Rejection
        try:
            outcome = self.produce(upstream, fingerprint)
            status = self.done
            logger.info("site %s study %s: %s", subject.site, subject.key, self.done)
        except CurationError as exc:
            outcome = self.rejection(subject, exc.reason, exc.message, fingerprint, findings=exc.findings)
            status = REJECTED
        except MemoryError:
            outcome = self.rejection(
                subject, RejectReason.UNREADABLE,
                f"{self.name} of study {subject.StudyInstanceUID} ran out of memory: an input is larger "
                "than its header says or than this machine holds",
                fingerprint,
            )
            status = REJECTED
        write_record(path, outcome, status=status)
        return StageResult(self.name, outcome, fresh=True, seconds=time.perf_counter() - start)

    def rejection(
        self,
        subject: StudySubject,
        reason: RejectReason,
        message: str,
        fingerprint: str,
        *,
        findings: tuple[Any, ...] = (),
    ) -> Rejection:
        """The :class:`~curation.model.Rejection` of ``subject`` by this stage (logged as a warning)."""
        verb = "rejected" if self.phase is Phase.INGEST else "held back"
        logger.warning("site %s study %s: %s at %s (%s): %s", subject.site, subject.key, verb, self.name,
                       reason, message)
        return Rejection(
            site=subject.site,
            StudyInstanceUID=subject.StudyInstanceUID,
            reason=reason,
            message=message,
            phase=self.phase,
            stage=self.name,
            fingerprint=fingerprint,
            findings=findings,
        )


class ChainError(Exception):
    """A stage of a chain raised an unexpected error; carries what the stages before it did.

    Parameters
    ----------
    stage
        The name of the stage that raised.
    error
        The error as one line (``"TypeName: message"``).
    results
        The results of the stages that completed before it.
    transient
        True when the error was file I/O that may pass (worth a retry).
    """

    def __init__(self, stage: str, error: str, results: tuple[StageResult[Any], ...], transient: bool) -> None:
        super().__init__(stage, error, results, transient)
        self.stage = stage
        self.error = error
        self.results = results
        self.transient = transient

    def __str__(self) -> str:
        """``"<stage>: <error>"``."""
        return f"{self.stage}: {self.error}"


#: OSErrors that will not pass by trying again.
PERMANENT_OS_ERRORS = (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def run_chain(stages: tuple[CaseStage[Any], ...], upstream: tuple[Any, ...]) -> tuple[StageResult[Any], ...]:
    """Run a case through ``stages`` in order, stopping at the first rejection.

    Each stage gets the records of the stages before it (see the module
    docstring): a build stage after ingest starts from ingest's converted case,
    not from the index's study record.

    Parameters
    ----------
    stages
        The stages, in order.
    upstream
        The first stage's upstream records.

    Returns
    -------
    tuple of StageResult
        One per stage run; shorter than ``stages`` when one rejected the case.

    Raises
    ------
    ChainError
        When a stage raises anything but a data problem; it carries the
        results of the stages before it, so none of their work goes unrecorded.
    """
    results: list[StageResult[Any]] = []
    for stage in stages:
        try:
            result = stage.run(upstream)
        except Exception as exc:
            transient = isinstance(exc, OSError) and not isinstance(exc, PERMANENT_OS_ERRORS)
            raise ChainError(stage.name, f"{type(exc).__name__}: {exc}", tuple(results), transient) from exc
        results.append(result)
        if isinstance(result.outcome, Rejection):
            break
        upstream = (result.outcome,) if stage.phase is Phase.INGEST else (*upstream, result.outcome)
    return tuple(results)
