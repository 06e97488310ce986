"""Session-wide test set-up.

Prefect reads its settings when it is first imported, so the quiet, fast test
settings (see PREFECT_NOTES.md in the shared folder) are set here, before any
test module imports ``flows``.
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)  # tests always use the embedded engine

# ---------------------------------------------------------------------------
# shared fixtures (phantom sites) below
