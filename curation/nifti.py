"""Writing and reading NIfTI volumes the one way every stage does.

Writing: the header carries geometry only (descrip, aux_file, intent_name and
db_name are empty, no extensions, no scaling, qform and sform are the scanner
affine).  Files are written atomically and hashed while they are written, so the
same volume always gives the same bytes and the file is never read back;
:func:`compress_nifti` makes the bytes in memory, so a stage can compress a volume
before it knows whether it will write it (:func:`write_compressed`).

Compression is ISA-L's (the ``isal`` package), the same gzip format as zlib's
at 3-4 times the speed, and it releases the GIL.  A file is a series of
independent gzip members (RFC 1952: concatenated members are one valid gzip
file, read whole by nibabel, Python's ``gzip``, zlib's ``gzread``, ITK), as
bgzip writes them: the header (352 bytes) in a member of its own, stored, not
compressed (:func:`stored_member`: its bytes depend on nothing else), then the
voxels in members of whole planes (the last axis: z for the converted volumes)
of about :data:`GZIP_BLOCK` bytes, so member boundaries follow from the shape
and the voxel type alone.  Each member carries its own size in an FEXTRA
subfield (:data:`MEMBER_SUBFIELD`, like BGZF's ``BC`` but 32 bits; readers skip
unknown subfields), so a reader finds every member without inflating any:

* members are compressed and inflated on the stage's threads
  (:func:`curation.threads.stage_threads`), and the bytes do not depend on the
  number of threads;
* a member's bytes depend only on its own uncompressed bytes, so a stage that
  changes a few planes (defacing: the head's slab) re-compresses only the
  members holding them and copies the others (:class:`IndexedNifti`), and the
  file is byte for byte the one :func:`compress_nifti` makes of the whole volume.

The gzip header has no file name and mtime 0.

Deterministic bytes across machines: the compressed bytes depend on the volume,
:data:`GZIP_LEVEL`, :data:`GZIP_BLOCK` and the ISA-L release, which the pinned
``isal`` wheel fixes (``isal==1.9.1`` bundles ISA-L 2.32.1).  At levels 1 and 2
ISA-L's match finder has one algorithm in its SSE4.2, AVX and AVX2 kernels (a
CRC32C hash); the AVX-512 code it adds is the Huffman encoder of the same
symbols with the same tables.  So every x86-64 CPU with SSE4.2 (x86-64-v2:
every server since 2009) writes the same bytes.  Level 3 is not used: it picks
another match finder on AVX2 CPUs.  A CPU without SSE4.2 falls back to C code
with another hash, and aarch64 has kernels of its own; a release built there
would be valid but not byte-identical (``tests/curation/test_nifti.py`` pins the
bytes of a known volume, so such a machine fails the test suite loudly).  On
one machine too, ISA-L's one-shot call compressed the same input to other
(equivalent) bytes, rarely, depending on the calling thread: its level 1-2 loop
hashes the address of its state for a stream's third byte, so each member's first
bytes are deflated apart (:func:`gzip_member`); ``benchmarks/scaling.py`` names any
member that differs between its three builds of one release.

Reading: :func:`load_nifti` reads a file once (hashing its bytes) and inflates it
with ISA-L straight into the volume's own buffer, so a volume costs its own size;
:func:`gunzip` inflates every member of any gzip file (``isal_zlib.decompress``
and ``zlib.decompress`` stop after the first).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from isal import igzip, igzip_threaded, isal_zlib
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import ArrayLike

from curation.atomic import atomic_write_pieces
from curation.model import ImageFile
from curation.threads import stage_threads

#: ISA-L compression level of every written .nii.gz.  Measured on the bench phantom's CT
#: (512x512x320 int16): 62.8 MB at level 2 against 61.5 MB for zlib at level 1, in a
#: quarter of zlib's CPU time; level 1 is as fast and 1 % larger; level 3 is CPU-dependent.
GZIP_LEVEL = 2
#: Uncompressed bytes per gzip member of voxels, at most (a member holds whole planes, at least
#: one); 0.6 % larger than one stream, about as large as 1 MiB blocks sharing a dictionary.
GZIP_BLOCK = 1 << 20
#: The FEXTRA subfield of every member written: its id, then the member's size in bytes (4, little-endian).
MEMBER_SUBFIELD = b"PC"
#: A member's gzip header: magic, CM 8, FLG FEXTRA, MTIME 0, XFL 0, OS 255, XLEN 8, the subfield.
_MEMBER_HEAD = struct.Struct("<2sBBIBBH2sHI")
_MEMBER_TAIL = struct.Struct("<II")  # CRC-32, ISIZE

#: NIfTI header fields that could carry text from a source; always written empty.
HEADER_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")

#: What nibabel raises for a file that is not a readable NIfTI (a bad gzip stream included).
NIFTI_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, isal_zlib.error)


def clean_header(array: np.ndarray, affine: ArrayLike, dtype: type) -> nib.Nifti1Header:
    """The header :func:`write_nifti` writes for ``array`` (geometry only, no scaling, no text).

    Parameters
    ----------
    array
        The volume (only its shape is read: a zero-strided stand-in will do).
    affine
        Voxel -> world (RAS+ mm), 4x4.
    dtype
        The stored voxel type.

    Returns
    -------
    nibabel.Nifti1Header
        A single-file header whose data start at byte 352.
    """
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    hdr = img.header
    hdr.set_data_dtype(dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr.set_xyzt_units("mm", "sec")
    for field in HEADER_TEXT_FIELDS:
        hdr[field] = b""
    hdr.extensions.clear()
    img.set_sform(img.affine, code="scanner")
    img.set_qform(img.affine, code="scanner")
    img.update_header()
    hdr = img.header
    hdr.set_data_offset(352)
    return hdr


def _plane_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of one plane: one index of the last axis (of a 3-D or 4-D volume: x * y voxels)."""
    dims = [int(n) for n in shape]
    return int(np.prod(dims[:2] if len(dims) >= 3 else dims, dtype=np.int64)) * itemsize


