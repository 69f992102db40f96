"""The developer's keymesh directory (``~/.keymesh``, or ``$KEYMESH_HOME``): the login session and the applications
registered from it. The same files, in the same formats, as the Rust SDK's ``keymesh_client::home`` and the
``keymesh login`` / ``keymesh register`` commands, so both share one directory.

- ``credentials.json``, the login session: ``{"kind": "refresh_token", "client_id", "refresh_token"}`` or
  ``{"kind": "token_exchange", "client_id", "subject_token_file"}``. It never holds a client secret. Every use of
  a refresh-token session spends its refresh token (``GRANT_TYPE_REFRESH_TOKEN`` rotates it) and writes the
  successor back at once, under an exclusive ``flock`` on ``.credentials.lock`` (the lock the Rust SDK takes with
  ``File::lock``), so two processes never present the same token: a replayed refresh token revokes the session.
- ``apps/<client_id>.json``: ``{"client_id", "client_secret", "tenant_id", "name", "environment", "team"}``, where
  ``name`` is the registered name; the application itself is called ``<name>.<environment>``.

The directories are 0700 (an existing one is narrowed) and every file is 0600, written whole: a temporary file in
the same directory, fsynced, renamed over the old one. No secret (client secret, refresh or access token) appears in
a log line, an error message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import grpc

from . import pb
from ._retry import retry_hint
from .client import Client, Endpoints, Pem, _pem
from .credentials import Credentials
from .errors import KeymeshError

__all__ = ["KeymeshHome", "Registered", "default_home", "login", "register"]

PathLike = Union[str, "os.PathLike[str]"]

SESSION_FILE = "credentials.json"
LOCK_FILE = ".credentials.lock"
APPS_DIR = "apps"
_KIND_REFRESH = "refresh_token"
_KIND_EXCHANGE = "token_exchange"
_APP_FIELDS = ("client_id", "client_secret", "tenant_id", "name", "environment", "team")
# A client id used as a file name: what the token service hands out ("app_…"), nothing that leaves apps/.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Attempts of a session call refused by a rate limit with a server-given delay (the only failure retried: see
# _call_once_unless_rate_limited).
_RATE_LIMIT_ATTEMPTS = 5


def default_home(environ: Optional[Mapping[str, str]] = None) -> Path:
    """Where the keymesh directory is: ``$KEYMESH_HOME``, else ``$HOME/.keymesh`` (as the Rust SDK)."""
    env = os.environ if environ is None else environ
    if env.get("KEYMESH_HOME"):
        return Path(env["KEYMESH_HOME"])
    if env.get("HOME"):
        return Path(env["HOME"]) / ".keymesh"
    raise ValueError("neither KEYMESH_HOME nor HOME is set")


@dataclass(frozen=True)
class Registered:
    """What :meth:`KeymeshHome.register` found or created (no secret: the secret is in :attr:`credentials_file`)."""

    #: The application's client id.
    client_id: str
    #: Its name in the tenant, ``<name>.<environment>``.
    application_name: str
    #: True when this call created it on the server; false when it was found again (stored or re-registered).
    created: bool
    #: Its credentials file, ``apps/<client_id>.json`` (0600).
    credentials_file: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "application_name": self.application_name,
            "created": self.created,
            "credentials_file": str(self.credentials_file),
        }


class _NoCredentials(Credentials):
    """The credentials of a connection that only makes unauthenticated calls, or brings its own token."""

    def __init__(self) -> None:  # noqa: D107 - no id, no secret, no file
        self.client_id = ""
        self._client_secret = ""
        self.subject_token_file = None

    def issue_token_fields(self) -> dict[str, Any]:
        raise KeymeshError(
            grpc.StatusCode.FAILED_PRECONDITION, "this connection has no credentials of its own", local=True
        )

    def __repr__(self) -> str:
        return "Credentials(<none>)"


def _dumps(value: Mapping[str, Any]) -> bytes:
    """JSON as the Rust SDK writes it (``serde_json::to_vec_pretty``: two-space indent, UTF-8, no final newline)."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8")


def _session_ended(error: KeymeshError) -> KeymeshError:
    return KeymeshError(
        grpc.StatusCode.UNAUTHENTICATED,
        f"the login session has ended ({error.message}): log in again with keymesh.login() or `keymesh login`",
        attempts=error.attempts,
    )


