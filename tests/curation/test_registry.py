"""The numbering registry: stable numbers, appended sites, withdrawal gaps, concurrency."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from curation.registry import (
    NumberingCandidate,
    Registry,
    format_case_number,
    parse_case_number,
)


def cand(rank: int, site: str, pid: str, date: str, uid: str) -> NumberingCandidate:
    return NumberingCandidate(site_rank=rank, site=site, PatientID=pid, StudyDate=date, StudyInstanceUID=uid)


# site order of the config beats alphabetical order: "zeta" comes first
ZETA = [
    cand(0, "zeta", "P2", "20200101", "1.2.9"),
    cand(0, "zeta", "P1", "20210101", "1.2.8"),
    cand(0, "zeta", "P1", "20200101", "1.2.7"),
]
ALPHA = [
    cand(1, "alpha", "A1", "20190101", "1.3.2"),
    cand(1, "alpha", "A1", "20190101", "1.3.1"),  # same patient and date: UID decides
]


def test_first_numbering_follows_site_order_then_patient_date_uid(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    got = reg.assign(list(reversed(ZETA + ALPHA)))  # input order must not matter
    assert got == {"1.2.7": 1, "1.2.8": 2, "1.2.9": 3, "1.3.1": 4, "1.3.2": 5}
    assert [e.number for e in reg.entries()] == [1, 2, 3, 4, 5]
    assert [e.site for e in reg.entries()] == ["zeta"] * 3 + ["alpha"] * 2
    assert all(e.assigned_at.endswith("Z") and not e.withdrawn for e in reg.entries())


def test_rebuild_keeps_numbers_and_new_site_appends(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    first = Registry(path).assign(ZETA)
    assert first == {"1.2.7": 1, "1.2.8": 2, "1.2.9": 3}
    # a rebuild from a fresh Registry object on the same file: same numbers
    assert Registry(path).assign(ZETA) == first
    # a site added *before* zeta in the config, plus a new zeta study that sorts first:
    # the existing numbers do not move, the new studies follow in order
    newcomers = [cand(0, "aaa", "X", "20000101", "9.9"), cand(1, "zeta", "P0", "19990101", "1.2.1")]
    zeta_again = [cand(1, "zeta", c.PatientID, c.StudyDate, c.StudyInstanceUID) for c in ZETA]
    got = Registry(path).assign(zeta_again + newcomers)
    assert got == {"1.2.7": 1, "1.2.8": 2, "1.2.9": 3, "9.9": 4, "1.2.1": 5}
    # a build that only sees part of the studies still gives the old numbers
    assert Registry(path).assign([zeta_again[0]]) == {"1.2.9": 3}


def test_withdrawal_keeps_the_gap_even_for_the_last_number(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    reg.assign(ZETA)
    entry = reg.withdraw(3, "consent withdrawn")
    assert (entry.number, entry.StudyInstanceUID, entry.withdrawn, entry.reason) == (
        3, "1.2.9", True, "consent withdrawn",
    )
    # withdrawn studies are not numbered again nor returned; the highest number stays retired
    got = reg.assign([*ZETA, *ALPHA])
    assert got == {"1.2.7": 1, "1.2.8": 2, "1.3.1": 4, "1.3.2": 5}
    assert reg.number_of("1.2.9") == 3
    # idempotent: the first reason stays
    again = reg.withdraw(3, "another reason")
    assert again.reason == "consent withdrawn" and again.withdrawn


def test_high_water_mark_survives_a_deleted_row(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    reg = Registry(path)
    reg.assign(ZETA)
    with sqlite3.connect(path) as db:  # simulate a damaged table losing its last row
        db.execute("DELETE FROM cases WHERE number = 3")
    assert reg.assign(ALPHA) == {"1.3.1": 4, "1.3.2": 5}


def test_withdraw_errors_name_the_number(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    reg.assign(ZETA)
    with pytest.raises(ValueError, match=r"case 0042 is not in the registry .*1 to 3"):
        reg.withdraw(42, "consent")
    with pytest.raises(ValueError, match="needs a reason"):
        reg.withdraw(1, "  ")
    assert reg.number_of("no.such.uid") is None


def test_conflicting_duplicate_candidate_is_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    with pytest.raises(ValueError, match=r"study 1\.2\.7 is a candidate twice"):
        reg.assign([ZETA[2], cand(0, "zeta", "OTHER", "20200101", "1.2.7")])
    assert reg.entries() == []  # nothing half-written
    assert reg.assign([ZETA[2], ZETA[2]]) == {"1.2.7": 1}


def test_case_number_format_grows_past_9999() -> None:
    assert format_case_number(1) == "0001"
    assert format_case_number(9999) == "9999"
    assert format_case_number(10000) == "10000"
    assert format_case_number(123456) == "123456"
    assert parse_case_number("0007") == 7 and parse_case_number("10000") == 10000
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="not a positive integer"):
            format_case_number(bad)
    with pytest.raises(ValueError, match="not a positive whole number"):
        parse_case_number("12a")


def test_numbers_past_9999(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    many = [cand(0, "s", f"P{i:05d}", "20200101", f"1.{i}") for i in range(10001)]
    got = reg.assign(many)
    assert got["1.0"] == 1 and got["1.10000"] == 10001
    assert format_case_number(got["1.10000"]) == "10001"
    assert sorted(got.values()) == list(range(1, 10002))


def _assign_one_by_one(path: str, prefix: str, count: int, ready: str, go: str) -> dict[str, int]:
    reg = Registry(Path(path))
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists():  # both processes start assigning at the same moment
        if time.monotonic() > deadline:
            raise TimeoutError("the test never said go")
        time.sleep(0.005)
    out: dict[str, int] = {}
    for i in range(count):
        # every call also proposes a study the other process proposes ("shared.i")
        out.update(reg.assign([cand(0, "s", prefix, "20200101", f"{prefix}.{i}"),
                               cand(0, "s", "shared", "20200101", f"shared.{i}")]))
    return out


def test_two_processes_never_give_the_same_number(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    Registry(path)
    go = tmp_path / "go"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        a = pool.submit(_assign_one_by_one, str(path), "A", 40, str(tmp_path / "ready.A"), str(go))
        b = pool.submit(_assign_one_by_one, str(path), "B", 40, str(tmp_path / "ready.B"), str(go))
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready.{x}").exists() for x in "AB") and time.monotonic() < deadline:
            time.sleep(0.005)
        go.touch()
        got_a, got_b = a.result(), b.result()
    entries = Registry(path).entries()
    numbers = [e.number for e in entries]
    # 40 A, 40 B and 40 shared studies: 120 distinct numbers 1..120, no duplicates
    assert sorted(numbers) == list(range(1, 121))
    assert len({e.StudyInstanceUID for e in entries}) == 120
    # both processes agree on the number of every shared study
    shared = {uid for uid in got_a if uid.startswith("shared.")}
    assert shared == {uid for uid in got_b if uid.startswith("shared.")}
    assert all(got_a[uid] == got_b[uid] for uid in shared)
    own_a = {n for uid, n in got_a.items() if uid.startswith("A.")}
    own_b = {n for uid, n in got_b.items() if uid.startswith("B.")}
    assert len(own_a) == len(own_b) == 40 and not own_a & own_b
