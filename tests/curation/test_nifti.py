"""The one NIfTI writer and reader: nibabel's bytes, ISA-L's deterministic gzip, one read per load."""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from curation import nifti
from curation.nifti import HEADER_TEXT_FIELDS, NIFTI_READ_ERRORS, load_nifti, read_into, write_nifti
from curation.threads import ENVIRONMENT

AFFINE = np.array([[-0.98, 0.0, 0.0, 251.3], [0.0, 0.98, 0.0, -240.1], [0.0, 0.0, 2.5, -1203.0], [0, 0, 0, 1.0]])


def _volume(seed: int = 3, shape: tuple[int, int, int] = (96, 80, 150)) -> np.ndarray:
    """A CT-like int16 volume: smooth structure plus noise (several gzip blocks)."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    body = ((i - shape[0] / 2) ** 2 + (j - shape[1] / 2) ** 2 < (shape[0] / 3) ** 2) * 1000 - 1000
    return (body + (k % 7) * 20 + rng.normal(0, 15, shape)).astype(np.int16)


def _nibabel_payload(array: np.ndarray, dtype: type) -> bytes:
    """The uncompressed file nibabel's own writer makes of the same clean header."""
    img = nib.Nifti1Image(array, AFFINE)
    hdr = img.header
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_xyzt_units("mm", "sec")
    for field in HEADER_TEXT_FIELDS:
        hdr[field] = b""
    img.set_sform(img.affine, code="scanner")
    img.set_qform(img.affine, code="scanner")
    return img.to_bytes()


@pytest.mark.parametrize(
    ("dtype", "array"),
    [
        (np.int16, _volume()),
        (np.float32, np.random.default_rng(1).random((33, 40, 21), dtype=np.float32)),
        (np.uint8, np.random.default_rng(2).integers(0, 9, (64, 50, 40), dtype=np.uint8)),  # C order
    ],
)
def test_the_uncompressed_bytes_are_nibabels(tmp_path, dtype, array):
    image = write_nifti(array, AFFINE, tmp_path / "v.nii.gz", dtype=dtype)
    raw = (tmp_path / "v.nii.gz").read_bytes()
    assert gzip.decompress(raw) == _nibabel_payload(array, dtype)
    assert hashlib.sha256(raw).hexdigest() == image.sha256
    assert raw[3] == 4 and raw[4:8] == b"\x00\x00\x00\x00"  # FEXTRA (the member size) only: no file name; mtime 0
    assert image.affine == tuple(tuple(float(v) for v in row) for row in AFFINE)


def test_the_bytes_do_not_depend_on_threads_or_memory_order(tmp_path, monkeypatch):
    volume = _volume()
    digests = set()
    for threads in (1, 2, 3):
        monkeypatch.setenv(ENVIRONMENT, str(threads))
        for n, array in enumerate((volume, np.asfortranarray(volume), np.ascontiguousarray(volume))):
            digests.add(write_nifti(array, AFFINE, tmp_path / f"{threads}-{n}.nii.gz", dtype=np.int16).sha256)
    assert len(digests) == 1


def test_a_member_s_bytes_do_not_depend_on_the_thread_that_compresses_it() -> None:
    # ISA-L's level 1-2 loop hashes the address of its state for a stream's third byte
    # (curation.nifti.gzip_member); the state lives on the calling thread's stack, so 64 live
    # threads are 64 addresses.  ISA-L's own one-shot call (igzip_lib.compress) gave 2 streams
    # for 4 of these 200 inputs on 48 threads.
    rng = np.random.default_rng(0)
    inputs = []
    for _ in range(200):  # header-like: mostly zeros, a few small values
        data = np.zeros(352, np.uint8)
        data[:40], data[100:140] = rng.integers(0, 4, 40), rng.integers(0, 3, 40)
        inputs.append(data.tobytes())
    threads = 64
    barrier = threading.Barrier(threads)  # all alive at once: every stack at its own address
    streams: list[list[bytes]] = [[] for _ in range(threads)]

    def compress(out: list[bytes]) -> None:
        out.extend(nifti.gzip_member(data) for data in inputs)
        barrier.wait()

    workers = [threading.Thread(target=compress, args=(out,)) for out in streams]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert all(len(out) == len(inputs) for out in streams)
    differing = [i for i in range(len(inputs)) if len({out[i] for out in streams}) > 1]
    assert differing == []
    assert all(gzip.decompress(member) == data for member, data in zip(streams[0], inputs, strict=True))


