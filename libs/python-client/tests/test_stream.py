"""The stream/envelope format, and the client's envelope helpers against a fake crypto-service."""

from __future__ import annotations

import base64
import json
import os
import struct
import tempfile
import threading
import unittest
from pathlib import Path
from typing import Any

import _support  # noqa: F401  (sys.path)
import grpc

import keymesh
from keymesh import pb, stream
from keymesh.stream import SEGMENT_TAG_LEN, DecryptionFailed
from keymesh.v1 import crypto_service_pb2_grpc

SEG = stream.MIN_SEGMENT_SIZE
DATA_KEY = bytes(range(100, 132))


def sample(n: int) -> bytes:
    return bytes((i * 31) % 251 for i in range(n))


def seal(plaintext: bytes, aad: bytes = b"", context: Any = None) -> bytes:
    return stream.seal_all(DATA_KEY, b"wrapped-dk", plaintext, aad, context, SEG)


def open_(data: bytes, aad: bytes = b"", context: Any = None, key: bytes = DATA_KEY) -> bytes:
    return stream.open_all(data, key, aad, context)


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    parsed = stream.parse_header(data)
    assert parsed is not None
    _, used = parsed
    body = data[used:]
    return data[:used], [body[i : i + SEG + SEGMENT_TAG_LEN] for i in range(0, len(body), SEG + SEGMENT_TAG_LEN)]


