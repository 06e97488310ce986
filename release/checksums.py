"""``SHA256SUMS`` in the format ``sha256sum -c`` reads: ``<hex>  <path>`` per line."""

from __future__ import annotations

import re
from collections.abc import Mapping

_LINE_RE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def sha256sums_text(digests: Mapping[str, str]) -> str:
    """The ``SHA256SUMS`` text for ``path -> sha256``, one line per path, sorted by path.

    Parameters
    ----------
    digests
        Path (relative, ``/``-separated) -> sha256 hex digest.

    Returns
    -------
    str
        One ``<sha256>  <path>`` line per path, each ending with a newline.

    Raises
    ------
    ValueError
        When a digest is not 64 lower-case hex digits or a path holds a line break
        (``sha256sum`` would escape it, and no release path needs one).
    """
    lines = []
    for path in sorted(digests):
        digest = digests[path]
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{path}: {digest!r} is not a sha256 hex digest")
        if "\n" in path or "\\" in path or "\r" in path:
            raise ValueError(f"{path!r}: a path with a line break or backslash cannot go into SHA256SUMS")
        lines.append(f"{digest}  {path}\n")
    return "".join(lines)


def parse_sha256sums(text: str, *, source: str = "SHA256SUMS") -> tuple[dict[str, str], list[str]]:
    """Read ``SHA256SUMS`` text.

    Parameters
    ----------
    text
        The file's text.
    source
        The name used in problem sentences.

    Returns
    -------
    digests, problems
        ``path -> sha256`` and one sentence per line that could not be read or
        repeats a path.
    """
    digests: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE_RE.match(line)
        if not match:
            problems.append(f"{source} line {number}: not '<sha256>  <path>'")
            continue
        digest, path = match.groups()
        if path in digests:
            problems.append(f"{source} line {number}: {path} is listed twice")
            continue
        digests[path] = digest
    return digests, problems
