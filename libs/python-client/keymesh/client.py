"""The keymesh client: mutual TLS to the four services, a bearer token from client credentials or token
exchange, deadlines and retries on every unary call, and helpers for keys, encryption, data keys, envelopes
and streams."""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import grpc

from . import pb, stream
from ._retry import RetryPolicy, retry_hint
from .credentials import Credentials, TokenCache
from .errors import KeymeshError

if TYPE_CHECKING:
    from .home import Registered

__all__ = ["CHUNK_SIZE", "Client", "DataKey", "Endpoints", "ResponseStream"]

#: Bytes read from the input per request message or local step.
CHUNK_SIZE = 256 * 1024
#: Largest gRPC message sent to or accepted from crypto-service (as the Rust SDK: twice the largest unary limit
#: the service can be configured with, plus room for the rest of the message).
MAX_CRYPTO_MESSAGE = 2 * 64 * 1024 * 1024 + 64 * 1024
#: Default per-call deadline of unary calls, in seconds.
DEFAULT_TIMEOUT = 30.0

PathLike = Union[str, "os.PathLike[str]"]
Pem = Union[bytes, str, "os.PathLike[str]"]
Metadata = Sequence[tuple[str, Union[str, bytes]]]

# Methods that need no access token.
_UNAUTHENTICATED = {"TokenService": frozenset({"IssueToken", "RevokeToken", "GetJwks"})}


@dataclass(frozen=True)
class Endpoints:
    """``host:port`` of each service. The audit service is optional."""

    key_service: str
    crypto_service: str
    token_service: str
    audit_service: str = ""

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Endpoints":
        """``KEYMESH_KEY_SERVICE``, ``KEYMESH_CRYPTO_SERVICE``, ``KEYMESH_TOKEN_SERVICE``, ``KEYMESH_AUDIT_SERVICE``."""
        env = os.environ if environ is None else environ
        missing = [v for v in ("KEYMESH_KEY_SERVICE", "KEYMESH_CRYPTO_SERVICE", "KEYMESH_TOKEN_SERVICE") if not env.get(v)]
        if missing:
            raise ValueError(f"set {', '.join(missing)} (host:port)")
        return cls(
            key_service=env["KEYMESH_KEY_SERVICE"],
            crypto_service=env["KEYMESH_CRYPTO_SERVICE"],
            token_service=env["KEYMESH_TOKEN_SERVICE"],
            audit_service=env.get("KEYMESH_AUDIT_SERVICE", ""),
        )


def _pem(value: Pem, what: str) -> bytes:
    """PEM bytes as given, or read from a path."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {value}: {e.strerror or type(e).__name__}") from None


def _read_full(reader: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the input."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = reader.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _not_a_stream() -> KeymeshError:
    return KeymeshError(grpc.StatusCode.INVALID_ARGUMENT, "input is not a keymesh stream or envelope", local=True)


def _decryption_failed() -> KeymeshError:
    return KeymeshError(grpc.StatusCode.INVALID_ARGUMENT, "decryption failed", local=True)


def _file_to_file(run: Callable[[IO[bytes], IO[bytes]], int], input: PathLike, output: PathLike) -> int:
    """Runs a stream helper from the file ``input`` into ``output``, which appears only if ``run`` returns."""
    with open(input, "rb") as reader, _AtomicOutput(output) as out:
        total = run(reader, out.file)
        out.commit()
    return total


class _AtomicOutput:
    """A temporary file (``.keymesh-partial-*``, mode 0600) beside ``path``, moved into place only by
    :meth:`commit`; removed on any failure."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        fd, self._temporary = tempfile.mkstemp(prefix=".keymesh-partial-", dir=str(self.path.parent or Path(".")))
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._temporary, self.path)
        self._temporary = ""

    def __enter__(self) -> "_AtomicOutput":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._temporary:
            self.file.close()
            try:
                os.unlink(self._temporary)
            except OSError:
                pass