def member_planes(shape: Sequence[int], itemsize: int) -> int:
    """Planes per voxel member of a volume: as many as fit in :data:`GZIP_BLOCK`, at least one."""
    plane = _plane_bytes(shape, itemsize)
    return max(1, GZIP_BLOCK // plane) if plane else 1


def _voxel_spans(shape: Sequence[int], itemsize: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each voxel member in the voxel bytes (Fortran order)."""
    total = int(np.prod([int(n) for n in shape], dtype=np.int64)) * itemsize
    step = member_planes(shape, itemsize) * _plane_bytes(shape, itemsize)
    return [(start, min(start + step, total)) for start in range(0, total, step)] if total else []


#: Bytes of a member deflated, and flushed (Z_SYNC_FLUSH), before the rest of it: see :func:`gzip_member`.
_PRIMER = 16


def gzip_member(data: bytes | memoryview) -> bytes:
    """One gzip member of ``data``: ISA-L at :data:`GZIP_LEVEL`, its size in the FEXTRA subfield.

    ISA-L's level 1-2 match finder (``igzip_icf_body_h1_gr_bt.asm``, label
    ``write_first_byte``, taken when its loop starts a stream with no history)
    files the stream's third byte in a hash bucket computed from a register that
    still holds the address of the compressor's state, not from the data.  A hash
    bucket is only a hint (every candidate match is compared), so the stream stays
    valid, but which match is found can then depend on where the state lives: the
    same bytes compressed on two threads (two stacks) gave two different streams
    for 20 of 200 small inputs.  The first :data:`_PRIMER` bytes are therefore
    deflated and flushed on their own, which ISA-L does in its end-of-input code
    (the loop never runs on 16 bytes and that code hashes the data); the loop then
    starts with history and never takes that branch.  The same 200 inputs on 150
    threads: one stream each.  This costs a few bytes per member (an empty stored
    block) and no time.

    Parameters
    ----------
    data
        The uncompressed bytes.

    Returns
    -------
    bytes
        The member (header, deflate stream, CRC-32 and size); its bytes depend on ``data`` only.
    """
    view = memoryview(data).cast("B")
    packer = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, -15)  # raw deflate
    return _member([packer.compress(view[:_PRIMER]), packer.flush(isal_zlib.Z_SYNC_FLUSH),
                    packer.compress(view[_PRIMER:]), packer.flush()], view)


def stored_member(data: bytes | memoryview) -> bytes:
    """One gzip member holding ``data`` as it is (deflate's stored blocks), its size in the FEXTRA subfield.

    A NIfTI header's member is written so: its 352 bytes would compress to about
    100, and its bytes then depend on no compressor at all (ISA-L's one-shot call
    once gave 102 and 103 bytes for the same header on two threads: see
    :func:`gzip_member`).
    """
    view = memoryview(data).cast("B")
    blocks: list[bytes] = []
    for at in range(0, max(len(view), 1), 0xFFFF):  # a stored block holds at most 65,535 bytes
        block = view[at : at + 0xFFFF]
        blocks += [struct.pack("<BHH", at + 0xFFFF >= len(view), len(block), len(block) ^ 0xFFFF), bytes(block)]
    return _member(blocks, view)


def _member(deflate: list[bytes], data: memoryview) -> bytes:
    """A gzip member: the header with the member's size, the ``deflate`` stream, the trailer of ``data``."""
    body = b"".join([*deflate, _MEMBER_TAIL.pack(isal_zlib.crc32(data), len(data) & 0xFFFFFFFF)])
    size = _MEMBER_HEAD.size + len(body)
    return _MEMBER_HEAD.pack(b"\x1f\x8b", 8, 4, 0, 0, 255, 8, MEMBER_SUBFIELD, 4, size) + body


def _compress_members(pieces: Sequence[bytes | memoryview]) -> list[bytes]:
    """:func:`gzip_member` of each piece, on the stage's threads (ISA-L releases the GIL)."""
    threads = stage_threads()
    if threads <= 1 or len(pieces) <= 1:
        return [gzip_member(piece) for piece in pieces]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(gzip_member, pieces))


def _voxel_bytes(array: np.ndarray) -> memoryview:
    """The voxels in Fortran order as bytes (a Fortran-ordered volume is not copied)."""
    voxels = np.asfortranarray(array)
    return memoryview(voxels.T).cast("B") if voxels.size else memoryview(b"")  # .T of F-order is C-contiguous


def _header_bytes(array: np.ndarray, affine: ArrayLike, dtype: type) -> bytes:
    stream = io.BytesIO()
    clean_header(array, affine, dtype).write_to(stream)  # 348 bytes and the 4-byte "no extensions" flag
    return stream.getvalue()


@dataclass(frozen=True)
class CompressedNifti:
    """A volume's ``.nii.gz`` bytes made in memory by :func:`compress_nifti`, not yet written.

    Attributes
    ----------
    pieces
        The file's bytes, in the pieces they were made in (its gzip members, or
        the members of a file read before): never joined, so a volume's file is
        not held twice (:attr:`data` joins them for a caller that needs one buffer).
    sha256
        Their sha256.
    shape, dtype, affine
        As :class:`~curation.model.ImageFile` records them.
    """

    pieces: tuple[bytes | memoryview, ...]
    sha256: str
    shape: tuple[int, ...]
    dtype: str
    affine: tuple[tuple[float, ...], ...]

    @property
    def data(self) -> bytes:
        """The file's bytes in one buffer (a copy of :attr:`pieces`)."""
        return b"".join(self.pieces)

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return sum(memoryview(piece).nbytes for piece in self.pieces)


def compress_nifti(data: ArrayLike, affine: ArrayLike, *, dtype: type) -> CompressedNifti:
    """The ``.nii.gz`` bytes of ``data`` with ``affine`` and a clean header (in memory).

    Parameters
    ----------
    data
        The volume, already of type ``dtype`` (no conversion happens here).
    affine
        Voxel -> world (RAS+ mm), 4x4.
    dtype
        ``np.int16``, ``np.float32`` or ``np.uint8``.

    Returns
    -------
    CompressedNifti
        The bytes and what a record says of them.

    Raises
    ------
    ValueError
        When ``data`` is not of type ``dtype``.
    """
    array = np.asanyarray(data)
    if array.dtype != np.dtype(dtype):
        raise ValueError(f"the volume is {array.dtype}, expected {np.dtype(dtype)}")
    data_bytes = _voxel_bytes(array)
    voxels = [data_bytes[a:b] for a, b in _voxel_spans(array.shape, array.dtype.itemsize)]
    pieces = [stored_member(_header_bytes(array, affine, dtype)), *_compress_members(voxels)]
    return _compressed(pieces, array.shape, dtype, affine)


#: Members a stream of slabs may have in compression at once per thread (:func:`compress_slabs`): its memory.
SLABS_PER_THREAD = 4


def compress_slabs(slabs: Iterable[np.ndarray], shape: Sequence[int], affine: ArrayLike, *,
                   dtype: type) -> CompressedNifti:
    """The ``.nii.gz`` bytes of a volume given as it is made, one member's planes at a time.

    Byte for byte :func:`compress_nifti` of the whole volume, but the volume is
    never whole in memory: each slab is compressed on a worker thread while the
    next is made, :data:`SLABS_PER_THREAD` per thread at most (a CT of 168 MB costs a few
    MB, not its size again in fresh memory).

    Parameters
    ----------
    slabs
        The planes of the volume, first to last, as C-ordered arrays indexed
        (plane, j, i): :func:`member_planes` planes each, fewer in the last.
        An error raised while they are made is raised here.
    shape
        The volume's (i, j, k) shape.
    affine
        Voxel -> world (RAS+ mm), 4x4.
    dtype
        The voxel type of every slab.

    Returns
    -------
    CompressedNifti
        The bytes and what a record says of them.

    Raises
    ------
    ValueError
        A slab of another type, order or size than the volume's members.
    """
    shape = tuple(int(n) for n in shape)
    spans = _voxel_spans(shape, np.dtype(dtype).itemsize)
    stand_in = np.broadcast_to(np.zeros((), dtype=dtype), shape)  # the header reads the shape only
    threads = stage_threads()
    in_flight = SLABS_PER_THREAD * threads
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        members: list[Future[bytes]] = [pool.submit(stored_member, _header_bytes(stand_in, affine, dtype))]
        count = 0
        for slab in slabs:
            if count == len(spans):
                raise ValueError(f"more slabs than the {len(spans)} members of a {shape} volume")
            start, stop = spans[count]
            if slab.dtype != np.dtype(dtype) or not slab.flags.c_contiguous or slab.nbytes != stop - start:
                raise ValueError(f"slab {count} is {slab.dtype} of {slab.nbytes} bytes, the member is "
                                 f"{np.dtype(dtype)} of {stop - start} bytes, C-contiguous")
            if len(members) > in_flight:  # the oldest done before another slab is handed over
                members[-in_flight - 1].result()
            members.append(pool.submit(gzip_member, memoryview(slab.reshape(-1)).cast("B")))
            count += 1
        if count != len(spans):
            raise ValueError(f"{count} slabs for the {len(spans)} members of a {shape} volume")
        pieces = [member.result() for member in members]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return _compressed(pieces, shape, dtype, affine)


def _compressed(pieces: Sequence[bytes | memoryview], shape: Sequence[int], dtype: type | np.dtype,
                affine: ArrayLike) -> CompressedNifti:
    """The :class:`CompressedNifti` of a file's bytes in ``pieces`` (their sha256 and what its record says)."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return CompressedNifti(
        pieces=tuple(pieces),
        sha256=digest.hexdigest(),
        shape=tuple(int(n) for n in shape),
        dtype=str(np.dtype(dtype)),
        affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64)),
    )


def write_compressed(volume: CompressedNifti, path: str | Path) -> ImageFile:
    """Write a :func:`compress_nifti` result to ``path`` atomically.

    Parameters
    ----------
    volume
        The bytes and their record.
    path
        The ``.nii.gz`` to write.

    Returns
    -------
    ImageFile
        Path, sha256 of the written bytes, shape, dtype and affine.
    """
    atomic_write_pieces(path, volume.pieces)
    return ImageFile(path=str(path), sha256=volume.sha256, shape=volume.shape, dtype=volume.dtype,
                     affine=volume.affine)


def write_nifti(data: ArrayLike, affine: ArrayLike, path: str | Path, *, dtype: type) -> ImageFile:
    """Write ``data`` with ``affine`` to ``path`` (``.nii.gz``) atomically, with a clean header.

    Parameters
    ----------
    data
        The volume, already of type ``dtype`` (no conversion happens here).
    affine
        Voxel -> world (RAS+ mm), 4x4.
    path
        The ``.nii.gz`` to write.
    dtype
        ``np.int16``, ``np.float32`` or ``np.uint8``.

    Returns
    -------
    ImageFile
        Path, sha256 of the written bytes, shape, dtype and affine.

    Raises
    ------
    ValueError
        When ``data`` is not of type ``dtype``.
    """
    try:
        volume = compress_nifti(data, affine, dtype=dtype)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return write_compressed(volume, path)


# ---------------------------------------------------------------------------
# reading members


@dataclass(frozen=True)
class GzipMember:
    """Where one gzip member of a file written here lies.

    Attributes
    ----------
    offset, size
        Its bytes in the file.
    start, length
        Its bytes in the uncompressed stream (``length`` from the member's ISIZE).
    """

    offset: int
    size: int
    start: int
    length: int


def _member_size(head: bytes | memoryview, pos: int, end: int) -> int | None:
    """The size of the member whose gzip header is ``head`` (at byte ``pos`` of a file of ``end`` bytes).

    None when it is not a member as :func:`gzip_member` writes it, or when its
    size does not fit between its header and trailer and the end of the file.
    """
    magic, method, flags, _, _, _, xlen, subfield, length, size = _MEMBER_HEAD.unpack(head)
    if (magic, method, flags, xlen, subfield, length) != (b"\x1f\x8b", 8, 4, 8, MEMBER_SUBFIELD, 4):
        return None
    if size < _MEMBER_HEAD.size + _MEMBER_TAIL.size or pos + size > end:
        return None
    return int(size)


def gzip_members(raw: bytes | memoryview) -> list[GzipMember] | None:
    """The members of a ``.nii.gz`` written by this module, found from their FEXTRA sizes alone.

    Parameters
    ----------
    raw
        The file's bytes.

    Returns
    -------
    list of GzipMember, or None
        None for any other file (another writer's gzip, one stream, a damaged
        member header): read it as a stream instead.  The members' contents are
        not checked here; :func:`inflate_member` checks each one.
    """
    view = memoryview(raw)
    members: list[GzipMember] = []
    pos = start = 0
    while pos < len(view):
        if len(view) - pos < _MEMBER_HEAD.size + _MEMBER_TAIL.size:
            return None
        size = _member_size(view[pos : pos + _MEMBER_HEAD.size], pos, len(view))
        if size is None:
            return None
        isize = int.from_bytes(view[pos + size - 4 : pos + size], "little")
        members.append(GzipMember(pos, size, start, isize))
        pos += size
        start += isize
    return members or None


def inflated_size(read: Callable[[int, int], bytes], size: int) -> int | None:
    """The uncompressed size of a ``.nii.gz`` written here, from its members' headers and sizes alone.

    Parameters
    ----------
    read
        ``read(offset, count)``: bytes of the file (two small reads per member).
    size
        The file's size.

    Returns
    -------
    int or None
        The sum of the members' ISIZE; None for any other file (its last four bytes say
        the size of its last member only when it has one).
    """
    total = pos = 0
    while pos < size:
        head = read(pos, _MEMBER_HEAD.size)
        if len(head) < _MEMBER_HEAD.size:
            return None
        member = _member_size(head, pos, size)
        if member is None:
            return None
        total += int.from_bytes(read(pos + member - 4, 4).ljust(4, b"\0"), "little")
        pos += member
    return total


def inflate_member(raw: bytes | memoryview, member: GzipMember) -> bytes:
    """One member inflated, its CRC-32 and size checked and its deflate stream ending where its size says.

    Raises
    ------
    isal.isal_zlib.error, EOFError
        A damaged member.
    """
    inflater = isal_zlib.decompressobj(wbits=31)
    data = inflater.decompress(memoryview(raw)[member.offset : member.offset + member.size])
    if not inflater.eof or inflater.unused_data or len(data) != member.length:
        raise EOFError(f"the gzip member at byte {member.offset} is damaged or not {member.size} bytes long")
    return data


def _inflate_into(raw: bytes | memoryview, members: Sequence[GzipMember], target: memoryview, base: int,
                  threads: int | None = None) -> None:
    """Inflate ``members`` into ``target`` (from uncompressed offset ``base``) on ``threads`` (None: the stage's)."""
    threads = stage_threads() if threads is None else threads

    def one(member: GzipMember) -> None:
        at = member.start - base
        target[at : at + member.length] = inflate_member(raw, member)

    if threads <= 1 or len(members) <= 1:
        for member in members:
            one(member)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, members))


