"""How an application proves who it is, and the access-token cache."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import grpc

from .errors import KeymeshError

__all__ = ["Credentials", "SUBJECT_TOKEN_TYPE_JWT"]

SUBJECT_TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"

# IssueToken's GrantType numbers (token_service.proto); kept here so this module needs no generated code.
_GRANT_CLIENT_CREDENTIALS = 1
_GRANT_TOKEN_EXCHANGE = 3

PathLike = Union[str, "os.PathLike[str]"]


class Credentials:
    """An application's client id and secret, or a platform token file for token exchange.

    With a subject-token file (a projected Kubernetes service-account token, an OIDC ID token), the file is
    read afresh at each renewal and exchanged (``GRANT_TYPE_TOKEN_EXCHANGE``, subject token type
    ``urn:ietf:params:oauth:token-type:jwt``), so the workload stores no secret. The secret never appears in
    ``repr`` or in any error.
    """

    __slots__ = ("client_id", "_client_secret", "subject_token_file")

    def __init__(self, client_id: str = "", client_secret: str = "", subject_token_file: Optional[PathLike] = None) -> None:
        if subject_token_file is None and not (client_id and client_secret):
            raise ValueError("credentials need a client id and secret, or a subject-token file")
        self.client_id = client_id
        self._client_secret = client_secret
        self.subject_token_file: Optional[Path] = Path(subject_token_file) if subject_token_file is not None else None

    @classmethod
    def client_credentials(cls, client_id: str, client_secret: str) -> "Credentials":
        """Client credentials grant."""
        return cls(client_id=client_id, client_secret=client_secret)

    @classmethod
    def token_exchange(cls, subject_token_file: PathLike) -> "Credentials":
        """Token exchange with the platform token in ``subject_token_file``."""
        return cls(subject_token_file=subject_token_file)

    @classmethod
    def from_file(cls, path: PathLike) -> "Credentials":
        """Reads a credentials JSON file (``client_id``, ``client_secret``; or ``subject_token_file``), such as a
        data directory's ``bootstrap-credentials.json``."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError:
            raise ValueError(f"{path}: not a JSON credentials file") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a JSON object")
        return cls(
            client_id=str(raw.get("client_id", "")),
            client_secret=str(raw.get("client_secret", "")),
            subject_token_file=raw.get("subject_token_file") or None,
        )

    @classmethod
    def from_env(cls, environ: Optional[dict[str, str]] = None) -> "Credentials":
        """``KEYMESH_SUBJECT_TOKEN_FILE``, else ``KEYMESH_CLIENT_ID`` and ``KEYMESH_CLIENT_SECRET``."""
        env = os.environ if environ is None else environ
        token_file = env.get("KEYMESH_SUBJECT_TOKEN_FILE")
        if token_file:
            return cls.token_exchange(token_file)
        return cls.client_credentials(env.get("KEYMESH_CLIENT_ID", ""), env.get("KEYMESH_CLIENT_SECRET", ""))

    def issue_token_fields(self) -> dict[str, Any]:
        """The IssueTokenRequest fields for the next token (reads the subject-token file now)."""
        if self.subject_token_file is not None:
            try:
                subject = self.subject_token_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise KeymeshError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{self.subject_token_file}: cannot read the subject token: {e.strerror or type(e).__name__}",
                    local=True,
                ) from None
            return {"grant_type": _GRANT_TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": SUBJECT_TOKEN_TYPE_JWT}
        return {"grant_type": _GRANT_CLIENT_CREDENTIALS, "client_id": self.client_id, "client_secret": self._client_secret}

    def __repr__(self) -> str:
        if self.subject_token_file is not None:
            return f"Credentials(subject_token_file={str(self.subject_token_file)!r})"
        return f"Credentials(client_id={self.client_id!r}, client_secret=<redacted>)"


@dataclass(frozen=True)
class _CachedToken:
    token: str
    renew_at: float

    def __repr__(self) -> str:
        return f"_CachedToken(renew_at={self.renew_at})"


def renewal_margin(lifetime: float) -> float:
    """How long before expiry a token is renewed: 5 minutes, or a fifth of its lifetime when that is shorter."""
    return min(300.0, lifetime / 5.0)


class TokenCache:
    """A thread-safe access-token cache with one renewal in flight however many callers.

    ``issue(fields, deadline)`` performs IssueToken and returns ``(access_token, expires_in_seconds)``. A token
    is renewed once fewer than :func:`renewal_margin` seconds of its life remain. Callers that find it due
    queue on one lock: the first renews, the rest wake to the new token.
    """

    def __init__(
        self,
        credentials: Credentials,
        issue: Callable[[dict[str, Any], float], tuple[str, float]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._issue = issue
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: Optional[_CachedToken] = None

    def __repr__(self) -> str:
        return f"TokenCache({self._credentials!r})"

    def get(self, deadline: float) -> str:
        """A valid access token, renewed first when due. ``deadline`` is a ``time.monotonic()`` instant."""
        cached = self._cached
        if cached is not None and self._clock() < cached.renew_at:
            return cached.token
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._lock.acquire(timeout=remaining):
            raise KeymeshError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while waiting for an access token", local=True)
        try:
            cached = self._cached
            if cached is not None and self._clock() < cached.renew_at:
                return cached.token
            token, lifetime = self._issue(self._credentials.issue_token_fields(), deadline)
            lifetime = max(0.0, float(lifetime))
            self._cached = _CachedToken(token, self._clock() + lifetime - renewal_margin(lifetime))
            return token
        finally:
            self._lock.release()

    def invalidate(self, token: Optional[str] = None) -> None:
        """Forgets the cached token (only if it is still ``token``, when given); the next call gets a new one."""
        cached = self._cached  # no lock: at worst a fresh token is dropped and issued again
        if token is None or (cached is not None and cached.token == token):
            self._cached = None