class ResponseStream(Iterator[Any]):
    """The responses of a streaming call; iteration raises :class:`KeymeshError` on failure."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> "ResponseStream":
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            raise KeymeshError.from_rpc_error(e) from None

    def cancel(self) -> bool:
        """Cancels the call."""
        return bool(self._call.cancel())

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()


class _Method:
    """One generated method with the client's token, deadline, retries and errors applied."""

    def __init__(self, client: "Client", name: str, callable_: Any, kind: str, auth: bool) -> None:
        self._client = client
        self._callable = callable_
        self._kind = kind
        self._auth = auth
        self.__name__ = name

    def __repr__(self) -> str:
        return f"<keymesh method {self.__name__} ({self._kind})>"

    def __call__(self, request: Any, timeout: Optional[float] = None, metadata: Optional[Metadata] = None, **kwargs: Any) -> Any:
        if self._kind == "unary_unary":
            return self._client._unary(self._callable, request, timeout=timeout, metadata=metadata, auth=self._auth, **kwargs)[0]
        return self._client._streaming(self._callable, request, self._kind, timeout=timeout, metadata=metadata, auth=self._auth, **kwargs)

    def with_call(self, request: Any, timeout: Optional[float] = None, metadata: Optional[Metadata] = None, **kwargs: Any) -> tuple[Any, grpc.Call]:
        """Unary methods only: the response and the ``grpc.Call`` (for its metadata)."""
        if self._kind != "unary_unary":
            raise TypeError(f"{self.__name__} is a streaming method")
        return self._client._unary(self._callable, request, timeout=timeout, metadata=metadata, auth=self._auth, **kwargs)


class _Service:
    """A generated stub whose methods carry the client's token and retries; see :class:`Client`."""

    def __init__(self, client: "Client", name: str, stub: Any) -> None:
        self._name = name
        unauthenticated = _UNAUTHENTICATED.get(name, frozenset())
        kinds = (
            (grpc.UnaryUnaryMultiCallable, "unary_unary"),
            (grpc.UnaryStreamMultiCallable, "unary_stream"),
            (grpc.StreamUnaryMultiCallable, "stream_unary"),
            (grpc.StreamStreamMultiCallable, "stream_stream"),
        )
        for method, callable_ in vars(stub).items():
            for cls, kind in kinds:
                if isinstance(callable_, cls):
                    setattr(self, method, _Method(client, method, callable_, kind, method not in unauthenticated))
                    break

    def __repr__(self) -> str:
        return f"<keymesh {self._name} stub>"


class DataKey:
    """A data key from GenerateDataKey: the plaintext key to encrypt with here, its wrapped form (a keymesh
    ciphertext only the mesh opens, with the same AAD and encryption context), and the binding it was made
    with. Its ``repr`` never shows the key."""

    def __init__(self, plaintext: bytes, wrapped: bytes, key_id: str, key_version: int, aad: bytes, context: Mapping[str, str]) -> None:
        self._plaintext = plaintext
        self.wrapped = wrapped
        self.key_id = key_id
        self.key_version = key_version
        self.aad = aad
        self.context = dict(context)

    def expose_secret(self) -> bytes:
        """The plaintext data key."""
        return self._plaintext

    def seal(self, plaintext: bytes, segment_size: int = stream.DEFAULT_SEGMENT_SIZE) -> bytes:
        """A whole buffer into an envelope (the stream format), bound to this key's AAD and context."""
        return stream.seal_all(self._plaintext, self.wrapped, plaintext, self.aad, self.context, segment_size)

    def encryptor(self, segment_size: int = stream.DEFAULT_SEGMENT_SIZE) -> stream.StreamEncryptor:
        """An incremental encryptor of one stream (write its ``header`` first)."""
        return stream.StreamEncryptor(self._plaintext, self.wrapped, self.aad, self.context, segment_size)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, key_version={self.key_version}, plaintext=<redacted>)"


