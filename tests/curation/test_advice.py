"""Every reason code has advice for the steward."""

from __future__ import annotations

import pytest

from curation.advice import STEWARD_ADVICE, advice_for
from curation.errors import RejectReason


@pytest.mark.parametrize("reason", list(RejectReason))
def test_every_reason_code_has_advice(reason: RejectReason) -> None:
    text = advice_for(reason)
    assert text == STEWARD_ADVICE[reason]
    # a full sentence or two that says what to do, not the code repeated
    assert len(text) > 60 and text.endswith(".") and text[0].isupper()
    assert reason.value not in text


def test_advice_is_distinct_per_reason() -> None:
    assert set(STEWARD_ADVICE) == set(RejectReason)
    assert len(set(STEWARD_ADVICE.values())) == len(RejectReason)