#: sha256 of ``_volume()`` written by write_nifti: the header's member stored, then ISA-L 2.32.1
#: (isal 1.9.1) at GZIP_LEVEL 2, members of whole planes of at most 1 MiB each compressed on its own (its first
#: 16 bytes deflated and flushed before the rest: curation.nifti.gzip_member), on any x86-64
#: CPU with SSE4.2.  A machine (or an isal release) that compresses differently cannot build
#: byte-identical releases: this is where it shows (see curation.nifti).
KNOWN_ANSWER_SHA256 = "dc445483a1a794dcb14cece76abd04438d569c18ae4f7dfff96551d84b13c4cc"


def test_the_compressed_bytes_are_the_known_answer(tmp_path):
    assert (nifti.GZIP_LEVEL, nifti.GZIP_BLOCK) == (2, 1 << 20)
    image = write_nifti(_volume(), AFFINE, tmp_path / "v.nii.gz", dtype=np.int16)
    assert image.sha256 == KNOWN_ANSWER_SHA256


def test_load_reads_once_into_a_writable_array_with_the_files_hash(tmp_path):
    volume = _volume()
    image = write_nifti(volume, AFFINE, tmp_path / "v.nii.gz", dtype=np.int16)
    loaded = load_nifti(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(loaded.array, volume)
    assert loaded.array.flags.writeable and loaded.array.flags.f_contiguous
    assert loaded.sha256 == image.sha256
    np.testing.assert_allclose(loaded.image.affine, AFFINE, atol=1e-4)
    assert loaded.image.get_filename() == str(tmp_path / "v.nii.gz")


def test_load_applies_the_files_scaling_only_when_asked(tmp_path):
    stored = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    payload = bytearray(nib.Nifti1Image(stored, AFFINE).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(payload))  # nibabel's writer would rescale
    header["scl_slope"], header["scl_inter"] = 0.5, 1.0
    payload[:348] = header.binaryblock
    path = tmp_path / "scaled.nii"  # uncompressed files are read too
    path.write_bytes(payload)
    loaded = load_nifti(path)
    np.testing.assert_array_equal(loaded.array, stored)
    np.testing.assert_allclose(loaded.scaled(), stored * 0.5 + 1.0)


def test_load_reads_nifti2(tmp_path):
    data = np.ones((4, 5, 6), dtype=np.uint8)
    nib.save(nib.Nifti2Image(data, AFFINE), tmp_path / "two.nii.gz")
    loaded = load_nifti(tmp_path / "two.nii.gz")
    assert isinstance(loaded.image, nib.Nifti2Image)
    np.testing.assert_array_equal(loaded.array, data)


@pytest.mark.parametrize("damage", ["truncated", "not-gzip", "not-nifti"])
def test_a_damaged_file_raises_a_read_error(tmp_path, damage):
    write_nifti(_volume(shape=(20, 20, 20)), AFFINE, tmp_path / "v.nii.gz", dtype=np.int16)
    raw = (tmp_path / "v.nii.gz").read_bytes()
    bad = {
        "truncated": raw[: len(raw) // 2],
        "not-gzip": b"\x1f\x8b" + b"\x00" * 200,
        "not-nifti": gzip.compress(b"\x00" * 400),
    }[damage]
    (tmp_path / "bad.nii.gz").write_bytes(bad)
    with pytest.raises(NIFTI_READ_ERRORS):
        load_nifti(tmp_path / "bad.nii.gz")


def test_a_file_is_gzip_members_of_whole_planes_each_with_its_size():
    """The header alone, then members of whole planes; each member's FEXTRA subfield says its size."""
    volume = _volume()  # 96 x 80 planes of int16: 15,360 bytes, 68 planes a member
    raw = nifti.compress_nifti(volume, AFFINE, dtype=np.int16).data
    members = nifti.gzip_members(raw)
    assert members is not None
    assert [m.length for m in members] == [352, *[68 * 15360] * 2, 14 * 15360]
    assert sum(m.size for m in members) == len(raw)
    for member in members:
        head = raw[member.offset : member.offset + 20]
        assert head[:4] == b"\x1f\x8b\x08\x04" and head[12:16] == b"PC\x04\x00"  # deflate, FEXTRA, our subfield
        assert int.from_bytes(head[16:20], "little") == member.size
        assert gzip.decompress(raw[member.offset : member.offset + member.size])  # each a gzip file of its own
    assert nifti.gzip_members(gzip.compress(raw)) is None  # any other gzip: read as one stream


def test_every_reader_reads_every_member(tmp_path):
    """Concatenated members are one gzip file: nibabel, Python's gzip, ISA-L's and ours read all of them."""
    from isal import igzip, isal_zlib

    from curation.qc import _gzip_reader

    volume = _volume()
    write_nifti(volume, AFFINE, tmp_path / "v.nii.gz", dtype=np.int16)
    raw = (tmp_path / "v.nii.gz").read_bytes()
    payload = _nibabel_payload(volume, np.int16)
    assert len(nifti.gzip_members(raw) or []) == 4
    assert gzip.decompress(raw) == payload
    with gzip.open(tmp_path / "v.nii.gz", "rb") as stream:
        assert stream.read() == payload
    assert igzip.decompress(raw) == payload
    assert bytes(nifti.gunzip(raw)) == payload
    assert bytes(nifti.gunzip(gzip.compress(payload))) == payload  # another writer's single stream
    qc_reader = _gzip_reader(memoryview(raw))  # the QC pictures' reader
    into = bytearray(len(payload) + 1)
    got = 0
    while chunk := qc_reader.readinto(memoryview(into)[got:]):
        got += chunk
    assert got == len(payload) and bytes(into[:got]) == payload
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "v.nii.gz").dataobj), volume)
    np.testing.assert_array_equal(load_nifti(tmp_path / "v.nii.gz").array, volume)
    assert isal_zlib.decompress(raw, wbits=31) == payload[:352]  # why gunzip exists: this stops after one member