def _call_once_unless_rate_limited(callable_: Any, request: Any, deadline: float, metadata: Sequence[tuple[str, str]] = ()) -> Any:
    """One call of a raw grpc method. It is retried only when a rate limit refused it and said when to come back
    (RESOURCE_EXHAUSTED with RetryInfo or retry-after): the service refuses those before it looks at the request.
    Never after UNAVAILABLE: a refresh token the service spent before the answer was lost must not be presented
    again, since a replay revokes the whole session."""
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KeymeshError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", local=True, attempts=attempt - 1)
        try:
            return callable_(request, timeout=remaining, metadata=list(metadata))
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            hint = retry_hint(e)
            if (
                code != grpc.StatusCode.RESOURCE_EXHAUSTED
                or hint is None
                or attempt >= _RATE_LIMIT_ATTEMPTS
                or time.monotonic() + hint >= deadline
            ):
                raise KeymeshError.from_rpc_error(e, attempts=attempt) from None
            time.sleep(hint * (1.0 + 0.1 * random.random()))


def subject_of(token: str) -> str:
    """The ``sub`` claim of an access token (the application it acts as), read without verifying: only to name
    the session. The token itself never appears in the error."""
    parts = token.split(".")
    if len(parts) < 2:
        raise KeymeshError(grpc.StatusCode.INTERNAL, "the access token is not a JWT", local=True)
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise KeymeshError(grpc.StatusCode.INTERNAL, "the access token is not a JWT", local=True) from None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str):
        raise KeymeshError(grpc.StatusCode.INTERNAL, "the access token names no subject", local=True)
    return sub


class _Connection:
    """Endpoints, the client's TLS material (read once) and Client keyword arguments."""

    def __init__(
        self,
        endpoints: Optional[Endpoints],
        ca_cert: Optional[Pem],
        client_cert: Optional[Pem],
        client_key: Optional[Pem],
        environ: Optional[Mapping[str, str]],
        client_kwargs: Mapping[str, Any],
    ) -> None:
        env = os.environ if environ is None else environ
        self.endpoints = endpoints if endpoints is not None else Endpoints.from_env(env)

        def material(value: Optional[Pem], var: str, what: str) -> bytes:
            if value is None:
                value = env.get(var) or None
                if value is None:
                    raise ValueError(f"give {what}, or set {var} (a PEM file)")
            return _pem(value, what)

        self.ca_cert = material(ca_cert, "KEYMESH_CA_CERT", "ca_cert")
        self.client_cert = material(client_cert, "KEYMESH_CLIENT_CERT", "client_cert")
        self.client_key = material(client_key, "KEYMESH_CLIENT_KEY", "client_key")
        self.kwargs = dict(client_kwargs)

    def client(self, credentials: Credentials) -> Client:
        return Client(
            self.endpoints,
            ca_cert=self.ca_cert,
            client_cert=self.client_cert,
            client_key=self.client_key,
            credentials=credentials,
            **self.kwargs,
        )

    def __repr__(self) -> str:
        return f"_Connection({self.endpoints!r})"