class Client:
    """A connection to a keymesh mesh.

    >>> client = keymesh.Client(
    ...     keymesh.Endpoints("key:8443", "crypto:8443", "token:8443", "audit:8443"),
    ...     ca_cert="ca.pem", client_cert="app.pem", client_key="app-key.pem",
    ...     credentials=keymesh.Credentials.client_credentials("app_123", secret),
    ... )
    >>> ciphertext = client.encrypt("user-pii", b"4111 1111 1111 1111", aad=b"order-42")

    ``ca_cert``, ``client_cert`` and ``client_key`` are PEM paths (or PEM bytes). The generated stubs, with the
    token, deadline, retries and :class:`KeymeshError` applied, are :attr:`keys`, :attr:`crypto`,
    :attr:`tokens` and :attr:`audit`: ``client.keys.CreateKey(pb.CreateKeyRequest(...), timeout=5)``.

    - **Token**: fetched on first use, renewed 5 minutes (or a fifth of its lifetime, if shorter) before it
      expires, one renewal in flight however many threads call. IssueToken, RevokeToken and GetJwks carry none.
    - **Deadlines**: every unary call has one (``timeout`` seconds, default 30, per call overridable), and its
      retries stay within it. Streaming calls have none unless given.
    - **Retries**: UNAVAILABLE, and RESOURCE_EXHAUSTED with a server-given delay, are retried per ``retry``
      (:class:`RetryPolicy`), honouring ``google.rpc.RetryInfo`` (else ``retry-after``). The stream helpers
      that read a seekable input also retry a call that failed before any output.
    - The client is thread-safe; close it (or use ``with``) to close its channels.
    """

    #: For a client from :func:`keymesh.register`: which application it is (a :class:`keymesh.Registered`).
    registered: Optional["Registered"] = None

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        ca_cert: Pem,
        client_cert: Pem,
        client_key: Pem,
        credentials: Credentials,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        channel_options: Sequence[tuple[str, Any]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``timeout`` is the default deadline of unary calls in seconds; ``retry`` the retry policy;
        ``channel_options`` extra grpc channel options (e.g. ``grpc.ssl_target_name_override``); ``clock`` the
        monotonic clock the token cache reads (a test hook)."""
        tls = grpc.ssl_channel_credentials(
            root_certificates=_pem(ca_cert, "ca_cert"),
            private_key=_pem(client_key, "client_key"),
            certificate_chain=_pem(client_cert, "client_cert"),
        )
        self.endpoints = endpoints
        self.timeout = timeout
        self.retry = retry
        base = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000), *channel_options]
        crypto_options = [
            ("grpc.max_send_message_length", MAX_CRYPTO_MESSAGE),
            ("grpc.max_receive_message_length", MAX_CRYPTO_MESSAGE),
            *base,
        ]
        self._channels: list[grpc.Channel] = []

        def channel(target: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
            ch = grpc.secure_channel(target, tls, options=list(options))
            self._channels.append(ch)
            return ch

        self._token_channel = channel(endpoints.token_service, base)
        self._key_channel = channel(endpoints.key_service, base)
        self._crypto_channel = channel(endpoints.crypto_service, crypto_options)
        self._audit_channel = channel(endpoints.audit_service, base) if endpoints.audit_service else None

        #: TokenService (IssueToken, RevokeToken and GetJwks without a token).
        self.tokens: Any = _Service(self, "TokenService", pb.token_service_pb2_grpc.TokenServiceStub(self._token_channel))
        #: KeyService.
        self.keys: Any = _Service(self, "KeyService", pb.key_service_pb2_grpc.KeyServiceStub(self._key_channel))
        #: CryptoService.
        self.crypto: Any = _Service(self, "CryptoService", pb.crypto_service_pb2_grpc.CryptoServiceStub(self._crypto_channel))
        #: AuditService (``None`` without an audit endpoint).
        self.audit: Any = (
            _Service(self, "AuditService", pb.audit_service_pb2_grpc.AuditServiceStub(self._audit_channel))
            if self._audit_channel is not None
            else None
        )
        self._tokens = TokenCache(credentials, self._issue_token, clock)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> "Client":
        """A client from ``KEYMESH_{KEY,CRYPTO,TOKEN,AUDIT}_SERVICE``, ``KEYMESH_CA_CERT``, ``KEYMESH_CLIENT_CERT``,
        ``KEYMESH_CLIENT_KEY`` and ``KEYMESH_SUBJECT_TOKEN_FILE`` or ``KEYMESH_CLIENT_ID``/``KEYMESH_CLIENT_SECRET``."""
        env = dict(os.environ if environ is None else environ)
        for var in ("KEYMESH_CA_CERT", "KEYMESH_CLIENT_CERT", "KEYMESH_CLIENT_KEY"):
            if not env.get(var):
                raise ValueError(f"set {var} (a PEM file)")
        kwargs.setdefault("credentials", Credentials.from_env(env))
        return cls(
            Endpoints.from_env(env),
            ca_cert=env["KEYMESH_CA_CERT"],
            client_cert=env["KEYMESH_CLIENT_CERT"],
            client_key=env["KEYMESH_CLIENT_KEY"],
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"Client({self.endpoints!r})"

    def close(self) -> None:
        """Closes every channel."""
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------------------
    # Token, deadlines, retries

    def access_token(self, timeout: Optional[float] = None) -> str:
        """A valid access token (issued or renewed when due)."""
        return self._tokens.get(time.monotonic() + (self.timeout if timeout is None else timeout))

    def invalidate_token(self) -> None:
        """Forgets the cached access token (e.g. after revoking it)."""
        self._tokens.invalidate()

    def _issue_token(self, fields: dict[str, Any], deadline: float) -> tuple[str, float]:
        request = pb.token_service_pb2.IssueTokenRequest(**fields)
        response, _ = self._unary(self.tokens.IssueToken._callable, request, deadline=deadline, auth=False)
        return response.access_token, float(response.expires_in_seconds)

    def _metadata(self, metadata: Optional[Metadata], auth: bool, deadline: float) -> list[tuple[str, Union[str, bytes]]]:
        md = list(metadata or ())
        if auth:
            md.append(("authorization", "Bearer " + self._tokens.get(deadline)))
        return md

    def _unary(
        self,
        callable_: Any,
        request: Any,
        *,
        timeout: Optional[float] = None,
        deadline: Optional[float] = None,
        metadata: Optional[Metadata] = None,
        auth: bool = True,
        **kwargs: Any,
    ) -> tuple[Any, grpc.Call]:
        if deadline is None:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            md = self._metadata(metadata, auth, deadline)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KeymeshError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", local=True, attempts=attempt - 1)
            try:
                return callable_.with_call(request, timeout=remaining, metadata=md, **kwargs)
            except grpc.RpcError as e:
                error = e
            self._note_failure(error, md)
            self._before_retry(error, attempt, deadline)

    def _note_failure(self, error: grpc.RpcError, metadata: Sequence[tuple[str, Union[str, bytes]]]) -> None:
        """After UNAUTHENTICATED, forgets the token the call carried (revoked, or signed by a retired key), so
        the next call gets a new one. The failed call itself is not retried."""
        if getattr(error, "code", None) and error.code() == grpc.StatusCode.UNAUTHENTICATED:
            for key, value in metadata:
                if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                    self._tokens.invalidate(value[len("Bearer ") :])

    def _before_retry(self, error: grpc.RpcError, attempt: int, deadline: Optional[float]) -> None:
        """Sleeps before the next attempt, or raises the final error."""
        hint = retry_hint(error)
        code = error.code() if hasattr(error, "code") else None
        if attempt >= self.retry.max_attempts or not self.retry.retryable(code, hint):
            raise KeymeshError.from_rpc_error(error, attempts=attempt) from None
        wait = self.retry.delay(attempt, hint)
        if deadline is not None and time.monotonic() + wait >= deadline:
            last = KeymeshError.from_rpc_error(error)
            raise KeymeshError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the deadline leaves no room for a retry in {wait:.3f} s (last error {last.code_name}: {last.message})",
                retry_delay=hint,
                local=True,
                attempts=attempt,
            ) from None
        time.sleep(wait)

    def _streaming(
        self,
        callable_: Any,
        request: Any,
        kind: str,
        *,
        timeout: Optional[float] = None,
        metadata: Optional[Metadata] = None,
        auth: bool = True,
        **kwargs: Any,
    ) -> Any:
        token_deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        md = self._metadata(metadata, auth, token_deadline)
        try:
            result = callable_(request, timeout=timeout, metadata=md, **kwargs)
        except grpc.RpcError as e:  # stream_unary completes here
            self._note_failure(e, md)
            raise KeymeshError.from_rpc_error(e) from None
        return ResponseStream(result) if kind in ("unary_stream", "stream_stream") else result

    # ---------------------------------------------------------------------------------------------------------
    # Keys

    def create_key(
        self,
        name: str,
        *,
        purpose: int = pb.KEY_PURPOSE_ENCRYPT,
        algorithm: int = pb.ALGORITHM_AES_256_GCM,
        description: str = "",
        labels: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """Creates a key (by default AES-256-GCM for encryption) and returns its ``Key``."""
        request = pb.CreateKeyRequest(name=name, purpose=purpose, algorithm=algorithm, description=description, labels=dict(labels or {}))
        return self.keys.CreateKey(request, timeout=timeout).key

    def get_key(self, key: str, *, timeout: Optional[float] = None) -> Any:
        """A key's metadata (``Key``), by name or id."""
        return self.keys.GetKey(pb.GetKeyRequest(key=key), timeout=timeout).key

    # ---------------------------------------------------------------------------------------------------------
    # Unary cryptography

    def encrypt(
        self,
        key: str,
        plaintext: bytes,
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> bytes:
        """Encrypts under ``key`` (name or id), binding ``aad`` and ``context``; returns the ciphertext."""
        request = pb.EncryptRequest(key=key, plaintext=plaintext, aad=aad, encryption_context=dict(context or {}))
        return bytes(self.crypto.Encrypt(request, timeout=timeout).ciphertext)

    def decrypt(
        self,
        ciphertext: bytes,
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        key: str = "",
        timeout: Optional[float] = None,
    ) -> bytes:
        """Decrypts a keymesh ciphertext, presenting ``aad`` and ``context`` again. A non-empty ``key`` is the
        key it must have been made under."""
        request = pb.DecryptRequest(ciphertext=ciphertext, aad=aad, encryption_context=dict(context or {}), key=key)
        return bytes(self.crypto.Decrypt(request, timeout=timeout).plaintext)

    def hash(self, data: bytes, algorithm: int = pb.HASH_ALGORITHM_SHA256, *, timeout: Optional[float] = None) -> bytes:
        """The Hash RPC (:func:`keymesh.local.hash` computes the same here)."""
        return bytes(self.crypto.Hash(pb.HashRequest(algorithm=algorithm, data=data), timeout=timeout).digest)

    def generate_mac(self, key: str, message: bytes, *, timeout: Optional[float] = None) -> bytes:
        """The MAC of ``message`` under a MAC key."""
        return bytes(self.crypto.GenerateMac(pb.GenerateMacRequest(key=key, message=message), timeout=timeout).mac)

    def verify_mac(self, key: str, message: bytes, mac: bytes, *, key_version: int = 0, timeout: Optional[float] = None) -> bool:
        """Whether ``mac`` is the MAC of ``message`` under ``key``."""
        request = pb.VerifyMacRequest(key=key, message=message, mac=mac, key_version=key_version)
        return bool(self.crypto.VerifyMac(request, timeout=timeout).valid)

    def generate_random(self, num_bytes: int, *, timeout: Optional[float] = None) -> bytes:
        """1 to 1024 random bytes from the service's DRBG."""
        return bytes(self.crypto.GenerateRandom(pb.GenerateRandomRequest(num_bytes=num_bytes), timeout=timeout).random)

    # ---------------------------------------------------------------------------------------------------------
    # Data keys and envelopes (encrypted here)

    def generate_data_key(
        self,
        key: str,
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        key_spec: int = pb.DATA_KEY_SPEC_AES_256,
        timeout: Optional[float] = None,
    ) -> DataKey:
        """A fresh data key, wrapped under ``key`` with ``aad`` and ``context`` bound (one GenerateDataKey)."""
        context = dict(context or {})
        request = pb.GenerateDataKeyRequest(key=key, key_spec=key_spec, aad=aad, encryption_context=context)
        response = self.crypto.GenerateDataKey(request, timeout=timeout)
        return DataKey(bytes(response.plaintext), bytes(response.ciphertext), response.key_id, response.key_version, aad, context)

    def unwrap_data_key(
        self,
        wrapped: bytes,
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        key: str = "",
        timeout: Optional[float] = None,
    ) -> bytes:
        """Opens a wrapped data key (one Decrypt). A non-empty ``key`` is the key it must be wrapped under."""
        return self.decrypt(wrapped, aad=aad, context=context, key=key, timeout=timeout)

    def seal_envelope(
        self,
        key: str,
        plaintext: bytes,
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        segment_size: int = stream.DEFAULT_SEGMENT_SIZE,
        timeout: Optional[float] = None,
    ) -> bytes:
        """A whole buffer into an envelope under a fresh data key (one GenerateDataKey; the data stays here)."""
        return self.generate_data_key(key, aad=aad, context=context, timeout=timeout).seal(plaintext, segment_size)

    def open_envelope(
        self,
        envelope: bytes,
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        key: str = "",
        timeout: Optional[float] = None,
    ) -> bytes:
        """Opens a whole envelope, or a stream made by EncryptStream (one Decrypt for its data key)."""
        try:
            parsed = stream.parse_header(envelope)
        except stream.DecryptionFailed:
            parsed = None
        if parsed is None:
            raise _not_a_stream()
        header, _ = parsed
        data_key = self.unwrap_data_key(header.wrapped_data_key, aad=aad, context=context, key=key, timeout=timeout)
        try:
            return stream.open_all(envelope, data_key, aad, context)
        except stream.DecryptionFailed:
            raise _decryption_failed() from None

    def seal_stream(
        self,
        key: str,
        reader: IO[bytes],
        writer: IO[bytes],
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        segment_size: int = stream.DEFAULT_SEGMENT_SIZE,
        timeout: Optional[float] = None,
    ) -> int:
        """Encrypts everything ``reader`` yields into ``writer`` here, in constant memory (one GenerateDataKey).
        Returns the plaintext length."""
        encryptor = self.generate_data_key(key, aad=aad, context=context, timeout=timeout).encryptor(segment_size)
        writer.write(encryptor.header)
        total = 0
        while True:
            chunk = _read_full(reader, CHUNK_SIZE)
            if not chunk:
                break
            total += len(chunk)
            writer.write(encryptor.update(chunk))
        writer.write(encryptor.finish())
        return total

    def open_stream(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        key: str = "",
        timeout: Optional[float] = None,
    ) -> int:
        """Decrypts an envelope or stream from ``reader`` into ``writer`` here, in constant memory (one Decrypt
        for the data key); returns the plaintext length. On error, discard what was written."""
        prefix = _read_full(reader, 2)
        try:
            parsed = stream.parse_header(prefix)  # refuses a bad length before reading it
            if parsed is None and len(prefix) == 2:
                length = int.from_bytes(prefix, "big")
                parsed = stream.parse_header(prefix + _read_full(reader, length))
        except stream.DecryptionFailed:
            raise _not_a_stream() from None
        if parsed is None:
            raise _not_a_stream()
        header, _ = parsed
        data_key = self.unwrap_data_key(header.wrapped_data_key, aad=aad, context=context, key=key, timeout=timeout)
        total = 0
        try:
            decryptor = header.decryptor(data_key, aad, context)
            while True:
                chunk = _read_full(reader, CHUNK_SIZE)
                if not chunk:
                    break
                plaintext = decryptor.update(chunk)
                total += len(plaintext)
                writer.write(plaintext)
            plaintext = decryptor.finish()
        except stream.DecryptionFailed:
            raise _decryption_failed() from None
        writer.write(plaintext)
        return total + len(plaintext)

    def seal_file(self, key: str, input: PathLike, output: PathLike, **kwargs: Any) -> int:
        """:meth:`seal_stream` from file to file; ``output`` appears only when complete."""
        return _file_to_file(lambda r, w: self.seal_stream(key, r, w, **kwargs), input, output)

    def open_file(self, input: PathLike, output: PathLike, **kwargs: Any) -> int:
        """:meth:`open_stream` from file to file; ``output`` appears only when the whole stream verified."""
        return _file_to_file(lambda r, w: self.open_stream(r, w, **kwargs), input, output)

    # ---------------------------------------------------------------------------------------------------------
    # Streams through crypto-service (EncryptStream / DecryptStream)

    def encrypt_stream(
        self,
        key: str,
        reader: IO[bytes],
        writer: IO[bytes],
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        segment_size: int = 0,
        timeout: Optional[float] = None,
    ) -> int:
        """Encrypts everything ``reader`` yields into ``writer`` through EncryptStream (the data key never leaves
        the mesh), in constant memory; returns the plaintext length. ``segment_size`` 0 means 1 MiB."""
        init = pb.EncryptStreamRequest(
            init=pb.EncryptStreamInit(key=key, aad=aad, encryption_context=dict(context or {}), segment_size=segment_size)
        )
        return self._run_stream(self.crypto.EncryptStream, init, lambda c: pb.EncryptStreamRequest(chunk=c), reader, writer, timeout, True)

    def decrypt_stream(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        *,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        key: str = "",
        timeout: Optional[float] = None,
    ) -> int:
        """Decrypts a stream or envelope from ``reader`` into ``writer`` through DecryptStream, in constant
        memory; returns the plaintext length. On error, discard what was written."""
        init = pb.DecryptStreamRequest(init=pb.DecryptStreamInit(key=key, aad=aad, encryption_context=dict(context or {})))
        return self._run_stream(self.crypto.DecryptStream, init, lambda c: pb.DecryptStreamRequest(chunk=c), reader, writer, timeout, False)

    def encrypt_file(self, key: str, input: PathLike, output: PathLike, **kwargs: Any) -> int:
        """:meth:`encrypt_stream` from file to file; ``output`` appears only when complete."""
        return _file_to_file(lambda r, w: self.encrypt_stream(key, r, w, **kwargs), input, output)

    def decrypt_file(self, input: PathLike, output: PathLike, **kwargs: Any) -> int:
        """:meth:`decrypt_stream` from file to file; ``output`` appears only when the whole stream verified."""
        return _file_to_file(lambda r, w: self.decrypt_stream(r, w, **kwargs), input, output)

    def _run_stream(
        self,
        method: _Method,
        init: Any,
        wrap: Callable[[bytes], Any],
        reader: IO[bytes],
        writer: IO[bytes],
        timeout: Optional[float],
        count_input: bool,
    ) -> int:
        seekable = False
        try:
            seekable = reader.seekable()
            start = reader.tell() if seekable else 0
        except (OSError, AttributeError, io.UnsupportedOperation):
            seekable = False
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            read_errors: list[BaseException] = []
            counter = [0]

            def requests() -> Iterator[Any]:
                yield init
                while True:
                    try:
                        chunk = _read_full(reader, CHUNK_SIZE)
                    except BaseException as e:
                        # Raising cancels the call: the service never sees a clean end, so it never seals a
                        # final segment over a partial input.
                        read_errors.append(e)
                        raise
                    if not chunk:
                        return
                    counter[0] += len(chunk)
                    yield wrap(chunk)

            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise KeymeshError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", local=True, attempts=attempt - 1)
            token_deadline = time.monotonic() + (self.timeout if remaining is None else remaining)
            md = self._metadata(None, True, token_deadline)
            call = method._callable(requests(), timeout=remaining, metadata=md)
            received = False
            written = 0
            try:
                for response in call:
                    received = True
                    writer.write(response.chunk)
                    written += len(response.chunk)
                return counter[0] if count_input else written
            except grpc.RpcError as e:
                if read_errors:
                    raise read_errors[0] from None
                self._note_failure(e, md)
                if received or not seekable:
                    raise KeymeshError.from_rpc_error(e, attempts=attempt) from None
                error = e
            except BaseException:
                call.cancel()  # e.g. the writer failed: stop the call rather than let it run on
                raise
            self._before_retry(error, attempt, deadline)
            reader.seek(start)
