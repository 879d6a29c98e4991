"""The embedded stack (Temporal dev server and PostgreSQL as child processes) and ``stead up``."""
