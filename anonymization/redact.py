"""Sentences for readers outside ``state_dir``: identifiers, UIDs and paths blanked.

Rejection sentences name series UIDs and files as evidence; that is right for
the audit log and the state folder (never released), and wrong for what a
whole team reads (Prefect artifacts on a shared server, the steward's report).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_UID_RE = re.compile(r"\b\d+(?:\.\d+){2,}\b")
_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"(),;:]+)+[/\\]?")


def public_sentence(text: str, identifiers: Iterable[str], roots: Iterable[str] = ()) -> str:
    """``text`` with every identifier, UID-looking number and file path replaced.

    Parameters
    ----------
    text
        A sentence (a rejection message, an error).
    identifiers
        Identifying values to blank (as ``<id>``); values under 3 characters are left.
    roots
        Configured folders: a path under one of them is blanked up to the
        ``": "`` that ends it in our sentences, so folder names with spaces (a
        patient's name, say) never show in part.

    Returns
    -------
    str
        The sentence with ``<path>``, ``<id>`` and ``<uid>`` in place of what it named.
    """
    for root in sorted((r for r in roots if r), key=len, reverse=True):
        text = re.sub(re.escape(root) + r".*?(?=: |$)", "<path>", text, flags=re.MULTILINE)
    for value in sorted((v for v in identifiers if len(v) >= 3), key=len, reverse=True):
        text = text.replace(value, "<id>")
    text = _UID_RE.sub("<uid>", text)
    return _PATH_RE.sub("<path>", text)
