"""The keymesh directory (keymesh.home): private atomic files, the login session (no secret, refresh tokens rotated
and written back under the session lock), and auto-registration, against an in-process fake TokenService that
refuses a refresh token presented twice (and then revokes its whole family, as the real one does)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from unittest import mock

import _support  # noqa: F401  (sys.path)
import grpc

import keymesh
from keymesh import home as home_module
from keymesh import pb
from keymesh.home import KeymeshHome
from keymesh.v1 import token_service_pb2_grpc

LOGIN_SECRET = "login-secret-never-stored-1f2e3d"
TENANT = "tn_test"


def jwt(claims: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFZERTQSJ9.{payload}.c2ln"


class FakeSessionTokens(token_service_pb2_grpc.TokenServiceServicer):
    """IssueToken (client credentials, refresh, token exchange) and RegisterApplication, with the rules that matter:
    every refresh token is single use, and one presented again is refused and revokes its family."""

    def __init__(self, *, refresh_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.refresh_delay = refresh_delay
        self.secrets: dict[str, str] = {"app_dev": LOGIN_SECRET}  # client id -> its current secret
        self.refresh: dict[str, dict[str, Any]] = {}  # refresh token -> {client_id, family, used}
        self.revoked_families: set[int] = set()
        self.access: dict[str, str] = {}  # access token -> client id
        self.presented: list[str] = []  # refresh tokens presented, in order
        self.replays: list[str] = []
        self.registered: dict[tuple[str, str], str] = {}  # (name, environment) -> client id
        self.register_requests: list[tuple[Any, Optional[str]]] = []
        self.grants: list[int] = []
        self.subjects: list[str] = []
        # Failures to answer the next refresh with, before the token is looked at: (code, RetryInfo seconds or None).
        self.refresh_failures: list[tuple[grpc.StatusCode, Optional[float]]] = []
        self.n = 0

    def _next(self) -> int:
        self.n += 1
        return self.n

    def _access_token(self, client_id: str) -> str:
        token = jwt({"sub": client_id, "tenant": TENANT, "jti": f"at-{self._next()}"})
        self.access[token] = client_id
        return token

    def _new_family(self, client_id: str, family: Optional[int] = None) -> str:
        token = f"kmrt_{self._next()}"
        self.refresh[token] = {"client_id": client_id, "family": family if family is not None else self.n, "used": False}
        return token

    def IssueToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        if _support.bearer(context) is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "IssueToken must carry no token")
        with self.lock:
            self.grants.append(request.grant_type)
            if request.grant_type == pb.GRANT_TYPE_CLIENT_CREDENTIALS:
                if self.secrets.get(request.client_id) != request.client_secret or not request.client_secret:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid client credentials")
                access = self._access_token(request.client_id)
                return pb.IssueTokenResponse(access_token=access, token_type="Bearer", expires_in_seconds=600, refresh_token=self._new_family(request.client_id))
            if request.grant_type == pb.GRANT_TYPE_TOKEN_EXCHANGE:
                self.subjects.append(request.subject_token)
                client_id = request.subject_token.removeprefix("platform:")
                if client_id not in self.secrets or request.subject_token_type != "urn:ietf:params:oauth:token-type:jwt":
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid subject token")
                return pb.IssueTokenResponse(access_token=self._access_token(client_id), token_type="Bearer", expires_in_seconds=600)
            if request.grant_type != pb.GRANT_TYPE_REFRESH_TOKEN:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "grant_type")
            if self.refresh_failures:  # a rate limit (or an outage) refuses before the token is looked at
                code, delay = self.refresh_failures.pop(0)
                if delay is not None:
                    context.set_trailing_metadata(_support.retry_info_trailer(delay, code))
                context.abort(code, "refused before looking")
            token = request.refresh_token
            self.presented.append(token)
            entry = self.refresh.get(token)
            if entry is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown refresh token")
            if entry["used"] or entry["family"] in self.revoked_families:
                self.replays.append(token)
                self.revoked_families.add(entry["family"])
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "refresh token already used or revoked: its whole family is revoked now")
            entry["used"] = True
            successor = self._new_family(entry["client_id"], entry["family"])
            access = self._access_token(entry["client_id"])
        time.sleep(self.refresh_delay)  # a slow answer: the window two unserialised refreshes would collide in
        return pb.IssueTokenResponse(access_token=access, token_type="Bearer", expires_in_seconds=600, refresh_token=successor)

    def RegisterApplication(self, request: Any, context: grpc.ServicerContext) -> Any:
        bearer = _support.bearer(context)
        with self.lock:
            self.register_requests.append((request, bearer))
            caller = self.access.get((bearer or "").removeprefix("Bearer "))
            if caller is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid access token")
            if not request.name or not request.environment:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name and environment")
            key = (request.name, request.environment)
            created = key not in self.registered
            if created:
                self.registered[key] = f"app_{request.name}_{request.environment}_{self._next()}"
            client_id = self.registered[key]
            secret = f"kms_secret_{self._next()}_{'x' * 24}"  # fresh on every call
            self.secrets[client_id] = secret
        application = pb.Application(client_id=client_id, tenant_id=TENANT, name=f"{request.name}.{request.environment}", roles=[pb.ROLE_DEVELOPER])
        return pb.RegisterApplicationResponse(
            application=application, client_secret=secret, created=created, environment=request.environment, team=request.team
        )


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class Mesh:
    """A FakeSessionTokens on a TLS server, and the connection parameters keymesh.login/register take."""

    def __init__(self, tokens: FakeSessionTokens) -> None:
        self.tokens = tokens
        self.mesh = _support.FakeMesh(tokens=tokens)  # type: ignore[arg-type]
        tls = _support.Tls.get()
        target = f"127.0.0.1:{self.mesh.port}"
        self.target = target
        self.params: dict[str, Any] = {
            "endpoints": keymesh.Endpoints(key_service=target, crypto_service=target, token_service=target),
            "ca_cert": tls.ca_cert,
            "client_cert": tls.client_cert,
            "client_key": tls.client_key,
        }

    def anonymous(self) -> keymesh.Client:
        return keymesh.Client(credentials=home_module._NoCredentials(), **self.params)


class HomeTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="keymesh-home-test-")
        self.addCleanup(self.tmp.cleanup)
        self.dir = Path(self.tmp.name) / "nested" / ".keymesh"
        self.home = KeymeshHome(self.dir)

    def start(self, **kwargs: Any) -> Mesh:
        mesh = Mesh(FakeSessionTokens(**kwargs))
        self.addCleanup(mesh.mesh.stop)
        return mesh

    def login(self, mesh: Mesh) -> str:
        return keymesh.login(client_id="app_dev", client_secret=LOGIN_SECRET, home=self.home, **mesh.params)

    def session(self) -> dict[str, Any]:
        return json.loads(self.home.session_file.read_bytes())

    def all_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.dir.rglob("*") if p.is_file())


class PrivateFilesTest(HomeTestCase):
    def test_files_are_0600_in_0700_directories_and_replaced_whole(self) -> None:
        path = self.home.dir / "apps" / "app_1.json"
        self.home.write_private(path, b'{"first": 1}')
        self.home.write_private(path, b'{"second": 2}')
        self.assertEqual(path.read_bytes(), b'{"second": 2}')
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(mode(self.dir / "apps"), 0o700)
        self.assertEqual(mode(self.dir), 0o700)
        self.assertEqual(os.listdir(self.dir / "apps"), ["app_1.json"], "no temporary file is left behind")

    def test_a_failed_write_leaves_the_old_file_and_no_temporary(self) -> None:
        path = self.home.session_file
        self.home.write_private(path, b"old")
        with mock.patch.object(home_module.os, "fsync", side_effect=OSError(5, "I/O error")):
            with self.assertRaises(OSError):
                self.home.write_private(path, b"new")
        self.assertEqual(path.read_bytes(), b"old")
        self.assertEqual(sorted(os.listdir(self.dir)), ["credentials.json"])

    def test_the_write_is_a_rename_of_a_new_file(self) -> None:
        path = self.home.session_file
        self.home.write_private(path, b"one")
        before = os.stat(path).st_ino
        with open(path, "rb") as reader:  # a reader of the old file keeps reading the old file whole
            self.home.write_private(path, b"two")
            self.assertEqual(reader.read(), b"one")
        self.assertNotEqual(os.stat(path).st_ino, before)

    def test_an_existing_open_directory_is_narrowed(self) -> None:
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o755)
        with self.home.lock_session():
            pass
        self.assertEqual(mode(self.dir), 0o700)
        self.assertEqual(mode(self.home.lock_file), 0o600)
        os.chmod(self.dir, 0o755)
        (self.dir / "apps").mkdir()
        os.chmod(self.dir / "apps", 0o775)
        self.home.write_private(self.home.app_file("app_2"), b"{}")
        self.assertEqual(mode(self.dir), 0o700)
        self.assertEqual(mode(self.dir / "apps"), 0o700)

    def test_default_location(self) -> None:
        self.assertEqual(home_module.default_home({"KEYMESH_HOME": "/x/y", "HOME": "/h"}), Path("/x/y"))
        self.assertEqual(home_module.default_home({"HOME": "/h"}), Path("/h/.keymesh"))
        with self.assertRaises(ValueError):
            home_module.default_home({})

    def test_a_client_id_cannot_leave_the_apps_directory(self) -> None:
        for bad in ("../credentials", "a/b", ".hidden", ""):
            with self.assertRaises(keymesh.KeymeshError):
                self.home.app_file(bad)


class SessionTest(HomeTestCase):
    def test_login_stores_the_refresh_token_and_never_the_secret(self) -> None:
        mesh = self.start()
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o755)
        self.assertEqual(self.login(mesh), "app_dev")
        # Exactly the Rust SDK's serialisation (serde_json::to_vec_pretty of SessionFile).
        self.assertEqual(
            self.home.session_file.read_bytes(),
            b'{\n  "kind": "refresh_token",\n  "client_id": "app_dev",\n  "refresh_token": "kmrt_2"\n}',
        )
        self.assertEqual(mode(self.home.session_file), 0o600)
        self.assertEqual(mode(self.dir), 0o700)
        self.assertNotIn(LOGIN_SECRET.encode(), self.all_bytes())
        self.assertEqual(sorted(os.listdir(self.dir)), [".credentials.lock", "credentials.json"])

    def test_a_refused_login_writes_nothing_and_prints_no_secret(self) -> None:
        mesh = self.start()
        wrong = "wrong-secret-do-not-print-9a8b"
        with self.assertRaises(keymesh.KeymeshError) as caught:
            keymesh.login(client_id="app_dev", client_secret=wrong, home=self.home, **mesh.params)
        self.assertEqual(caught.exception.code_name, "UNAUTHENTICATED")
        for text in (str(caught.exception), repr(caught.exception), str(caught.exception.to_dict())):
            self.assertNotIn(wrong, text)
        self.assertFalse(self.home.session_file.exists())

    def test_each_use_rotates_the_refresh_token_and_writes_it_back(self) -> None:
        mesh = self.start()
        self.login(mesh)
        first = self.session()["refresh_token"]
        with mesh.anonymous() as client:
            access_1 = self.home.session_token(client)
            second = self.session()["refresh_token"]
            access_2 = self.home.session_token(client)
            third = self.session()["refresh_token"]
        self.assertEqual(mesh.tokens.presented, [first, second])
        self.assertEqual(len({first, second, third}), 3)
        self.assertEqual(mesh.tokens.replays, [])
        self.assertNotEqual(access_1, access_2)
        self.assertEqual(mesh.tokens.access[access_2], "app_dev")
        self.assertEqual(set(self.session()), {"kind", "client_id", "refresh_token"})
        self.assertEqual(mode(self.home.session_file), 0o600)
        # The fake does refuse a spent token (so the lock test below can fail): presenting `first` again is a replay,
        # which ends the session.
        spent = self.session()
        spent["refresh_token"] = first
        self.home.write_private(self.home.session_file, json.dumps(spent).encode())
        with mesh.anonymous() as client:
            with self.assertRaises(keymesh.KeymeshError) as caught:
                self.home.session_token(client)
        error = caught.exception
        self.assertEqual(error.code_name, "UNAUTHENTICATED")
        self.assertIn("log in again", error.message)
        self.assertEqual(mesh.tokens.replays, [first])
        for text in (str(error), repr(error)):
            self.assertNotIn("kmrt_", text)

    def test_two_threads_refreshing_one_session_take_turns(self) -> None:
        mesh = self.start(refresh_delay=0.3)
        self.login(mesh)
        first = self.session()["refresh_token"]
        results = self.refresh_concurrently(mesh, 2)
        self.assertEqual([type(r) for r in results], [str, str], results)
        self.assertEqual(mesh.tokens.replays, [])
        self.assertEqual(len(mesh.tokens.presented), 2)
        self.assertEqual(len(set(mesh.tokens.presented)), 2, "each refresh spent its own token")
        self.assertEqual(mesh.tokens.presented[0], first)
        self.assertNotIn(self.session()["refresh_token"], mesh.tokens.presented)  # the newest, unspent
        self.assertNotEqual(results[0], results[1])
        # And the session still works.
        with mesh.anonymous() as client:
            self.home.session_token(client)

    def test_without_the_lock_the_same_race_spends_one_token_twice(self) -> None:
        # The control of the test above: the fake and the timing do catch an unserialised refresh.
        mesh = self.start(refresh_delay=0.3)
        self.login(mesh)

        @contextmanager
        def no_lock(_self: KeymeshHome) -> Iterator[None]:
            yield

        with mock.patch.object(KeymeshHome, "lock_session", no_lock):
            results = self.refresh_concurrently(mesh, 2)
        self.assertEqual(sorted(type(r).__name__ for r in results), ["KeymeshError", "str"])
        self.assertEqual(len(mesh.tokens.replays), 1)

    def refresh_concurrently(self, mesh: Mesh, n: int) -> list[Any]:
        barrier = threading.Barrier(n)
        results: list[Any] = [None] * n

        def worker(i: int) -> None:
            with mesh.anonymous() as client:
                barrier.wait()
                try:
                    results[i] = self.home.session_token(client)
                except keymesh.KeymeshError as e:
                    results[i] = e

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        return results

    def test_processes_refreshing_one_session_take_turns(self) -> None:
        mesh = self.start(refresh_delay=0.2)
        self.login(mesh)
        tls = _support.Tls.get()
        go = Path(self.tmp.name) / "go"
        child = f"""
