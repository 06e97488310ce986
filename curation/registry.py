"""The numbering registry: StudyInstanceUID -> case number, for ever.

Numbers are given from 1 in config site order, then by PatientID, StudyDate
and StudyInstanceUID within a site.  A number, once given, belongs to its
study for ever: a rebuild gives every study the number it had, new studies
(or a new site) get numbers after the highest number ever given, and a
withdrawn study keeps its number retired (a gap in the release).

Storage is one SQLite file in ``state_dir`` (:attr:`StatePaths.registry`).
Every change runs in a ``BEGIN IMMEDIATE`` transaction, which takes SQLite's
write lock before reading, so two processes assigning at once never give the
same number.  The database uses SQLite's default rollback journal, not WAL:
``state_dir`` may sit on a shared (network) filesystem for a cluster, where
WAL's shared-memory index does not work.

Withdrawn studies are left out of :meth:`Registry.assign`'s result: they are
never numbered again and never released.  ``assigned_at`` is kept in UTC for
the steward; it never reaches the release.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class NumberingCandidate:
    """A study that may be numbered, with the keys that order it.

    Attributes
    ----------
    site_rank
        Position of the site in the config.
    site
        The site's id.
    PatientID, StudyDate, StudyInstanceUID
        The study's, from the index.
    """

    site_rank: int
    site: str
    PatientID: str
    StudyDate: str
    StudyInstanceUID: str

    @property
    def order_key(self) -> tuple[int, str, str, str, str]:
        """Numbering order: site (config order), PatientID, StudyDate, StudyInstanceUID."""
        return (self.site_rank, self.site, self.PatientID, self.StudyDate, self.StudyInstanceUID)


@dataclass(frozen=True)
class RegistryEntry:
    """One numbered study as the registry holds it.

    Attributes
    ----------
    number
        The case number (see :func:`format_case_number`).
    StudyInstanceUID
        The numbered study.
    site
        The site that delivered it.
    withdrawn
        True once the case is withdrawn from later releases.
    reason
        Why it was withdrawn (``""`` while it is not).
    assigned_at
        When the number was given: UTC, ISO 8601.
    """

    number: int
    StudyInstanceUID: str
    site: str
    withdrawn: bool
    reason: str
    assigned_at: str


def format_case_number(number: int) -> str:
    """The case number as released: at least four digits (``0001``), wider past 9999.

    Parameters
    ----------
    number
        A case number from the registry.

    Returns
    -------
    str
        The zero-padded number.

    Raises
    ------
    ValueError
        When ``number`` is not a positive integer.
    """
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"case number {number!r} is not a positive integer")
    return f"{number:04d}"


def parse_case_number(text: str) -> int:
    """Read a case number as a steward types it (``0007`` or ``7``).

    Parameters
    ----------
    text
        Digits, leading zeros allowed, surrounding spaces ignored.

    Returns
    -------
    int
        The number.

    Raises
    ------
    ValueError
        When ``text`` is not a positive whole number.
    """
    if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) < 1:
        raise ValueError(f"case number {text!r} is not a positive whole number such as 0001")
    return int(text)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """The study -> case number registry in one SQLite file.

    Each call opens its own connection, so a Registry may be used from several
    threads or processes (and pickled) safely.

    Parameters
    ----------
    path
        The SQLite file (created with its folder on first use).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            db.execute(
                """CREATE TABLE IF NOT EXISTS cases (
                    number INTEGER PRIMARY KEY,
                    study_uid TEXT NOT NULL UNIQUE,
                    site TEXT NOT NULL,
                    withdrawn INTEGER NOT NULL DEFAULT 0,
                    reason TEXT NOT NULL DEFAULT '',
                    assigned_at TEXT NOT NULL,
                    withdrawn_at TEXT NOT NULL DEFAULT ''
                )"""
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (_SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('high_water', 0)")
            (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version != _SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path}: registry schema version {version}, this program reads {_SCHEMA_VERSION}"
                )

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write
        # lock is held from the first read to the commit
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def assign(self, candidates: Sequence[NumberingCandidate]) -> dict[str, int]:
        """Give every candidate study its case number.

        Studies already in the registry keep their number; new ones get
        numbers after the highest ever given, in (site_rank, site, PatientID,
        StudyDate, StudyInstanceUID) order.

        Parameters
        ----------
        candidates
            The studies to number (typically every releasable case of every site).

        Returns
        -------
        dict
            StudyInstanceUID -> number for every candidate **except withdrawn
            studies**, which are never numbered again nor released.

        Raises
        ------
        ValueError
            When one StudyInstanceUID is given twice with different details.
        """
        unique: dict[str, NumberingCandidate] = {}
        for cand in candidates:
            prior = unique.setdefault(cand.StudyInstanceUID, cand)
            if prior != cand:
                raise ValueError(
                    f"study {cand.StudyInstanceUID} is a candidate twice with different details: "
                    f"{prior} and {cand}"
                )
        ordered = sorted(unique.values(), key=lambda c: c.order_key)
        result: dict[str, int] = {}
        with self._transaction() as db:
            known = {
                uid: (number, bool(withdrawn), site)
                for uid, number, withdrawn, site in db.execute(
                    "SELECT study_uid, number, withdrawn, site FROM cases"
                )
            }
            (high_water,) = db.execute("SELECT value FROM meta WHERE key = 'high_water'").fetchone()
            (max_number,) = db.execute("SELECT COALESCE(MAX(number), 0) FROM cases").fetchone()
            next_number = max(int(high_water), int(max_number)) + 1
            now = _utc_now()
            for cand in ordered:
                uid = cand.StudyInstanceUID
                if uid in known:
                    number, withdrawn, site = known[uid]
                    if site != cand.site:
                        logger.warning(
                            "study %s is numbered %d for site %s but now comes from site %s; it keeps its number",
                            uid, number, site, cand.site,
                        )
                    if not withdrawn:
                        result[uid] = number
                    continue
                db.execute(
                    "INSERT INTO cases (number, study_uid, site, assigned_at) VALUES (?, ?, ?, ?)",
                    (next_number, uid, cand.site, now),
                )
                logger.info("study %s of site %s numbered %s", uid, cand.site, format_case_number(next_number))
                result[uid] = next_number
                next_number += 1
            db.execute("UPDATE meta SET value = ? WHERE key = 'high_water'", (next_number - 1,))
        return result

    def withdraw(self, number: int, reason: str) -> RegistryEntry:
        """Withdraw a case from every later release; its number stays retired.

        Withdrawing a case that is already withdrawn changes nothing and
        returns its entry (with the first reason).

        Parameters
        ----------
        number
            The case number.
        reason
            Why (recorded; must not be empty).

        Returns
        -------
        RegistryEntry
            The case's entry after the withdrawal.

        Raises
        ------
        ValueError
            When ``number`` was never given, or ``reason`` is empty.
        """
        if not reason.strip():
            raise ValueError(f"case {format_case_number(number)}: a withdrawal needs a reason")
        with self._transaction() as db:
            row = db.execute("SELECT withdrawn FROM cases WHERE number = ?", (number,)).fetchone()
            if row is None:
                (high,) = db.execute("SELECT COALESCE(MAX(number), 0) FROM cases").fetchone()
                raise ValueError(
                    f"case {format_case_number(number)} is not in the registry {self.path} "
                    f"(numbers given so far: 1 to {high})"
                )
            if not row[0]:
                db.execute(
                    "UPDATE cases SET withdrawn = 1, reason = ?, withdrawn_at = ? WHERE number = ?",
                    (reason.strip(), _utc_now(), number),
                )
                logger.info("case %s withdrawn: %s", format_case_number(number), reason.strip())
            entry = self._entry(db, number)
        return entry

    def entries(self) -> list[RegistryEntry]:
        """Every numbered study, withdrawn ones included, by number.

        Returns
        -------
        list[RegistryEntry]
            In increasing number order.
        """
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT number, study_uid, site, withdrawn, reason, assigned_at FROM cases ORDER BY number"
            ).fetchall()
        return [RegistryEntry(n, uid, site, bool(w), reason, at) for n, uid, site, w, reason, at in rows]

    def number_of(self, study_uid: str) -> int | None:
        """The number given to ``study_uid`` (withdrawn or not), or None.

        Parameters
        ----------
        study_uid
            A StudyInstanceUID.

        Returns
        -------
        int or None
            Its case number, or None when it was never numbered.
        """
        with self._transaction(write=False) as db:
            row = db.execute("SELECT number FROM cases WHERE study_uid = ?", (study_uid,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _entry(db: sqlite3.Connection, number: int) -> RegistryEntry:
        n, uid, site, w, reason, at = db.execute(
            "SELECT number, study_uid, site, withdrawn, reason, assigned_at FROM cases WHERE number = ?",
            (number,),
        ).fetchone()
        return RegistryEntry(n, uid, site, bool(w), reason, at)
