"""The access token: one renewal in flight however many threads, renewal margin, token exchange, no secrets."""

from __future__ import annotations

import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any

import _support  # noqa: F401  (sys.path)
import grpc

import keymesh
from keymesh import pb
from keymesh.credentials import renewal_margin
from keymesh.v1 import crypto_service_pb2_grpc


class RecordingCrypto(crypto_service_pb2_grpc.CryptoServiceServicer):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.refuse: set[str] = set()
        self.lock = threading.Lock()

    def Hash(self, request: Any, context: grpc.ServicerContext) -> Any:
        token = _support.bearer(context)
        if token is None or token in self.refuse:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid access token")
        with self.lock:
            self.tokens.append(token)
        return pb.HashResponse(digest=token.encode())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RefreshTest(unittest.TestCase):
    def test_margin_is_five_minutes_or_a_fifth(self) -> None:
        self.assertEqual(renewal_margin(3600), 300)
        self.assertEqual(renewal_margin(600), 120)
        self.assertEqual(renewal_margin(10), 2)

    def test_thirty_two_threads_share_one_renewal(self) -> None:
        tokens = _support.FakeTokenService(delay=0.2, lifetime=600)
        crypto = RecordingCrypto()
        mesh = _support.FakeMesh(crypto=crypto, tokens=tokens)
        self.addCleanup(mesh.stop)
        clock = FakeClock()
        client = mesh.client(clock=clock)
        self.addCleanup(client.close)

        self.assertEqual(client.hash(b"warm-up"), b"Bearer tok-1")
        self.assertEqual(len(tokens.requests), 1)
        clock.now += 10
        self.assertEqual(client.hash(b"still fresh"), b"Bearer tok-1")
        self.assertEqual(len(tokens.requests), 1, "a fresh token is reused")

        # 600 s lifetime: renewed 120 s before expiry. At +500 s the token is valid but within the margin.
        clock.now += 490
        crypto.tokens.clear()
        barrier = threading.Barrier(32)
        results: list[Any] = [None] * 32

        def worker(i: int) -> None:
            barrier.wait()
            try:
                results[i] = client.hash(b"x")
            except Exception as e:  # reported below
                results[i] = e

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - start
        self.assertEqual(len(tokens.requests), 2, "exactly one IssueToken for the renewal")
        self.assertEqual(results, [b"Bearer tok-2"] * 32)
        self.assertEqual(sorted(set(crypto.tokens)), ["Bearer tok-2"])
        self.assertEqual(len(crypto.tokens), 32)
        self.assertGreaterEqual(elapsed, 0.2, "the callers waited for the one slow renewal")
        for request in tokens.requests:
            self.assertEqual(request.grant_type, pb.GRANT_TYPE_CLIENT_CREDENTIALS)
            self.assertEqual(request.client_id, "app_test")

    def test_token_exchange_reads_the_file_at_each_renewal(self) -> None:
        tokens = _support.FakeTokenService(lifetime=100)
        crypto = RecordingCrypto()
        mesh = _support.FakeMesh(crypto=crypto, tokens=tokens)
        self.addCleanup(mesh.stop)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "token"
            path.write_text("platform-jwt-A\n")
            clock = FakeClock()
            client = mesh.client(keymesh.Credentials.token_exchange(path), clock=clock)
            self.addCleanup(client.close)
            self.assertEqual(client.hash(b"x"), b"Bearer tok-1")
            path.write_text("platform-jwt-B")
            clock.now += 81  # 100 s lifetime: renewed 20 s before expiry
            self.assertEqual(client.hash(b"x"), b"Bearer tok-2")
        self.assertEqual([r.subject_token for r in tokens.requests], ["platform-jwt-A", "platform-jwt-B"])
        for request in tokens.requests:
            self.assertEqual(request.grant_type, pb.GRANT_TYPE_TOKEN_EXCHANGE)
            self.assertEqual(request.subject_token_type, "urn:ietf:params:oauth:token-type:jwt")
            self.assertEqual(request.client_secret, "")

    def test_wrong_secret_is_unauthenticated_and_never_printed(self) -> None:
        mesh = _support.FakeMesh(crypto=RecordingCrypto())
        self.addCleanup(mesh.stop)
        secret = "wrong-secret-do-not-print"
        credentials = keymesh.Credentials.client_credentials("app_test", secret)
        client = mesh.client(credentials)
        self.addCleanup(client.close)
        with self.assertRaises(keymesh.KeymeshError) as caught:
            client.hash(b"x")
        error = caught.exception
        self.assertEqual((error.code_name, error.code_number), ("UNAUTHENTICATED", 16))
        self.assertEqual(error.message, "invalid client credentials")
        for text in (str(error), repr(error), repr(credentials), repr(client), str(error.to_dict())):
            self.assertNotIn(secret, text)
        self.assertIn("<redacted>", repr(credentials))

    def test_unauthenticated_call_drops_its_token(self) -> None:
        tokens = _support.FakeTokenService()
        crypto = RecordingCrypto()
        crypto.refuse = {"Bearer tok-1"}  # e.g. revoked
        mesh = _support.FakeMesh(crypto=crypto, tokens=tokens)
        self.addCleanup(mesh.stop)
        client = mesh.client()
        self.addCleanup(client.close)
        with self.assertRaises(keymesh.KeymeshError) as caught:
            client.hash(b"x")
        self.assertEqual(caught.exception.code_name, "UNAUTHENTICATED")
        self.assertEqual(len(tokens.requests), 1, "the refused call is not retried")
        self.assertEqual(client.hash(b"x"), b"Bearer tok-2")
        self.assertEqual(client.hash(b"x"), b"Bearer tok-2")
        self.assertEqual(len(tokens.requests), 2)

    def test_token_calls_carry_no_token(self) -> None:
        tokens = _support.FakeTokenService()
        mesh = _support.FakeMesh(crypto=RecordingCrypto(), tokens=tokens)
        self.addCleanup(mesh.stop)
        client = mesh.client()
        self.addCleanup(client.close)
        client.access_token()
        # The fake refuses an IssueToken that carries a bearer token.
        response = client.tokens.IssueToken(
            pb.IssueTokenRequest(grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS, client_id="app_test", client_secret=tokens.secret)
        )
        self.assertEqual(response.access_token, "tok-2")


if __name__ == "__main__":
    unittest.main()
