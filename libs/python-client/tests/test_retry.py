"""Retries and deadlines against an in-process gRPC server over mutual TLS."""

from __future__ import annotations

import threading
import time
import unittest
from typing import Any, Callable

import _support  # noqa: F401  (sys.path)
import grpc

import keymesh
from keymesh import pb
from keymesh.v1 import crypto_service_pb2_grpc


class ScriptedCrypto(crypto_service_pb2_grpc.CryptoServiceServicer):
    """Encrypt answers with ``script(n, context)`` for the n-th call (from 1); records each call's time and token."""

    def __init__(self, script: Callable[[int, grpc.ServicerContext], None]) -> None:
        self.script = script
        self.calls: list[tuple[float, Any]] = []
        self.lock = threading.Lock()

    def Encrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls.append((time.monotonic(), _support.bearer(context)))
            n = len(self.calls)
        self.script(n, context)
        return pb.EncryptResponse(ciphertext=b"ct:" + request.plaintext, key_id="k_1", key_version=1)


def unavailable_once_with_retry_info(seconds: float) -> Callable[[int, grpc.ServicerContext], None]:
    def script(n: int, context: grpc.ServicerContext) -> None:
        if n == 1:
            context.set_trailing_metadata(_support.retry_info_trailer(seconds))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is at capacity; retry later")

    return script


class RetryTest(unittest.TestCase):
    def serve(self, script: Callable[[int, grpc.ServicerContext], None], **client_kwargs: Any) -> tuple[ScriptedCrypto, keymesh.Client]:
        crypto = ScriptedCrypto(script)
        mesh = _support.FakeMesh(crypto=crypto)
        self.addCleanup(mesh.stop)
        client = mesh.client(**client_kwargs)
        self.addCleanup(client.close)
        client.access_token()  # connect and cache a token first, so timings measure the retry alone
        return crypto, client

    def test_unavailable_with_retry_info_is_retried_after_the_delay(self) -> None:
        crypto, client = self.serve(unavailable_once_with_retry_info(0.3))
        start = time.monotonic()
        ciphertext = client.encrypt("k", b"hello", timeout=5)
        elapsed = time.monotonic() - start
        self.assertEqual(ciphertext, b"ct:hello")
        self.assertEqual(len(crypto.calls), 2)
        self.assertGreaterEqual(elapsed, 0.3)
        self.assertGreaterEqual(crypto.calls[1][0] - crypto.calls[0][0], 0.3)
        self.assertLess(elapsed, 2.0)
        self.assertTrue(all(token == "Bearer tok-1" for _, token in crypto.calls))

    def test_raw_stub_is_retried_too(self) -> None:
        crypto, client = self.serve(unavailable_once_with_retry_info(0.3))
        start = time.monotonic()
        response = client.crypto.Encrypt(pb.EncryptRequest(key="k", plaintext=b"x"), timeout=5)
        self.assertEqual(response.ciphertext, b"ct:x")
        self.assertGreaterEqual(time.monotonic() - start, 0.3)
        self.assertEqual(len(crypto.calls), 2)

    def test_deadline_shorter_than_the_retry_delay_fails_at_once(self) -> None:
        crypto, client = self.serve(unavailable_once_with_retry_info(2.0))
        start = time.monotonic()
        with self.assertRaises(keymesh.KeymeshError) as caught:
            client.encrypt("k", b"hello", timeout=0.5)
        elapsed = time.monotonic() - start
        self.assertEqual(caught.exception.code_name, "DEADLINE_EXCEEDED")
        self.assertEqual(caught.exception.code_number, 4)
        self.assertIs(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertAlmostEqual(caught.exception.retry_delay or 0, 2.0, places=3)
        self.assertIn("UNAVAILABLE", caught.exception.message)
        self.assertLess(elapsed, 0.5, "must not wait for the retry delay or even the whole deadline")
        self.assertEqual(len(crypto.calls), 1)

    def test_retry_after_header_is_used_without_retry_info(self) -> None:
        def script(n: int, context: grpc.ServicerContext) -> None:
            if n == 1:
                context.set_trailing_metadata((("retry-after", "1"),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "application app_1 is over its limit")

        crypto, client = self.serve(script)
        start = time.monotonic()
        self.assertEqual(client.encrypt("k", b"a", timeout=3), b"ct:a")
        self.assertGreaterEqual(time.monotonic() - start, 1.0)
        self.assertEqual(len(crypto.calls), 2)

    def test_resource_exhausted_without_a_delay_is_not_retried(self) -> None:
        def script(n: int, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "daily quota used up")

        crypto, client = self.serve(script)
        with self.assertRaises(keymesh.KeymeshError) as caught:
            client.encrypt("k", b"a")
        self.assertEqual(caught.exception.code_name, "RESOURCE_EXHAUSTED")
        self.assertEqual(caught.exception.message, "daily quota used up")
        self.assertEqual(len(crypto.calls), 1)

    def test_attempts_are_bounded_and_backoff_grows(self) -> None:
        def script(n: int, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")

        policy = keymesh.RetryPolicy(max_attempts=4, initial_backoff=0.05, multiplier=2.0, max_backoff=1.0)
        crypto, client = self.serve(script, retry=policy)
        with self.assertRaises(keymesh.KeymeshError) as caught:
            client.encrypt("k", b"a", timeout=10)
        self.assertEqual(caught.exception.code_name, "UNAVAILABLE")
        self.assertEqual(caught.exception.attempts, 4)
        self.assertEqual(len(crypto.calls), 4)

    def test_non_retryable_errors_keep_code_and_message(self) -> None:
        def script(n: int, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.NOT_FOUND, 'key "nope" not found')

        crypto, client = self.serve(script)
        with self.assertRaises(keymesh.KeymeshError) as caught:
            client.encrypt("nope", b"a")
        self.assertEqual((caught.exception.code_name, caught.exception.code_number), ("NOT_FOUND", 5))
        self.assertEqual(caught.exception.message, 'key "nope" not found')
        self.assertIsInstance(caught.exception, grpc.RpcError)
        self.assertEqual(len(crypto.calls), 1)

    def test_server_deadline_is_the_callers(self) -> None:
        def script(n: int, context: grpc.ServicerContext) -> None:
            time.sleep(1.0)

        crypto, client = self.serve(script)
        start = time.monotonic()
        with self.assertRaises(keymesh.KeymeshError) as caught:
            client.encrypt("k", b"a", timeout=0.3)
        self.assertEqual(caught.exception.code_name, "DEADLINE_EXCEEDED")
        self.assertLess(time.monotonic() - start, 0.9)


if __name__ == "__main__":
    unittest.main()
