"""The orchestration layer: Prefect flows and tasks, the audit log, the CLI (imports the core packages)."""