def gunzip(raw: bytes | memoryview, *, threads: int | None = None) -> memoryview:
    """Every member of a gzip file inflated (any writer's; a file written here on ``threads`` threads).

    Parameters
    ----------
    raw
        The gzip file's bytes.
    threads
        Threads inflating the members of a file written here (1: the caller's
        thread only, for a caller that is itself one of several workers; None:
        :func:`curation.threads.stage_threads`).

    Returns
    -------
    memoryview
        The whole uncompressed stream (bytes, read-only for another writer's gzip).

    Raises
    ------
    isal.isal_zlib.error, EOFError, OSError
        Not a gzip file, or damaged or truncated.
    """
    members = gzip_members(raw)
    if members is None:
        return memoryview(igzip.decompress(bytes(raw) if isinstance(raw, memoryview) else raw))  # member by member
    # numpy's buffer is not zero-filled first (a bytearray's is: a pass over every byte)
    out = np.empty(members[-1].start + members[-1].length, dtype=np.uint8)
    _inflate_into(raw, members, memoryview(out), 0, threads)
    return memoryview(out)


class _PlaneProxy:
    """The voxels of an :class:`IndexedNifti` as an array-like: a slab of planes is inflated alone."""

    def __init__(self, source: IndexedNifti) -> None:
        self._source = source
        self.shape = source.shape
        self.dtype = source.dtype
        self.ndim = len(source.shape)

    def __getitem__(self, key: object) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) == 3 and all(isinstance(k, slice) and k.step in (None, 1) for k in parts):
            start, stop, _ = parts[2].indices(self.shape[2])  # type: ignore[union-attr]
            if stop > start:
                return self._source.planes(start, stop)[parts[0], parts[1], :]
        return np.asarray(self)[key]  # type: ignore[index]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        array = self._source.planes(0, self.shape[2])
        return array if dtype is None else array.astype(dtype)