class KeymeshHome:
    """The keymesh directory: ``KeymeshHome()`` is ``$KEYMESH_HOME`` or ``~/.keymesh``; ``KeymeshHome(path)`` any."""

    def __init__(self, dir: Optional[PathLike] = None) -> None:
        self.dir = Path(dir) if dir is not None else default_home()

    def __repr__(self) -> str:
        return f"KeymeshHome({str(self.dir)!r})"

    @property
    def session_file(self) -> Path:
        """The login session, ``credentials.json``."""
        return self.dir / SESSION_FILE

    @property
    def lock_file(self) -> Path:
        """The lock every reader-and-writer of the session holds, ``.credentials.lock``."""
        return self.dir / LOCK_FILE

    def app_file(self, client_id: str) -> Path:
        """The credentials file of a registered application, ``apps/<client_id>.json``."""
        if not _CLIENT_ID.match(client_id):
            raise KeymeshError(grpc.StatusCode.INTERNAL, f"unexpected client id {client_id!r}", local=True)
        return self.dir / APPS_DIR / f"{client_id}.json"

    # ---------------------------------------------------------------------------------------------------------
    # Files

    @staticmethod
    def private_dir(path: PathLike) -> None:
        """Creates ``path`` (and its parents) owner-only, and narrows an existing one to 0700."""
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)

    def _private_dirs(self, path: Path) -> None:
        """``path`` and every directory between it and the keymesh directory, 0700."""
        self.private_dir(self.dir)
        if path != self.dir:
            self.private_dir(path)

    def write_private(self, path: PathLike, data: bytes) -> None:
        """Writes ``data`` to ``path`` whole: a new 0600 file in the same directory (itself made 0700), fsynced,
        then renamed over the old one; a failure leaves the old file as it was and no temporary file behind."""
        path = Path(path)
        self._private_dirs(path.parent)
        fd, temporary = tempfile.mkstemp(prefix=".keymesh-", dir=str(path.parent))
        try:
            os.fchmod(fd, 0o600)  # mkstemp makes it 0600 already; said again so it holds whatever the library does
            with os.fdopen(fd, "wb") as file:
                fd = -1
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            temporary = ""
        finally:
            if fd >= 0:
                os.close(fd)
            if temporary:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
        try:  # the rename itself survives a crash
            dir_fd = os.open(str(path.parent), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    @contextmanager
    def lock_session(self) -> Iterator[None]:
        """Holds the exclusive session lock (``flock`` on ``.credentials.lock``, as the Rust SDK's
        ``File::lock``) for the ``with`` block. It excludes other processes and other threads alike (each takes it
        through its own open file)."""
        self.private_dir(self.dir)
        fd = os.open(str(self.lock_file), os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _read_session(self) -> dict[str, Any]:
        path = self.session_file
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise KeymeshError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{path}: no login session (log in first: keymesh.login() or `keymesh login`)",
                local=True,
            ) from None
        except OSError as e:
            raise KeymeshError(grpc.StatusCode.FAILED_PRECONDITION, f"{path}: {e.strerror or type(e).__name__}", local=True) from None
        try:
            session = json.loads(text)
        except ValueError:
            session = None  # the parser's message can quote the file: not repeated
        if (
            not isinstance(session, dict)
            or not isinstance(session.get("kind"), str)
            or not isinstance(session.get("client_id"), str)
            or not isinstance(session.get("refresh_token", ""), str)
            or not isinstance(session.get("subject_token_file", ""), (str, type(None)))
        ):
            raise KeymeshError(grpc.StatusCode.FAILED_PRECONDITION, f"{path}: not a keymesh login session", local=True)
        return session

    @staticmethod
    def _session_bytes(kind: str, client_id: str, refresh_token: str = "", subject_token_file: Optional[str] = None) -> bytes:
        # The fields, their order and their omission as the Rust SDK's SessionFile serializes them.
        session: dict[str, Any] = {"kind": kind, "client_id": client_id}
        if refresh_token:
            session["refresh_token"] = refresh_token
        if subject_token_file is not None:
            session["subject_token_file"] = subject_token_file
        return _dumps(session)

    # ---------------------------------------------------------------------------------------------------------
    # The session

    def login(
        self,
        *,
        client_id: str = "",
        client_secret: str = "",
        subject_token_file: Optional[PathLike] = None,
        endpoints: Optional[Endpoints] = None,
        ca_cert: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
        environ: Optional[Mapping[str, str]] = None,
        **client_kwargs: Any,
    ) -> str:
        """See :func:`keymesh.login`."""
        if subject_token_file is None and not (client_id and client_secret):
            raise ValueError("log in with client_id and client_secret, or with subject_token_file")
        connection = _Connection(endpoints, ca_cert, client_cert, client_key, environ, client_kwargs)
        with connection.client(_NoCredentials()) as client:
            return self.login_with(client, client_id=client_id, client_secret=client_secret, subject_token_file=subject_token_file)

    def login_with(
        self,
        client: Client,
        *,
        client_id: str = "",
        client_secret: str = "",
        subject_token_file: Optional[PathLike] = None,
    ) -> str:
        """Authenticates once (client credentials, or a token exchange of ``subject_token_file``) through
        ``client``'s TokenService and stores the session; never the client secret. Returns the client id the
        session acts as. ``client`` needs no credentials of its own (IssueToken carries no token)."""
        if subject_token_file is None and not (client_id and client_secret):
            raise ValueError("log in with client_id and client_secret, or with subject_token_file")
        with self.lock_session():
            deadline = time.monotonic() + client.timeout  # from when the lock is held
            if subject_token_file is not None:
                access, _ = self._exchange(client, Path(subject_token_file), deadline)
                session_id = subject_of(access)
                try:
                    resolved = Path(subject_token_file).resolve(strict=True)
                except OSError as e:
                    raise KeymeshError(
                        grpc.StatusCode.FAILED_PRECONDITION, f"{subject_token_file}: {e.strerror or type(e).__name__}", local=True
                    ) from None
                data = self._session_bytes(_KIND_EXCHANGE, session_id, subject_token_file=str(resolved))
            else:
                request = pb.IssueTokenRequest(
                    grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS, client_id=client_id, client_secret=client_secret
                )
                response, _ = client._unary(client.tokens.IssueToken._callable, request, deadline=deadline, auth=False)
                if not response.refresh_token:
                    raise KeymeshError(
                        grpc.StatusCode.FAILED_PRECONDITION, "the token service returned no refresh token to keep", local=True
                    )
                session_id = client_id
                data = self._session_bytes(_KIND_REFRESH, client_id, refresh_token=response.refresh_token)
            self.write_private(self.session_file, data)
        return session_id

    def session_token(self, client: Client) -> str:
        """An access token of the login session, through ``client``'s TokenService: a refresh (which rotates the
        refresh token: the successor is written back before the lock is released) or a fresh token exchange."""
        with self.lock_session():
            deadline = time.monotonic() + client.timeout  # from when the lock is held
            session = self._read_session()
            kind = session["kind"]
            subject_file = session.get("subject_token_file")
            if kind == _KIND_EXCHANGE and subject_file:
                return self._exchange(client, Path(subject_file), deadline)[0]
            if kind != _KIND_REFRESH:
                raise KeymeshError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{self.session_file}: unknown session kind {kind!r}", local=True
                )
            request = pb.IssueTokenRequest(grant_type=pb.GRANT_TYPE_REFRESH_TOKEN, refresh_token=session.get("refresh_token", ""))
            try:
                response = _call_once_unless_rate_limited(client.tokens.IssueToken._callable, request, deadline)
            except KeymeshError as e:
                if e.code_name == "UNAUTHENTICATED":
                    raise _session_ended(e) from None
                raise
            data = self._session_bytes(
                _KIND_REFRESH, session["client_id"], refresh_token=response.refresh_token, subject_token_file=subject_file
            )
            self.write_private(self.session_file, data)
            return str(response.access_token)

    @staticmethod
    def _exchange(client: Client, path: Path, deadline: float) -> tuple[str, float]:
        fields = Credentials.token_exchange(path).issue_token_fields()  # reads the file now
        response, _ = client._unary(client.tokens.IssueToken._callable, pb.IssueTokenRequest(**fields), deadline=deadline, auth=False)
        return str(response.access_token), float(response.expires_in_seconds)

    # ---------------------------------------------------------------------------------------------------------
    # Applications

    def stored_app(self, name: str, environment: str) -> Optional[dict[str, str]]:
        """The stored credentials of the application registered as ``name`` in ``environment``, if any."""
        apps = self.dir / APPS_DIR
        try:
            entries = sorted(os.listdir(apps))
        except OSError:
            return None
        for entry in entries:
            if entry.startswith(".") or not entry.endswith(".json"):  # a temporary file being written
                continue
            try:
                app = json.loads((apps / entry).read_bytes())
            except (OSError, ValueError):
                continue
            if (
                isinstance(app, dict)
                and all(isinstance(app.get(field), str) for field in _APP_FIELDS)
                and app["name"] == name
                and app["environment"] == environment
                and _CLIENT_ID.match(app["client_id"])
            ):
                return {field: app[field] for field in _APP_FIELDS}
        return None

    def register(
        self,
        name: str,
        team: str = "",
        environment: str = "development",
        keys: Optional[Sequence[str]] = None,
        *,
        endpoints: Optional[Endpoints] = None,
        ca_cert: Optional[Pem] = None,
        client_cert: Optional[Pem] = None,
        client_key: Optional[Pem] = None,
        environ: Optional[Mapping[str, str]] = None,
        **client_kwargs: Any,
    ) -> Client:
        """See :func:`keymesh.register`."""
        connection = _Connection(endpoints, ca_cert, client_cert, client_key, environ, client_kwargs)
        return self._register(connection, name, team, environment, keys)

    def _register(
        self,
        connection: _Connection,
        name: str,
        team: str,
        environment: str,
        keys: Optional[Sequence[str]],
    ) -> Client:
        app = self.stored_app(name, environment)
        if app is not None:
            client = connection.client(Credentials.client_credentials(app["client_id"], app["client_secret"]))
            try:
                client.access_token()
            except KeymeshError as e:
                client.close()
                if e.code_name != "UNAUTHENTICATED":
                    raise
                # A disabled application, a secret rotated away: register again.
            except BaseException:
                client.close()
                raise
            else:
                client.registered = Registered(
                    client_id=app["client_id"],
                    application_name=f"{app['name']}.{app['environment']}",
                    created=False,
                    credentials_file=self.app_file(app["client_id"]),
                )
                return client
        with connection.client(_NoCredentials()) as anonymous:
            token = self.session_token(anonymous)
            request = pb.RegisterApplicationRequest(name=name, team=team, environment=environment, keys=list(keys or ()))
            response, _ = anonymous._unary(
                anonymous.tokens.RegisterApplication._callable,
                request,
                metadata=[("authorization", "Bearer " + token)],
                auth=False,
            )
        application = response.application
        registered_name = application.name.rsplit(".", 1)[0] if "." in application.name else application.name
        path = self.app_file(application.client_id)
        app_file = {
            "client_id": application.client_id,
            "client_secret": response.client_secret,
            "tenant_id": application.tenant_id,
            "name": registered_name,
            "environment": response.environment,
            "team": response.team,
        }
        self.write_private(path, _dumps(app_file))
        client = connection.client(Credentials.client_credentials(application.client_id, response.client_secret))
        client.registered = Registered(
            client_id=application.client_id,
            application_name=application.name,
            created=bool(response.created),
            credentials_file=path,
        )
        return client


