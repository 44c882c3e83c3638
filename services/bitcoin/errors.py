"""Errors every chain backend raises the same way (Core RPC, Esplora, the embedded regtest chain).

Lookups of unknown items raise LookupError; transport failures raise OSError (TimeoutError for timeouts).
"""


class BroadcastRejected(Exception):
    """The backend refused a transaction; `reason` is Core's reject reason when known (e.g. "dust")."""

    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code


class BackendAuthFailed(PermissionError):
    """The node refused our credentials (HTTP 401/403)."""