import json, os, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import keymesh
from keymesh.home import KeymeshHome, _NoCredentials
t = {mesh.target!r}
client = keymesh.Client(keymesh.Endpoints(t, t, t), ca_cert={str(tls.ca_cert)!r}, client_cert={str(tls.client_cert)!r},
                        client_key={str(tls.client_key)!r}, credentials=_NoCredentials())
while not os.path.exists({str(go)!r}):
    time.sleep(0.005)
try:
    KeymeshHome({str(self.dir)!r}).session_token(client)
    print(json.dumps({{"ok": True}}))
except keymesh.KeymeshError as e:
    print(json.dumps({{"ok": False, "error": e.to_dict()}}))
"""
        env = dict(os.environ, GRPC_VERBOSITY="ERROR")
        children = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, env=env, text=True) for _ in range(3)]
        time.sleep(1.0)  # let them import and reach the start line
        go.touch()
        outputs = [json.loads(c.communicate(timeout=30)[0].strip().splitlines()[-1]) for c in children]
        self.assertEqual(outputs, [{"ok": True}] * 3)
        self.assertEqual(mesh.tokens.replays, [])
        self.assertEqual(len(set(mesh.tokens.presented)), 3)
        self.assertNotIn(self.session()["refresh_token"], mesh.tokens.presented)

    def test_the_refresh_is_retried_after_a_rate_limit_but_never_after_unavailable(self) -> None:
        mesh = self.start()
        self.login(mesh)
        mesh.tokens.refresh_failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.05)]
        with mesh.anonymous() as client:
            self.home.session_token(client)
            self.assertEqual(len(mesh.tokens.presented), 1)
            # UNAVAILABLE could come after the token was spent: presenting it again would revoke the session.
            mesh.tokens.refresh_failures = [(grpc.StatusCode.UNAVAILABLE, None)]
            before = self.session()
            with self.assertRaises(keymesh.KeymeshError) as caught:
                self.home.session_token(client)
        self.assertEqual(caught.exception.code_name, "UNAVAILABLE")
        self.assertEqual(caught.exception.attempts, 1)
        self.assertEqual(self.session(), before)

    def test_token_exchange_session(self) -> None:
        mesh = self.start()
        token_file = Path(self.tmp.name) / "sa-token"
        token_file.write_text("platform:app_dev\n")
        relative = os.path.relpath(token_file)
        client_id = keymesh.login(subject_token_file=relative, home=self.home, **mesh.params)
        self.assertEqual(client_id, "app_dev")
        self.assertEqual(self.session(), {"kind": "token_exchange", "client_id": "app_dev", "subject_token_file": str(token_file.resolve())})
        self.assertNotIn(b"platform:", self.all_bytes())
        mesh.tokens.secrets["app_other"] = "unused"
        token_file.write_text("platform:app_other")
        with mesh.anonymous() as client:
            access = self.home.session_token(client)  # the file is read afresh
        self.assertEqual(mesh.tokens.access[access], "app_other")
        self.assertEqual(mesh.tokens.subjects, ["platform:app_dev", "platform:app_other"])

    def test_a_session_written_by_the_rust_sdk_is_used(self) -> None:
        mesh = self.start()
        with mesh.anonymous() as client:
            response = client.tokens.IssueToken(
                pb.IssueTokenRequest(grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS, client_id="app_dev", client_secret=LOGIN_SECRET)
            )
            self.home.write_private(
                self.home.session_file,
                ('{\n  "kind": "refresh_token",\n  "client_id": "app_dev",\n  "refresh_token": "%s"\n}' % response.refresh_token).encode(),
            )
            self.home.session_token(client)
        self.assertEqual(mesh.tokens.presented, [response.refresh_token])

    def test_no_session(self) -> None:
        mesh = self.start()
        with mesh.anonymous() as client:
            with self.assertRaises(keymesh.KeymeshError) as caught:
                self.home.session_token(client)
        self.assertEqual(caught.exception.code_name, "FAILED_PRECONDITION")
        self.assertIn("log in first", caught.exception.message)
        self.home.write_private(self.home.session_file, b'{"kind": "refresh_token", "refresh_token": "kmrt_secretish"')
        with mesh.anonymous() as client:
            with self.assertRaises(keymesh.KeymeshError) as caught:
                self.home.session_token(client)
        self.assertIn("not a keymesh login session", caught.exception.message)
        self.assertNotIn("kmrt_", str(caught.exception))


class RegisterTest(HomeTestCase):
    def register(self, mesh: Mesh, name: str, environment: str, **kwargs: Any) -> keymesh.Client:
        client = keymesh.register(name, environment=environment, home=self.home, **mesh.params, **kwargs)
        self.addCleanup(client.close)
        return client

    def test_register_creates_then_finds_the_stored_application(self) -> None:
        mesh = self.start()
        self.login(mesh)
        app = self.register(mesh, "billing", "staging", team="payments", keys=["py-*", "billing-*"])
        registered = app.registered
        assert registered is not None
        self.assertTrue(registered.created)
        self.assertEqual(registered.application_name, "billing.staging")
        self.assertEqual(registered.credentials_file, self.dir / "apps" / f"{registered.client_id}.json")
        # The request: the session's access token, the fields as given.
        self.assertEqual(len(mesh.tokens.register_requests), 1)
        request, bearer = mesh.tokens.register_requests[0]
        self.assertEqual((request.name, request.environment, request.team, list(request.keys)), ("billing", "staging", "payments", ["py-*", "billing-*"]))
        self.assertEqual(mesh.tokens.access[(bearer or "").removeprefix("Bearer ")], "app_dev")
        self.assertEqual(len(mesh.tokens.presented), 1, "one refresh of the session")
        # The credentials file, as the Rust SDK writes it.
        stored = json.loads(registered.credentials_file.read_bytes())
        secret = mesh.tokens.secrets[registered.client_id]
        self.assertEqual(
            stored,
            {"client_id": registered.client_id, "client_secret": secret, "tenant_id": TENANT, "name": "billing", "environment": "staging", "team": "payments"},
        )
        self.assertEqual(list(stored), ["client_id", "client_secret", "tenant_id", "name", "environment", "team"])
        self.assertEqual(mode(registered.credentials_file), 0o600)
        self.assertEqual(mode(self.dir / "apps"), 0o700)
        # The client is the application's.
        self.assertEqual(mesh.tokens.access[app.access_token()], registered.client_id)
        for text in (repr(app), repr(registered), repr(self.home), str(registered.to_dict())):
            self.assertNotIn(secret, text)
        self.assertNotIn(secret.encode(), self.home.session_file.read_bytes())
        self.assertNotIn(LOGIN_SECRET.encode(), self.all_bytes())

        # Again: the stored credentials work, so nothing is registered and the session is not used.
        again = self.register(mesh, "billing", "staging").registered
        assert again is not None
        self.assertEqual((again.client_id, again.created, again.application_name), (registered.client_id, False, "billing.staging"))
        self.assertEqual(len(mesh.tokens.register_requests), 1)
        self.assertEqual(len(mesh.tokens.presented), 1)

        # Another environment is another application.
        production = self.register(mesh, "billing", "production").registered
        assert production is not None
        self.assertTrue(production.created)
        self.assertNotEqual(production.client_id, registered.client_id)
        self.assertEqual(len(os.listdir(self.dir / "apps")), 2)

    def test_stored_credentials_that_stopped_working_are_registered_again(self) -> None:
        mesh = self.start()
        self.login(mesh)
        first = self.register(mesh, "worker", "development").registered
        assert first is not None
        mesh.tokens.secrets[first.client_id] = "rotated-away"
        again = self.register(mesh, "worker", "development")
        registered = again.registered
        assert registered is not None
        self.assertEqual((registered.client_id, registered.created), (first.client_id, False))
        self.assertEqual(len(mesh.tokens.register_requests), 2)
        stored = json.loads(registered.credentials_file.read_bytes())
        self.assertEqual(stored["client_secret"], mesh.tokens.secrets[first.client_id])
        self.assertEqual(mesh.tokens.access[again.access_token()], first.client_id)

    def test_an_application_the_rust_sdk_stored_is_found(self) -> None:
        mesh = self.start()
        mesh.tokens.secrets["app_rust_1"] = "rust-secret-abc"
        self.home.write_private(
            self.home.app_file("app_rust_1"),
            b'{\n  "client_id": "app_rust_1",\n  "client_secret": "rust-secret-abc",\n  "tenant_id": "tn_test",\n'
            b'  "name": "cli-made",\n  "environment": "staging",\n  "team": ""\n}',
        )
        registered = self.register(mesh, "cli-made", "staging").registered  # no login needed: the stored ones work
        assert registered is not None
        self.assertEqual((registered.client_id, registered.created, registered.application_name), ("app_rust_1", False, "cli-made.staging"))

    def test_registering_needs_a_login(self) -> None:
        mesh = self.start()
        with self.assertRaises(keymesh.KeymeshError) as caught:
            self.register(mesh, "billing", "development")
        self.assertEqual(caught.exception.code_name, "FAILED_PRECONDITION")
        self.assertIn("log in first", caught.exception.message)

    def test_an_ended_session_says_log_in_again(self) -> None:
        mesh = self.start()
        self.login(mesh)
        with mesh.tokens.lock:
            mesh.tokens.revoked_families.update(e["family"] for e in mesh.tokens.refresh.values())
        with self.assertRaises(keymesh.KeymeshError) as caught:
            self.register(mesh, "billing", "development")
        self.assertEqual(caught.exception.code_name, "UNAUTHENTICATED")
        self.assertIn("log in again", caught.exception.message)
        self.assertNotIn("kmrt_", str(caught.exception))
        self.assertEqual(mesh.tokens.register_requests, [])

    def test_connection_from_the_environment(self) -> None:
        mesh = self.start()
        tls = _support.Tls.get()
        environ = {
            "KEYMESH_KEY_SERVICE": mesh.target,
            "KEYMESH_CRYPTO_SERVICE": mesh.target,
            "KEYMESH_TOKEN_SERVICE": mesh.target,
            "KEYMESH_CA_CERT": str(tls.ca_cert),
            "KEYMESH_CLIENT_CERT": str(tls.client_cert),
            "KEYMESH_CLIENT_KEY": str(tls.client_key),
            "KEYMESH_HOME": str(self.dir),
        }
        self.assertEqual(keymesh.login(client_id="app_dev", client_secret=LOGIN_SECRET, environ=environ), "app_dev")
        app = keymesh.register("envapp", environ=environ)
        self.addCleanup(app.close)
        assert app.registered is not None
        self.assertEqual(app.registered.application_name, "envapp.development")
        self.assertTrue(app.registered.credentials_file.is_relative_to(self.dir))
        with self.assertRaises(ValueError):
            keymesh.register("envapp", environ={"KEYMESH_HOME": str(self.dir)})


if __name__ == "__main__":
    unittest.main()