def test_a_damaged_member_in_the_middle_is_refused(tmp_path):
    raw = bytearray(nifti.compress_nifti(_volume(), AFFINE, dtype=np.int16).data)
    member = (nifti.gzip_members(bytes(raw)) or [])[2]
    raw[member.offset + member.size // 2] ^= 0xFF
    (tmp_path / "bad.nii.gz").write_bytes(raw)
    with pytest.raises(NIFTI_READ_ERRORS):
        load_nifti(tmp_path / "bad.nii.gz")
    with pytest.raises(NIFTI_READ_ERRORS):
        nifti.gunzip(bytes(raw))


def test_planes_are_read_and_replaced_member_by_member_giving_the_bytes_of_the_whole(tmp_path):
    """IndexedNifti inflates only a slab's members and re-compresses only the changed ones: same bytes as a full write."""
    volume = _volume()
    raw = nifti.compress_nifti(volume, AFFINE, dtype=np.int16).data
    indexed = nifti.IndexedNifti.from_bytes(raw, tmp_path / "v.nii.gz")
    assert indexed is not None and indexed.per_member == 68
    np.testing.assert_array_equal(indexed.planes(70, 100), volume[:, :, 70:100])
    np.testing.assert_array_equal(np.asanyarray(indexed.image.dataobj[10:20, :, 140:150]), volume[10:20, :, 140:150])
    assert indexed.member_bounds(70, 100) == (68, 136) and indexed.member_bounds(140, 150) == (136, 150)
    first, stop = indexed.member_bounds(70, 100)
    planes = indexed.planes(first, stop)
    planes[5:30, 7:40, 2:31] = -1000
    changed = volume.copy()
    changed[:, :, first:stop] = planes
    patched = indexed.with_planes(first, planes, indexed.image.affine, dtype=np.int16)
    whole = nifti.compress_nifti(changed, indexed.image.affine, dtype=np.int16)
    assert patched.data == whole.data and patched.sha256 == whole.sha256
    # the members outside the slab are the file's own bytes
    old, new = nifti.gzip_members(raw) or [], nifti.gzip_members(patched.data) or []
    assert raw[old[1].offset : old[1].offset + old[1].size] == patched.data[new[1].offset : new[1].offset + new[1].size]
    with pytest.raises(ValueError, match="do not replace whole members"):
        indexed.with_planes(70, planes, AFFINE, dtype=np.int16)
    # another writer's file is not indexed (and is read whole instead)
    nib.save(nib.Nifti1Image(volume, AFFINE), tmp_path / "nibabel.nii.gz")
    assert nifti.IndexedNifti.from_bytes((tmp_path / "nibabel.nii.gz").read_bytes(), "nibabel.nii.gz") is None


@pytest.mark.parametrize(("shape", "dtype"), [((37, 29, 23), np.int16), ((300, 260, 11), np.int16),
                                              ((50, 41, 9), np.float32), ((8, 8, 1), np.uint8)])
def test_a_volume_compressed_slab_by_slab_is_the_volume_compressed_whole(shape, dtype) -> None:
    from curation.nifti import compress_nifti, compress_slabs, member_planes

    rng = np.random.default_rng(3)
    volume = (rng.normal(0, 300, size=shape)).astype(dtype)  # (i, j, k)
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    planes = member_planes(shape, np.dtype(dtype).itemsize)
    by_plane = np.ascontiguousarray(volume.transpose(2, 1, 0))  # (k, j, i): a slab's C order
    slabs = (by_plane[k : k + planes].copy() for k in range(0, shape[2], planes))
    assert compress_slabs(slabs, shape, affine, dtype=dtype) == compress_nifti(volume, affine, dtype=dtype)


def test_slabs_that_do_not_make_the_volume_are_refused_and_a_slab_maker_s_error_comes_through() -> None:
    from curation.nifti import compress_slabs, member_planes

    shape, affine = (300, 260, 11), np.eye(4)
    planes = member_planes(shape, 2)
    slab = np.zeros((planes, 260, 300), dtype=np.int16)
    with pytest.raises(ValueError, match="slabs for the"):
        compress_slabs([slab], shape, affine, dtype=np.int16)  # too few
    with pytest.raises(ValueError, match="slab 0 is float32"):
        compress_slabs([slab.astype(np.float32)], shape, affine, dtype=np.int16)

    def failing():
        yield slab
        raise RuntimeError("slice 7 cannot be read")

    with pytest.raises(RuntimeError, match="slice 7"):
        compress_slabs(failing(), shape, affine, dtype=np.int16)


class _EndsTooEarlyOnce(io.RawIOBase):
    """A stream that says "end" once before its last bytes, as ISA-L's threaded reader can when busy."""

    def __init__(self, data: bytes, early_at: int) -> None:
        self._data, self._pos, self._early_at = data, 0, early_at

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._pos == self._early_at:
            self._early_at = -1
            return 0
        n = min(len(b), len(self._data) - self._pos, 1000)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_read_into_believes_a_stream_s_end_only_when_it_says_so_twice() -> None:
    data = bytes(range(256)) * 20
    target = bytearray(len(data))
    assert read_into(_EndsTooEarlyOnce(data, early_at=3000), memoryview(target)) == len(data)
    assert bytes(target) == data
    # a stream that really ends short is still short
    longer = bytearray(len(data) + 10)
    assert read_into(io.BytesIO(data), memoryview(longer)) == len(data)


def test_a_single_stream_gzip_is_read_whole_by_isal_s_threaded_reader(tmp_path: Path) -> None:
    # nibabel's own .nii.gz (one gzip stream, not our members): read through igzip_threaded
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 40, (64, 48, 200), dtype=np.uint8)
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    for _ in range(5):
        assert np.array_equal(np.asanyarray(load_nifti(path).image.dataobj), arr)


