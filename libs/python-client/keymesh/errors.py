"""The one error type of the keymesh client."""

from __future__ import annotations

from typing import Optional

import grpc

__all__ = ["KeymeshError"]


class KeymeshError(grpc.RpcError):
    """A call (or a local step standing in for one) failed.

    Carries the gRPC status code (:attr:`code_name`, e.g. ``"NOT_FOUND"``, and :attr:`code_number`, e.g. 5)
    and the server's message (:attr:`message`), as the server wrote it. The client never puts a secret, a
    token, key material or plaintext into one. It is a ``grpc.RpcError``, and like grpc's own errors it
    answers :meth:`code` and :meth:`details`, so existing handlers keep working.

    Local failures use the code the service would: a stream or envelope that does not open locally is
    INVALID_ARGUMENT "decryption failed"; a retry the deadline leaves no room for is DEADLINE_EXCEEDED.
    """

    def __init__(
        self,
        status: grpc.StatusCode,
        message: str,
        *,
        retry_delay: Optional[float] = None,
        local: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status: grpc.StatusCode = status
        self.message: str = message
        #: The delay the server asked for (RetryInfo or retry-after), in seconds, if it gave one.
        self.retry_delay: Optional[float] = retry_delay
        #: Raised here without a failed call (local decryption, deadline left no room for a retry).
        self.local: bool = local
        #: How many calls were made (retries included).
        self.attempts: int = attempts

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``"NOT_FOUND"``."""
        return self.status.name

    @property
    def code_number(self) -> int:
        """The status code's number, e.g. 5."""
        return int(self.status.value[0])

    def code(self) -> grpc.StatusCode:
        """The status code (as ``grpc.Call.code``)."""
        return self.status

    def details(self) -> str:
        """The server's message (as ``grpc.Call.details``)."""
        return self.message

    def to_dict(self) -> dict[str, object]:
        """``{"code": ..., "code_number": ..., "message": ...}``, e.g. for JSON logs."""
        return {"code": self.code_name, "code_number": self.code_number, "message": self.message}

    def __repr__(self) -> str:
        return f"KeymeshError({self.code_name}, {self.message!r})"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, *, attempts: int = 1) -> "KeymeshError":
        """Wraps an error a grpc call raised (a ``grpc.Call``)."""
        from ._retry import retry_hint  # avoid an import cycle

        if isinstance(error, KeymeshError):
            return error
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else None
        status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        return cls(status, details or "", retry_delay=retry_hint(error), attempts=attempts)
