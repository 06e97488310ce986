from __future__ import annotations

from curation.errors import CurationError, NoCTError, RejectReason


def test_every_reason_code_has_exactly_one_error_class():
    classes = CurationError.__subclasses__()
    by_reason = {cls.reason: cls for cls in classes}
    assert len(by_reason) == len(classes), "two error classes share a reason code"
    assert set(by_reason) == set(RejectReason)


def test_an_error_carries_its_reason_and_message():
    error = NoCTError("study 1.2.3: no CT series")
    assert error.reason is RejectReason.NO_CT
    assert error.message == str(error) == "study 1.2.3: no CT series"
    assert f"{error.reason}" == "no-ct"
