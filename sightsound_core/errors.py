"""Which failures are worth retrying.

Transient: the network, a rate limit, a server error, a timeout, a GPU out of memory. Everything
else (bad input, a bug, a bad config) fails the same way on every attempt, so retrying it only
wastes time and API money; bad input is quarantined by the stages rather than raised at all.
"""

from __future__ import annotations


class InputRefused(Exception):
    """Input a stage will not use; it becomes a Quarantine row with ``reason`` and ``detail``.

    Attributes:
        reason: short machine-friendly code (the Quarantine reason).
        detail: human-readable detail naming the item.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransientError(Exception):
    """Raise (or wrap) to mark a failure as worth retrying."""


class OutOfMemoryError(TransientError):
    """A GPU ran out of memory in another process (a launched training job). Named like
    ``torch.cuda.OutOfMemoryError`` so ``is_out_of_memory`` tells both apart from other failures."""


_TRANSIENT_NAMES = {
    # openai / httpx client errors, matched by name so core needs neither library
    "RateLimitError",
    "APITimeoutError",
    "APIConnectionError",
    "InternalServerError",
    "ConnectTimeout",
    "ReadTimeout",
    "ConnectError",
    "RemoteProtocolError",
    # torch.cuda.OutOfMemoryError: a retry may run with a smaller batch
    "OutOfMemoryError",
}


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry can fix.

    >>> is_transient(TimeoutError()), is_transient(ConnectionResetError()), is_transient(ValueError())
    (True, True, False)
    >>> is_transient(FileNotFoundError("x"))
    False
    """
    if isinstance(exc, (TransientError, TimeoutError, ConnectionError)):
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__)


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU out-of-memory error: torch's, or ours from a launched process.

    >>> is_out_of_memory(OutOfMemoryError("rank 0")), is_out_of_memory(MemoryError())
    (True, False)
    """
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)