@pytest.mark.parametrize("size", [0, 1, 352, 0xFFFF, 0xFFFF + 1, 3 * 0xFFFF + 7])
def test_a_stored_member_is_gzip_every_reader_reads(size: int) -> None:
    data = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    member = nifti.stored_member(data)
    assert gzip.decompress(member) == data
    assert nifti.gzip_members(member) == [nifti.GzipMember(0, len(member), 0, size)]
    assert nifti.inflate_member(member, nifti.gzip_members(member)[0]) == data
    assert member == nifti.stored_member(memoryview(data))  # the bytes depend on the data only


def test_a_written_volume_s_header_member_is_stored_and_its_voxels_compressed(tmp_path: Path) -> None:
    image = write_nifti(_volume(), AFFINE, tmp_path / "v.nii.gz", dtype=np.int16)
    raw = (tmp_path / "v.nii.gz").read_bytes()
    head, *voxels = nifti.gzip_members(raw)
    assert raw[head.offset : head.offset + head.size] == nifti.stored_member(raw_header := gzip.decompress(
        raw[head.offset : head.offset + head.size]))
    assert len(raw_header) == 352
    assert sum(m.size for m in voxels) < 0.8 * sum(m.length for m in voxels)  # the voxels are compressed
    assert np.array_equal(np.asanyarray(nib.load(image.path).dataobj), _volume())