class FormatTest(unittest.TestCase):
    def test_round_trips_at_every_boundary(self) -> None:
        for n in (0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 17):
            plaintext = sample(n)
            data = seal(plaintext)
            header, segments = split(data)
            expected = n // SEG + (1 if n % SEG or n == 0 else 0)
            self.assertEqual(len(segments), expected, n)
            self.assertEqual(len(data), len(header) + n + expected * SEGMENT_TAG_LEN)
            self.assertEqual(open_(data), plaintext, n)

    def test_header_is_what_rust_writes(self) -> None:
        data = seal(b"x")
        (length,) = struct.unpack(">H", data[:2])
        text = data[2 : 2 + length].decode()
        self.assertTrue(text.startswith('{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"'), text)
        self.assertEqual(list(json.loads(text)), ["sv", "alg", "seg", "salt", "np", "kc", "dk"])
        self.assertNotIn(" ", text)
        self.assertTrue(stream.looks_like_stream(data))
        self.assertEqual(base64.b64decode(json.loads(text)["dk"]), b"wrapped-dk")
        # Commitment: HMAC-SHA256(key, "key-commitment-v1"); the Rust unit test's vector for a zero key.
        self.assertEqual(
            stream.key_commitment(bytes(32)).hex(), "4bd4d0ce4e09f6e03ecf46b5a328f2773c5ec8b4b042d6fe1b36417b57c000a2"
        )

    def test_binding_encoding(self) -> None:
        self.assertEqual(stream.encode_binding(), bytes(12))
        self.assertEqual(stream.encode_binding(b"", {}), stream.encode_binding(b"", None))
        encoded = stream.encode_binding(b"ab", {"z": "1", "a": "22"})
        expected = (
            struct.pack(">Q", 2) + b"ab" + struct.pack(">I", 2)
            + struct.pack(">Q", 1) + b"a" + struct.pack(">Q", 2) + b"22"
            + struct.pack(">Q", 1) + b"z" + struct.pack(">Q", 1) + b"1"
        )  # fmt: skip
        self.assertEqual(encoded, expected)

    def test_any_input_chunking_gives_the_same_plaintext(self) -> None:
        plaintext = sample(5 * SEG + 3)
        data = seal(plaintext)
        for piece in (1, 7, SEG - 1, SEG, SEG + SEGMENT_TAG_LEN, SEG + SEGMENT_TAG_LEN + 1, 100_000):
            buffer, rest = b"", data
            while True:
                buffer, rest = buffer + rest[:piece], rest[piece:]
                parsed = stream.parse_header(buffer)
                if parsed is not None:
                    break
            header, used = parsed
            decryptor = header.decryptor(DATA_KEY)
            out = decryptor.update(buffer[used:])
            for i in range(0, len(rest), piece):
                out += decryptor.update(rest[i : i + piece])
            out += decryptor.finish()
            self.assertEqual(out, plaintext, piece)

    def test_incremental_encryptor_matches_any_chunking(self) -> None:
        plaintext = sample(3 * SEG + 5)
        for piece in (1, 1000, SEG, SEG + 1, len(plaintext)):
            encryptor = stream.StreamEncryptor(DATA_KEY, b"dk", segment_size=SEG)
            out = encryptor.header
            for i in range(0, len(plaintext), piece):
                out += encryptor.update(plaintext[i : i + piece])
            out += encryptor.finish()
            self.assertEqual(open_(out), plaintext, piece)

    def test_truncation_reordering_duplication_and_splicing_fail(self) -> None:
        plaintext = sample(3 * SEG + 5)
        data = seal(plaintext)
        header, s = split(data)
        join = lambda *parts: header + b"".join(parts)  # noqa: E731
        cases = {
            "drop the last segment": join(s[0], s[1], s[2]),
            "drop a middle segment": join(s[0], s[2], s[3]),
            "swap two segments": join(s[1], s[0], s[2], s[3]),
            "duplicate a segment": join(s[0], s[0], s[1], s[2], s[3]),
            "append after the last": join(s[0], s[1], s[2], s[3], s[3]),
            "header only": header,
            "cut inside the last segment": data[:-1],
            "one byte appended": data + b"\x00",
        }
        other = seal(plaintext)
        other_header, other_s = split(other)
        cases["segment from another stream"] = join(s[0], other_s[1], s[2], s[3])
        cases["another stream's header"] = other_header + data[len(header) :]
        for what, bad in cases.items():
            with self.subTest(what):
                with self.assertRaises(DecryptionFailed):
                    open_(bad)

    def test_truncation_at_a_boundary_fails_even_for_full_segments(self) -> None:
        data = seal(sample(2 * SEG))  # two full segments; the second sealed as last
        header, s = split(data)
        with self.assertRaises(DecryptionFailed):
            open_(header + s[0])

    def test_binding_and_data_key_are_checked(self) -> None:
        context = {"bucket": "invoices", "tenant": "t1"}
        data = seal(b"bound", b"object-7", context)
        self.assertEqual(open_(data, b"object-7", dict(reversed(list(context.items())))), b"bound")
        for aad, ctx in ((b"", None), (b"object-8", context), (b"object-7", {"bucket": "invoices"}), (b"object-7", None)):
            with self.assertRaises(DecryptionFailed):
                open_(data, aad, ctx)
        with self.assertRaises(DecryptionFailed):
            open_(data, b"object-7", context, key=bytes(32))
        with self.assertRaises(DecryptionFailed):
            open_(data, b"object-7", context, key=DATA_KEY[:16])

    def test_every_flipped_bit_fails(self) -> None:
        data = seal(sample(SEG + 10))
        for i in range(len(data)):
            bad = bytearray(data)
            bad[i] ^= 1 << (i % 8)
            with self.assertRaises(DecryptionFailed, msg=f"byte {i}"):
                open_(bytes(bad))

    def test_malformed_headers_are_refused(self) -> None:
        def framed(text: str) -> bytes:
            body = text.encode()
            return struct.pack(">H", len(body)) + body

        salt = base64.b64encode(bytes(32)).decode()
        np_ = base64.b64encode(bytes(7)).decode()
        kc = base64.b64encode(bytes(32)).decode()

        def h(sv: str = "1", alg: str = '"AES-256-GCM"', seg: str = "4096", s: str = salt, n: str = np_, dk: str = '"AA=="', extra: str = "") -> str:
            return f'{{"sv":{sv},"alg":{alg},"seg":{seg},"salt":"{s}","np":"{n}","kc":"{kc}","dk":{dk}{extra}}}'

        bad = [
            h(sv="2"),
            h(sv="1.0"),
            h(sv="true"),
            h(sv='"1"'),
            h(alg='"AES-512-GCM"'),
            h(seg="4095"),
            h(seg="2097153"),
            h(seg="4096.0"),
            h(s="AA=="),
            h(n=base64.b64encode(bytes(8)).decode()),
            h(dk='""'),
            h(dk='"!"'),
            h(dk='"AA"'),  # unpadded
            h(dk='"AB=="'),  # non-canonical trailing bits
            h(dk='"AA==\\n"'),
            h(extra=',"x":0'),
            h(extra=',"sv":1'),  # duplicate field
            f'{{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np_}","kc":"{kc}"}}',
            '{"v":3}',
            f'[1,"AES-256-GCM",4096,"{salt}","{np_}","{kc}","AA=="]',
            " " + h(),
            h() + "x",
            h(sv="NaN"),
        ]
        for text in bad:
            with self.subTest(text=text[:40]):
                with self.assertRaises(DecryptionFailed):
                    stream.parse_header(framed(text))
        good = framed(h())
        parsed = stream.parse_header(good)
        self.assertIsNotNone(parsed)
        self.assertEqual(parsed[1], len(good))
        self.assertIsNotNone(stream.parse_header(framed(h(alg='"AES-128-GCM"'))))
        self.assertIsNone(stream.parse_header(good[:10]), "short input asks for more")
        self.assertIsNone(stream.parse_header(b"\x00"))
        with self.assertRaises(DecryptionFailed):
            stream.parse_header(b"\x7f\xff")
        with self.assertRaises(DecryptionFailed):
            stream.parse_header(b"\x00\x00")
        with self.assertRaises(DecryptionFailed):
            stream.parse_header(b"\x00\x05\xff\xfe{}}")

    def test_encryptor_checks_its_inputs(self) -> None:
        with self.assertRaises(ValueError):
            stream.StreamEncryptor(DATA_KEY, b"dk", segment_size=100)
        with self.assertRaises(ValueError):
            stream.StreamEncryptor(bytes(24), b"dk", segment_size=SEG)
        with self.assertRaises(ValueError):
            stream.StreamEncryptor(DATA_KEY, bytes(7000), segment_size=SEG)
        short_key = bytes([3]) * 16
        data = stream.seal_all(short_key, b"dk", b"short key", segment_size=SEG)
        header, _ = stream.parse_header(data)
        self.assertEqual(header.algorithm, "AES-128-GCM")
        self.assertEqual(stream.open_all(data, short_key), b"short key")
        self.assertNotIn(DATA_KEY.hex(), repr(stream.StreamEncryptor(DATA_KEY, b"dk")))


