"""Retry policy: which failures are retried, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

import grpc

__all__ = ["RetryPolicy", "retry_hint"]

_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"


def _metadata(call: Any) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for getter in ("trailing_metadata", "initial_metadata"):
        fn = getattr(call, getter, None)
        if fn is None:
            continue
        try:
            md = fn()
        except Exception:  # an error that is no grpc.Call
            md = None
        items.extend(md or ())
    return items


def retry_hint(call: Any) -> Optional[float]:
    """The delay, in seconds, a failed call's server asked for: ``google.rpc.RetryInfo`` in the
    ``grpc-status-details-bin`` trailer, else the ``retry-after`` header (whole seconds), else ``None``."""
    metadata = _metadata(call)
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, (bytes, bytearray)):
            delay = _retry_info_delay(bytes(value))
            if delay is not None:
                return delay
    for key, value in metadata:
        if key == "retry-after":
            try:
                seconds = float(value.decode("ascii") if isinstance(value, (bytes, bytearray)) else value)
            except (ValueError, UnicodeDecodeError):
                continue
            if seconds >= 0:
                return seconds
    return None


def _retry_info_delay(details: bytes) -> Optional[float]:
    from google.rpc import error_details_pb2, status_pb2

    try:
        status = status_pb2.Status.FromString(details)
    except Exception:
        return None
    for any_detail in status.details:
        if any_detail.type_url == _RETRY_INFO_TYPE:
            info = error_details_pb2.RetryInfo()
            if any_detail.Unpack(info) and info.HasField("retry_delay"):
                delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
                if delay >= 0:
                    return delay
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, within the call's deadline.

    A call is retried when it failed with UNAVAILABLE, or with RESOURCE_EXHAUSTED when the server said when to
    retry (``google.rpc.RetryInfo``, or a ``retry-after`` header). The server's delay is honoured (plus up to
    10 % jitter, never less); without one the n-th retry waits a random time up to
    ``min(max_backoff, initial_backoff * multiplier**(n-1))`` (full jitter). When the deadline leaves no room
    for the wait, the call fails at once with DEADLINE_EXCEEDED instead of sleeping past it.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    @staticmethod
    def none() -> "RetryPolicy":
        """No retries."""
        return RetryPolicy(max_attempts=1)

    def retryable(self, code: Optional[grpc.StatusCode], hint: Optional[float]) -> bool:
        if code == grpc.StatusCode.UNAVAILABLE:
            return True
        return code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None

    def delay(self, retry: int, hint: Optional[float]) -> float:
        """How long to wait before retry number ``retry`` (1 for the first)."""
        if hint is not None:
            return hint * (1.0 + 0.1 * random.random())
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return random.uniform(0.0, cap)