def login(
    *,
    client_id: str = "",
    client_secret: str = "",
    subject_token_file: Optional[PathLike] = None,
    endpoints: Optional[Endpoints] = None,
    ca_cert: Optional[Pem] = None,
    client_cert: Optional[Pem] = None,
    client_key: Optional[Pem] = None,
    home: Optional[Union[KeymeshHome, PathLike]] = None,
    environ: Optional[Mapping[str, str]] = None,
    **client_kwargs: Any,
) -> str:
    """Logs in once, as ``keymesh login`` does, and stores the session in the keymesh directory
    (``credentials.json``, 0600): with ``client_id`` and ``client_secret`` (the session keeps only the refresh
    token they buy, never the secret), or with ``subject_token_file`` (a platform token, exchanged afresh at each
    use). Returns the client id the session acts as.

    The connection is the one :class:`Client` takes; parameters left out come from the environment, as
    :meth:`Client.from_env` reads it (``KEYMESH_{KEY,CRYPTO,TOKEN,AUDIT}_SERVICE``, ``KEYMESH_CA_CERT``,
    ``KEYMESH_CLIENT_CERT``, ``KEYMESH_CLIENT_KEY``). ``home`` is the directory (default ``$KEYMESH_HOME``, else
    ``~/.keymesh``); other keyword arguments (``timeout``, ``retry``, ``channel_options``) go to the Client.
    """
    return _home(home, environ).login(
        client_id=client_id,
        client_secret=client_secret,
        subject_token_file=subject_token_file,
        endpoints=endpoints,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        environ=environ,
        **client_kwargs,
    )