class FakeDataKeys(crypto_service_pb2_grpc.CryptoServiceServicer):
    """GenerateDataKey returns DATA_KEY wrapped as b"wrapped:" + binding; Decrypt opens only that."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    @staticmethod
    def wrap(key: str, aad: bytes, context: Any) -> bytes:
        return b"wrapped:" + key.encode() + b":" + stream.encode_binding(aad, dict(context))

    def GenerateDataKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls.append(("GenerateDataKey", request))
        wrapped = self.wrap(request.key, request.aad, request.encryption_context)
        return pb.GenerateDataKeyResponse(plaintext=DATA_KEY, ciphertext=wrapped, key_id="k_1", key_version=1)

    def Decrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls.append(("Decrypt", request))
        for name in ("orders", "k_1"):
            if request.ciphertext == self.wrap(name, request.aad, request.encryption_context):
                if request.key and request.key not in ("orders", "k_1"):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "context mismatch")
                return pb.DecryptResponse(plaintext=DATA_KEY, key_id="k_1", key_version=1)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decryption failed")


class EnvelopeClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.crypto = FakeDataKeys()
        mesh = _support.FakeMesh(crypto=self.crypto)
        self.addCleanup(mesh.stop)
        self.client = mesh.client()
        self.addCleanup(self.client.close)
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.path = Path(self.dir.name)

    def names(self) -> list[str]:
        return [name for name, _ in self.crypto.calls]

    def test_envelope_in_memory(self) -> None:
        envelope = self.client.seal_envelope("orders", b"card 4111", aad=b"order-42", context={"team": "billing"})
        self.assertEqual(self.names(), ["GenerateDataKey"])
        self.assertEqual(
            self.client.open_envelope(envelope, aad=b"order-42", context={"team": "billing"}, key="orders"), b"card 4111"
        )
        self.assertEqual(self.names(), ["GenerateDataKey", "Decrypt"])
        self.assertEqual(self.crypto.calls[1][1].key, "orders")
        with self.assertRaises(keymesh.KeymeshError) as caught:
            self.client.open_envelope(envelope, aad=b"order-43", context={"team": "billing"})
        self.assertEqual((caught.exception.code_name, caught.exception.message), ("INVALID_ARGUMENT", "decryption failed"))
        with self.assertRaises(keymesh.KeymeshError) as caught:
            self.client.open_envelope(b"\x00\x10not a stream at all")
        self.assertEqual(caught.exception.message, "input is not a keymesh stream or envelope")

    def test_file_round_trip_in_segments(self) -> None:
        plaintext = os.urandom(3 * 256 * 1024 + 12345)  # several read chunks and segments
        source, sealed, opened = self.path / "in", self.path / "sealed", self.path / "out"
        source.write_bytes(plaintext)
        n = self.client.seal_file("orders", source, sealed, aad=b"a", context={"k": "v"}, segment_size=SEG)
        self.assertEqual(n, len(plaintext))
        self.assertEqual(
            len(sealed.read_bytes()) - split(sealed.read_bytes())[0].__len__(), len(plaintext) + (len(plaintext) // SEG + 1) * 16
        )
        self.assertEqual(self.client.open_file(sealed, opened, aad=b"a", context={"k": "v"}), len(plaintext))
        self.assertEqual(opened.read_bytes(), plaintext)
        self.assertEqual(self.names(), ["GenerateDataKey", "Decrypt"])
        self.assertEqual(sorted(p.name for p in self.path.iterdir()), ["in", "out", "sealed"])

    def test_tampered_or_truncated_file_leaves_no_output(self) -> None:
        source, sealed = self.path / "in", self.path / "sealed"
        source.write_bytes(sample(3 * SEG + 100))
        self.client.seal_file("orders", source, sealed, segment_size=SEG)
        good = sealed.read_bytes()
        header, segments = split(good)
        variants = {
            "flipped": good[:-20] + bytes([good[-20] ^ 1]) + good[-19:],
            "truncated at a boundary": header + b"".join(segments[:-1]),
            "reordered": header + segments[1] + segments[0] + b"".join(segments[2:]),
        }
        for what, data in variants.items():
            with self.subTest(what):
                bad, out = self.path / "bad", self.path / "out"
                bad.write_bytes(data)
                with self.assertRaises(keymesh.KeymeshError) as caught:
                    self.client.open_file(bad, out)
                self.assertEqual(caught.exception.message, "decryption failed")
                self.assertFalse(out.exists())
                self.assertEqual(sorted(p.name for p in self.path.iterdir()), ["bad", "in", "sealed"])


class FakeStreams(FakeDataKeys):
    """EncryptStream/DecryptStream in the stream format with DATA_KEY; the first ``unavailable`` calls are
    refused with UNAVAILABLE and a RetryInfo of 50 ms."""

    def __init__(self, unavailable: int = 0) -> None:
        super().__init__()
        self.unavailable = unavailable
        self.stream_calls = 0
        self.clean_ends: list[bool] = []
        self.done = threading.Event()
        self.lock = threading.Lock()

    def _admit(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.stream_calls += 1
            refuse = self.stream_calls <= self.unavailable
        if _support.bearer(context) != "Bearer tok-1":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        if refuse:
            context.set_trailing_metadata(_support.retry_info_trailer(0.05))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is at capacity")

    def EncryptStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        self._admit(context)
        clean = False
        try:
            init = next(request_iterator).init
            wrapped = FakeDataKeys.wrap(init.key, init.aad, init.encryption_context)
            encryptor = stream.StreamEncryptor(
                DATA_KEY, wrapped, init.aad, dict(init.encryption_context), init.segment_size or stream.DEFAULT_SEGMENT_SIZE
            )
            yield pb.EncryptStreamResponse(chunk=encryptor.header)
            for request in request_iterator:
                out = encryptor.update(request.chunk)
                if out:
                    yield pb.EncryptStreamResponse(chunk=out)
            clean = True
            yield pb.EncryptStreamResponse(chunk=encryptor.finish())
        finally:
            self.clean_ends.append(clean)
            self.done.set()

    def DecryptStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        self._admit(context)
        init = next(request_iterator).init
        buffer = b""
        decryptor = None
        try:
            for request in request_iterator:
                if decryptor is None:
                    buffer += request.chunk
                    parsed = stream.parse_header(buffer)
                    if parsed is None:
                        continue
                    header, used = parsed
                    if header.wrapped_data_key != FakeDataKeys.wrap("orders", init.aad, init.encryption_context):
                        raise DecryptionFailed()
                    decryptor = header.decryptor(DATA_KEY, init.aad, dict(init.encryption_context))
                    out = decryptor.update(buffer[used:])
                else:
                    out = decryptor.update(request.chunk)
                if out:
                    yield pb.DecryptStreamResponse(chunk=out)
            if decryptor is None:
                raise DecryptionFailed()
            yield pb.DecryptStreamResponse(chunk=decryptor.finish())
        except DecryptionFailed:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decryption failed")


class FailingReader:
    """Yields ``good`` bytes, then fails."""

    def __init__(self, good: bytes) -> None:
        self.good = good

    def read(self, n: int = -1) -> bytes:
        if self.good:
            out, self.good = self.good[:n], self.good[n:]
            return out
        raise OSError(5, "Input/output error")

    def seekable(self) -> bool:
        return False


class ServiceStreamTest(unittest.TestCase):
    def start(self, unavailable: int = 0) -> FakeStreams:
        streams = FakeStreams(unavailable)
        mesh = _support.FakeMesh(crypto=streams)
        self.addCleanup(mesh.stop)
        self.client = mesh.client()
        self.addCleanup(self.client.close)
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        self.path = Path(d.name)
        return streams

    def test_encrypt_and_decrypt_files_through_the_service(self) -> None:
        streams = self.start(unavailable=1)  # the first EncryptStream is refused, retried from the start
        plaintext = os.urandom(5 * 256 * 1024 + 7)
        source, sealed, opened = self.path / "in", self.path / "sealed", self.path / "out"
        source.write_bytes(plaintext)
        n = self.client.encrypt_file("orders", source, sealed, aad=b"a", context={"k": "v"}, segment_size=64 * 1024)
        self.assertEqual(n, len(plaintext))
        self.assertEqual(streams.stream_calls, 2)
        # The service's stream opens here (envelope open) and through DecryptStream.
        self.assertEqual(self.client.open_envelope(sealed.read_bytes(), aad=b"a", context={"k": "v"}), plaintext)
        self.assertEqual(self.client.decrypt_file(sealed, opened, aad=b"a", context={"k": "v"}), len(plaintext))
        self.assertEqual(opened.read_bytes(), plaintext)

    def test_tampered_stream_fails_after_output_and_leaves_no_file(self) -> None:
        self.start()
        source, sealed, opened = self.path / "in", self.path / "sealed", self.path / "out"
        source.write_bytes(sample(10 * SEG))
        self.client.encrypt_file("orders", source, sealed, segment_size=SEG)
        data = bytearray(sealed.read_bytes())
        data[-5] ^= 0x40  # the last segment: earlier segments' plaintext is streamed before the failure
        sealed.write_bytes(bytes(data))
        with self.assertRaises(keymesh.KeymeshError) as caught:
            self.client.decrypt_file(sealed, opened)
        self.assertEqual((caught.exception.code_name, caught.exception.message), ("INVALID_ARGUMENT", "decryption failed"))
        self.assertFalse(opened.exists())
        self.assertEqual(sorted(p.name for p in self.path.iterdir()), ["in", "sealed"])

    def test_a_read_error_cancels_instead_of_ending_the_stream(self) -> None:
        streams = self.start()
        out = self.path / "out"
        with open(out, "wb") as writer:
            with self.assertRaises(OSError):
                self.client.encrypt_stream("orders", FailingReader(sample(300 * 1024)), writer, segment_size=SEG)
        self.assertTrue(streams.done.wait(5))
        self.assertEqual(streams.clean_ends, [False], "the service must never see a clean end of a partial input")


if __name__ == "__main__":
    unittest.main()
