"""``state_dir/build.lock``: one build of a release at a time (no Prefect here).

The CLI imports :class:`BuildInProgressError` from this module to turn a
refused build into exit code 1 without importing Prefect.
"""

from __future__ import annotations

import filelock

from curation.errors import RunRefusedError
from curation.state import StatePaths


class BuildInProgressError(RunRefusedError):
    """Another build of the same release holds ``state_dir/build.lock``."""


class BuildLock:
    """Hold ``state_dir/build.lock`` for the duration of a ``with`` block; refuse a second holder.

    Parameters
    ----------
    state
        The release's state folder (created if missing).
    """

    def __init__(self, state: StatePaths) -> None:
        state.root.mkdir(parents=True, exist_ok=True)
        self.path = state.build_lock
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> BuildLock:
        """Take the lock.

        Raises
        ------
        BuildInProgressError
            When another build (any process) holds it.
        """
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise BuildInProgressError(
                f"{self.path}: another build of this release is running (it holds this lock); "
                "wait for it to finish, then run again"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the lock."""
        self._lock.release()