def register(
    name: str,
    team: str = "",
    environment: str = "development",
    keys: Optional[Sequence[str]] = None,
    *,
    endpoints: Optional[Endpoints] = None,
    ca_cert: Optional[Pem] = None,
    client_cert: Optional[Pem] = None,
    client_key: Optional[Pem] = None,
    home: Optional[Union[KeymeshHome, PathLike]] = None,
    environ: Optional[Mapping[str, str]] = None,
    **client_kwargs: Any,
) -> Client:
    """Auto-registration: a ready :class:`Client` of the application ``name`` in ``environment`` of the
    logged-in identity (see :func:`login`). Its :attr:`Client.registered` (a :class:`Registered`) says which
    application it is, whether this call created it, and where its credentials are.

    Stored credentials of that name and environment (``apps/*.json``) are used as they are while they work (an
    IssueToken succeeds). Otherwise RegisterApplication, with an access token of the login session, creates the
    application or finds it again with fresh credentials, which are stored in ``apps/<client_id>.json`` (0600).
    ``keys`` are the key name patterns it may use (empty: ``default``); the application gets at most what the
    logged-in identity holds on them. Connection parameters as :func:`login`.
    """
    return _home(home, environ).register(
        name,
        team,
        environment,
        keys,
        endpoints=endpoints,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        environ=environ,
        **client_kwargs,
    )


def _home(home: Optional[Union[KeymeshHome, PathLike]], environ: Optional[Mapping[str, str]]) -> KeymeshHome:
    if isinstance(home, KeymeshHome):
        return home
    return KeymeshHome(home if home is not None else default_home(environ))

