from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from release.checksums import parse_sha256sums, sha256sums_text
from release.zipper import MemberChangedError, ZipMember, write_zip


def _members(tmp_path: Path) -> list[ZipMember]:
    nii = tmp_path / "a.nii.gz"
    nii.write_bytes(os.urandom(3000))
    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello " * 500)
    return [
        ZipMember("top/b/notes.txt", path=text),
        ZipMember("top/a/0001.nii.gz", path=nii, sha256=hashlib.sha256(nii.read_bytes()).hexdigest()),
        ZipMember("top/README.md", data=b"# card\n"),
    ]


def test_sorted_fixed_and_storage_types(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "r.zip"
    digests = write_zip(dest, _members(tmp_path))
    with zipfile.ZipFile(dest) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["top/README.md", "top/a/0001.nii.gz", "top/b/notes.txt"]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.external_attr >> 16 for i in infos} == {0o100644}
        methods = {i.filename: i.compress_type for i in infos}
        assert methods == {
            "top/README.md": zipfile.ZIP_DEFLATED,
            "top/a/0001.nii.gz": zipfile.ZIP_STORED,
            "top/b/notes.txt": zipfile.ZIP_DEFLATED,
        }
        assert zf.read("top/README.md") == b"# card\n"
        for info in infos:
            assert digests[info.filename] == hashlib.sha256(zf.read(info)).hexdigest()
        assert zf.testzip() is None


def test_same_members_same_bytes_whatever_the_input_order(tmp_path: Path) -> None:
    members = _members(tmp_path)
    write_zip(tmp_path / "one.zip", members)
    os.utime(members[0].path, (1, 1))  # file times must not leak into the zip
    write_zip(tmp_path / "two.zip", list(reversed(members)))
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()


def test_changed_source_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    members = _members(tmp_path)
    bad = ZipMember("top/z/0002.nii.gz", path=members[1].path, sha256="0" * 64)
    dest = tmp_path / "out" / "r.zip"
    with pytest.raises(MemberChangedError, match=r"a\.nii\.gz: content sha256 .* is not the recorded 0000"):
        write_zip(dest, [*members, bad])
    assert sorted(p.name for p in dest.parent.iterdir()) == []


def test_interrupt_leaves_old_zip_untouched(tmp_path: Path) -> None:
    members = _members(tmp_path)
    dest = tmp_path / "r.zip"
    write_zip(dest, members)
    before = dest.read_bytes()

    class Exploding(ZipMember):
        def open(self):  # a source whose read fails part-way through the stream
            class Reader(io.BytesIO):
                calls = 0

                def read(self, n: int = -1) -> bytes:
                    Reader.calls += 1
                    if Reader.calls > 1:
                        raise KeyboardInterrupt
                    return b"x" * 10

            return Reader()

    with pytest.raises(KeyboardInterrupt):
        write_zip(dest, [*members, Exploding("top/zz.txt", data=b"x" * 100)])
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.nii.gz", "notes.txt", "r.zip"])


def test_duplicate_names_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="listed twice: x"):
        write_zip(tmp_path / "r.zip", [ZipMember("x", data=b"1"), ZipMember("x", data=b"2")])


def test_large_member_streams_with_flat_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.nii.gz"
    with open(big, "wb") as fh:
        for _ in range(64):
            fh.write(os.urandom(1 << 20))
    tracemalloc.start()
    write_zip(tmp_path / "r.zip", [ZipMember("t/big.nii.gz", path=big)])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20, f"peak Python allocation {peak} bytes for a 64 MiB member"
    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        assert zf.getinfo("t/big.nii.gz").file_size == 64 << 20
        assert zf.testzip() is None


def test_sha256sums_round_trip() -> None:
    digests = {"b/x.nii.gz": "a" * 64, "README.md": "b" * 64}
    text = sha256sums_text(digests)
    assert text == f"{'b' * 64}  README.md\n{'a' * 64}  b/x.nii.gz\n"
    assert parse_sha256sums(text) == (digests, [])
    parsed, problems = parse_sha256sums(text + "junk\n" + f"{'c' * 64}  README.md\n")
    assert problems == ["SHA256SUMS line 3: not '<sha256>  <path>'", "SHA256SUMS line 4: README.md is listed twice"]
    assert parsed == digests  # the repeated line does not override the first
    with pytest.raises(ValueError, match="not a sha256"):
        sha256sums_text({"x": "XYZ"})


def test_zip64_headers_for_large_members_stay_readable_and_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import release.zipper as zipper

    monkeypatch.setattr(zipper, "_ZIP64_FROM", 1000)  # what a >= 1 GiB member gets, on a small one
    src = tmp_path / "m.nii.gz"
    src.write_bytes(os.urandom(5000))
    members = [ZipMember("t/m.nii.gz", path=src), ZipMember("t/small.txt", data=b"abc")]
    write_zip(tmp_path / "a.zip", members)
    write_zip(tmp_path / "b.zip", members)
    raw = (tmp_path / "a.zip").read_bytes()
    assert raw == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        big, small = zf.getinfo("t/m.nii.gz"), zf.getinfo("t/small.txt")
        assert zf.read(big) == src.read_bytes() and zf.read(small) == b"abc"
    # local header of the big member: extra field 0x0001 (ZIP64 extended information)
    name_len, extra_len = int.from_bytes(raw[26:28], "little"), int.from_bytes(raw[28:30], "little")
    assert raw[30 : 30 + name_len] == b"t/m.nii.gz" and extra_len > 0
    assert raw[30 + name_len : 32 + name_len] == b"\x01\x00"
    # the small member has none
    off = small.header_offset
    assert int.from_bytes(raw[off + 28 : off + 30], "little") == 0