class IndexedNifti:
    """A 3-D ``.nii.gz`` written by this module, held compressed: planes inflated and replaced by member.

    Build it with :meth:`from_bytes`.  :attr:`image` is a nibabel image whose
    ``dataobj`` inflates only the members a slab of planes (the last axis)
    needs; :meth:`with_planes` makes the file of the volume with some planes
    changed, copying the compressed bytes of every other member.
    """

    def __init__(self, raw: bytes, members: list[GzipMember], header: nib.Nifti1Header, path: str) -> None:
        self.raw = raw
        self.members = members
        self.header = header
        self.shape: tuple[int, int, int] = tuple(int(n) for n in header.get_data_shape())  # type: ignore[assignment]
        self.dtype = np.dtype(header.get_data_dtype())
        self.per_member = member_planes(self.shape, self.dtype.itemsize)
        self.image = nib.Nifti1Image(_PlaneProxy(self), header.get_best_affine(), header)
        self.image.set_filename(path)

    @classmethod
    def from_bytes(cls, raw: bytes, path: str | Path) -> IndexedNifti | None:
        """The file ``raw`` if it is a 3-D, unscaled NIfTI-1 volume in this module's member layout, else None.

        Raises
        ------
        isal.isal_zlib.error, EOFError, nibabel.spatialimages.HeaderDataError
            A damaged header member.
        """
        members = gzip_members(raw)
        if members is None or members[0].length != 352:
            return None
        head = inflate_member(raw, members[0])
        if int.from_bytes(head[:4], "little") != 348:
            return None
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(head))
        shape = tuple(int(n) for n in header.get_data_shape())
        if len(shape) != 3 or int(header.get_data_offset()) != 352 or header.extensions:
            return None
        if header.get_slope_inter() not in ((None, None), (1.0, 0.0)):
            return None
        spans = _voxel_spans(shape, np.dtype(header.get_data_dtype()).itemsize)
        if [(m.start - 352, m.start - 352 + m.length) for m in members[1:]] != spans:
            return None
        return cls(raw, members, header, str(path))

    def member_bounds(self, start: int, stop: int) -> tuple[int, int]:
        """The planes ``[a, b)`` of the members that hold planes ``[start, stop)``."""
        a = (start // self.per_member) * self.per_member
        b = min(-(-stop // self.per_member) * self.per_member, self.shape[2])
        return a, b

    def planes(self, start: int, stop: int) -> np.ndarray:
        """Planes ``[start, stop)`` of the last axis: a new writable Fortran-ordered array.

        Only the members holding them are inflated.
        """
        if not 0 <= start < stop <= self.shape[2]:
            raise ValueError(f"planes {start}:{stop} are not within the volume's {self.shape[2]}")
        a, b = self.member_bounds(start, stop)
        first, last = a // self.per_member, -(-b // self.per_member)
        plane = self.shape[0] * self.shape[1] * self.dtype.itemsize
        block = np.empty((*self.shape[:2], b - a), dtype=self.dtype, order="F")
        target = memoryview(block.T).cast("B")  # the transpose of Fortran order is C-contiguous
        _inflate_into(self.raw, self.members[1 + first : 1 + last], target, 352 + a * plane)
        return block[:, :, start - a : stop - a]

    def with_planes(self, start: int, planes: np.ndarray, affine: ArrayLike, *, dtype: type) -> CompressedNifti:
        """The file of this volume with planes ``start:`` replaced by ``planes``, with a clean header.

        Byte for byte the :func:`compress_nifti` of the whole changed volume:
        the changed members are compressed again, the others copied.

        Parameters
        ----------
        start
            The first plane replaced; it and the end of ``planes`` lie on member boundaries
            (:meth:`member_bounds`).
        planes
            The new planes (the volume's first two dimensions).
        affine
            The affine of the file written (its header is written anew, as :func:`compress_nifti` does).
        dtype
            The volume's voxel type.

        Raises
        ------
        ValueError
            When ``planes`` do not fit the volume or do not start and end on member boundaries.
        """
        stop = start + planes.shape[2]
        if (planes.shape[:2] != self.shape[:2] or np.dtype(dtype) != self.dtype or planes.dtype != self.dtype
                or self.member_bounds(start, stop) != (start, stop)):
            raise ValueError(f"planes {start}:{stop} of shape {planes.shape} ({planes.dtype}) do not replace "
                             f"whole members of a {self.shape} {self.dtype} volume")
        stand_in = np.broadcast_to(np.zeros((), dtype=self.dtype), self.shape)  # the header reads the shape only
        data = _voxel_bytes(planes)
        step = self.per_member * self.shape[0] * self.shape[1] * self.dtype.itemsize
        fresh = [stored_member(_header_bytes(stand_in, affine, dtype)),
                 *_compress_members([data[at : at + step] for at in range(0, len(data), step)])]
        first, last = start // self.per_member, -(-stop // self.per_member)
        view = memoryview(self.raw)

        def copied(members: Sequence[GzipMember]) -> list[memoryview]:
            return [view[m.offset : m.offset + m.size] for m in members]

        pieces = [fresh[0], *copied(self.members[1 : 1 + first]), *fresh[1:], *copied(self.members[1 + last :])]
        return _compressed(pieces, self.shape, self.dtype, affine)


@dataclass(frozen=True)
class LoadedNifti:
    """A NIfTI file read by :func:`load_nifti`.

    Attributes
    ----------
    image
        The image.  Read with its voxels, its ``dataobj`` is the unscaled voxel
        array (writable, Fortran order, in memory); read without, nibabel's lazy
        proxy over the compressed bytes (shape, affine and header are there).
    sha256
        The sha256 of the file's bytes (what a stage records for it).
    """

    image: nib.Nifti1Image | nib.Nifti2Image
    sha256: str

    @property
    def array(self) -> np.ndarray:
        """The stored voxel values, unscaled (``scl_slope`` / ``scl_inter`` not applied)."""
        return np.asanyarray(self.image.dataobj)

    def scaled(self) -> np.ndarray:
        """The voxel values with the header's ``scl_slope`` / ``scl_inter`` applied (if any)."""
        slope, inter = self.image.header.get_slope_inter()
        if (slope, inter) in ((None, None), (1.0, 0.0)):
            return self.array
        return self.array * (1.0 if slope is None else slope) + (0.0 if inter is None else inter)


def _image_class(first: bytes) -> type[nib.Nifti1Image] | type[nib.Nifti2Image]:
    """NIfTI-1 or NIfTI-2 from the header's ``sizeof_hdr`` (either byte order)."""
    for byteorder in ("little", "big"):
        size = int.from_bytes(first[:4], byteorder)
        if size == 348:
            return nib.Nifti1Image
        if size == 540:
            return nib.Nifti2Image
    raise ImageFileError(f"not a NIfTI-1 or NIfTI-2 header (sizeof_hdr bytes {first[:4].hex()})")


def _read_exact(stream: BinaryIO, size: int, path: str | Path) -> bytes:
    data = bytearray(size)
    got = read_into(stream, memoryview(data))
    if got != size:
        raise EOFError(f"{path}: the file ends after {got} of {size} header bytes")
    return bytes(data)


def read_into(stream: BinaryIO, target: memoryview) -> int:
    """Fill ``target`` from ``stream``; the bytes read (fewer only at the stream's end).

    A stream's end is believed only when it says so twice in a row: ISA-L's
    threaded reader (:mod:`isal.igzip_threaded`, 1.9) can report its end once too
    early, when its worker thread puts the last blocks and the end marker and stops
    between the reader's wait timing out and its check that the worker lives; the
    blocks are still queued and the next read returns them.  Without the second
    ask, a valid file read while the machine is busy would be refused as short.
    """
    got, ends = 0, 0
    while got < len(target) and ends < 2:
        count = stream.readinto(target[got:])
        got += count or 0
        ends = ends + 1 if not count else 0
    return got


def load_nifti(
    path: str | Path, *, voxels: bool = True, check: Callable[[tuple[int, ...], np.dtype], None] | None = None
) -> LoadedNifti:
    """Read a ``.nii.gz`` (or ``.nii``) file: its bytes once, hashed, inflated by ISA-L.

    The voxels are inflated straight into the array's own buffer (the members of
    a file written here on the stage's threads, any other gzip 1 MiB at a
    time on a second thread), so a volume costs its own size in memory (plus the
    compressed file while it is read).

    Parameters
    ----------
    path
        The file (gzip-compressed or not, NIfTI-1 or NIfTI-2, one file).
    voxels
        False to leave the voxels compressed (only the header and the hash
        are wanted): the image is then nibabel's lazy one.
    check
        Called with the header's data shape and voxel type before any voxel
        is inflated or any memory for them is taken (a header may claim any
        size); it raises to refuse the file.

    Returns
    -------
    LoadedNifti
        The image and the sha256 of the file.

    Raises
    ------
    OSError
        When the file cannot be read.
    nibabel.filebasedimages.ImageFileError, EOFError, ValueError, isal.isal_zlib.error
        When it is not a readable NIfTI file (damaged gzip stream, short data,
        bad header); see :data:`NIFTI_READ_ERRORS`.
    """
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    compressed = raw[:2] == b"\x1f\x8b"
    if not voxels:
        source: BinaryIO = igzip.IGzipFile(fileobj=io.BytesIO(raw), mode="rb") if compressed else io.BytesIO(raw)
        klass = _image_class(source.read(4))
        source.seek(0)
        lazy = klass.from_stream(source)
        lazy.set_filename(str(path))
        return LoadedNifti(lazy, digest)
    members = gzip_members(raw) if compressed else None
    stream: BinaryIO
    if members is not None:  # written here: the header's member alone, the voxels' members on threads
        stream = io.BytesIO(inflate_member(raw, members[0]))
    else:
        stream = igzip_threaded.open(io.BytesIO(raw), "rb", threads=1) if compressed else io.BytesIO(raw)
    with stream:
        first = _read_exact(stream, 4, path)
        klass = _image_class(first)
        sizeof = klass.header_class.template_dtype.itemsize
        head = first + _read_exact(stream, sizeof - 4, path)
        offset = int(klass.header_class(head, check=False).get_data_offset())
        head += _read_exact(stream, max(offset - sizeof, 0), path)
        header = klass.header_class.from_fileobj(io.BytesIO(head))  # the header and its extensions, checked
        if check is not None:
            check(tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype())
        array = np.empty(header.get_data_shape(), dtype=header.get_data_dtype(), order="F")
        if array.size:
            target = memoryview(array.T).cast("B")  # the transpose of Fortran order is C-contiguous
            if members is not None and members[0].length == offset and sum(m.length for m in members[1:]) == array.nbytes:
                _inflate_into(raw, members[1:], target, offset)
                got = array.nbytes
            elif members is not None:  # another layout of members: read them as one stream
                with igzip.IGzipFile(fileobj=io.BytesIO(raw), mode="rb") as whole:
                    _read_exact(whole, offset, path)
                    got = read_into(whole, target)
            else:
                got = read_into(stream, target)
            if got != array.nbytes:
                raise EOFError(f"{path}: {got} bytes of voxel data, the header says {array.nbytes}")
    del raw
    slope, inter = header.get_slope_inter()
    image = klass(array, header.get_best_affine(), header)
    # the in-memory image keeps the file's scaling (nibabel's constructor would drop it)
    if (slope, inter) not in ((None, None), (1.0, 0.0)):
        image.header.set_slope_inter(slope, inter)
    image.set_filename(str(path))
    return LoadedNifti(image, digest)
