from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from curation.uids import DICOM_UID_ROOT, is_dicom_defined, iter_uids, uid_strings


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage  # DICOM-defined: never collected
    ds.SOPInstanceUID = "2.25.1001"
    ds.StudyInstanceUID = "2.25.1002"
    ds.ReferencedSOPClassUID = CTImageStorage
    ds.FailedSOPInstanceUIDList = ["2.25.1003", "2.25.1004"]
    reference = Dataset()
    reference.ReferencedSOPClassUID = CTImageStorage
    reference.ReferencedSOPInstanceUID = "2.25.1005"
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "2.25.1006"
    reference.ReferencedImageSequence = [inner]
    ds.SourceImageSequence = [reference]
    ds.PatientName = "2.25.9999"  # not a UI element: not a UID, even if it looks like one
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "UI", "2.25.1007")
    return ds


EXPECTED = {f"2.25.100{k}" for k in range(1, 8)}


def test_the_root_is_the_dicom_standards():
    assert DICOM_UID_ROOT == "1.2.840.10008."
    assert is_dicom_defined(CTImageStorage)
    assert not is_dicom_defined("2.25.1")
    assert not is_dicom_defined("1.2.840.100081.5")  # a different root that starts alike


def test_uid_strings_reads_raw_bytes_and_values():
    assert list(uid_strings(b"2.25.1\\1.2.840.10008.1.2\\2.25.2\x00")) == ["2.25.1", "2.25.2"]
    assert list(uid_strings(pydicom.multival.MultiValue(str, ["2.25.3", " "]))) == ["2.25.3"]
    assert list(uid_strings(None)) == []
    assert list(uid_strings("")) == []


def test_iter_uids_walks_sequences_and_private_elements():
    assert set(iter_uids(_dataset())) == EXPECTED


def _reread(ds: Dataset, transfer_syntax: str) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, force=True)


def test_iter_uids_reads_undecoded_files_of_either_vr_encoding():
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        read = _reread(_dataset(), syntax)
        found = set(iter_uids(read))
        public = EXPECTED - {"2.25.1007"}
        assert public <= found, syntax
        if syntax == ExplicitVRLittleEndian:  # implicit VR: an unknown private creator's VR is unknown
            assert found == EXPECTED
