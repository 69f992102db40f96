"""keymesh's stream format, version 1 (``libs/crypto/src/stream.rs``), in pure Python on ``cryptography``.

One format serves crypto-service's EncryptStream/DecryptStream and client-side (envelope) encryption, so a
stream made by the service opens here with the data key, and an envelope sealed here opens in DecryptStream
and in the Rust SDK::

    [u16be header length, 1..=8192][header: compact JSON][segment 0][segment 1]...[segment n-1]
    {"sv":1,"alg":"AES-256-GCM","seg":1048576,"salt":"...","np":"...","kc":"...","dk":"..."}

- ``dk`` is the data key DK wrapped by crypto-service (a keymesh ciphertext that Decrypt opens with the
  stream's AAD and encryption context); ``kc`` = HMAC-SHA256(DK, "key-commitment-v1") is checked first.
- stream key = HKDF-SHA256(ikm=DK, salt=salt, info="keymesh/stream/v1" || SHA-256(u16be(len) || header ||
  binding)), as long as DK; the binding is the AAD and encryption context (:func:`encode_binding`).
- segment i is AES-GCM under the stream key, no associated data, nonce ``np || u32be(i) || last``; every
  segment but the last holds exactly ``seg`` plaintext bytes, the last 0 to ``seg`` (an empty plaintext is
  one final segment of just a tag).

Every malformation, and every failure to verify, is the same opaque :class:`DecryptionFailed`. A decryptor
releases a segment's plaintext only after its tag verifies, but the stream is whole only once
:meth:`StreamDecryptor.finish` succeeds: a reader must discard what it got when that fails.

Nothing here talks to the mesh; :class:`keymesh.Client` adds the GenerateDataKey and Decrypt calls.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MAX_SEGMENT_SIZE",
    "MAX_STREAM_HEADER_LEN",
    "MIN_SEGMENT_SIZE",
    "SEGMENT_TAG_LEN",
    "STREAM_VERSION",
    "DecryptionFailed",
    "StreamDecryptor",
    "StreamEncryptor",
    "StreamHeader",
    "encode_binding",
    "key_commitment",
    "looks_like_stream",
    "open_all",
    "parse_header",
    "seal_all",
]

STREAM_VERSION = 1
MAX_STREAM_HEADER_LEN = 8192
DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 4 << 10
MAX_SEGMENT_SIZE = 2 << 20
SEGMENT_TAG_LEN = 16
SALT_LEN = 32
NONCE_PREFIX_LEN = 7
COMMITMENT_LEN = 32
MAX_SEGMENTS = 1 << 32
_KDF_LABEL = b"keymesh/stream/v1"
_COMMITMENT_LABEL = b"key-commitment-v1"
_CIPHERS = {"AES-128-GCM": 16, "AES-256-GCM": 32}
_FIELDS = ("sv", "alg", "seg", "salt", "np", "kc", "dk")


class DecryptionFailed(Exception):
    """A stream or envelope did not open: malformed, tampered, truncated, reordered, under another data key,
    or with another AAD or encryption context. Deliberately says no more (as the service does)."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


def key_commitment(data_key: bytes) -> bytes:
    """HMAC-SHA256(data_key, "key-commitment-v1"), the ``kc`` header field."""
    return hmac.new(data_key, _COMMITMENT_LABEL, hashlib.sha256).digest()


def encode_binding(aad: bytes = b"", context: Optional[Mapping[str, str]] = None) -> bytes:
    """The AAD and encryption context as keymesh binds them: ``u64be(len(aad)) || aad || u32be(count)`` and
    then each entry, sorted by key (UTF-8 byte order, as Rust's BTreeMap), as ``u64be(len(k)) || k ||
    u64be(len(v)) || v``. No context and an empty one encode alike."""
    out = bytearray(struct.pack(">Q", len(aad)))
    out += aad
    items = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in (context or {}).items())
    out += struct.pack(">I", len(items))
    for k, v in items:
        out += struct.pack(">Q", len(k)) + k
        out += struct.pack(">Q", len(v)) + v
    return bytes(out)


def check_segment_size(segment_size: int) -> None:
    """Raises ValueError unless ``segment_size`` is within 4096..=2097152."""
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment size {segment_size} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}")


def _derive_stream_key(data_key: bytes, salt: bytes, header: bytes, aad: bytes, context: Optional[Mapping[str, str]]) -> bytes:
    transcript = header + encode_binding(aad, context)
    info = _KDF_LABEL + hashlib.sha256(transcript).digest()
    return HKDF(algorithm=hashes.SHA256(), length=len(data_key), salt=salt, info=info).derive(data_key)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= MAX_SEGMENTS:
        raise OverflowError("stream has more than 2^32 segments")
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def looks_like_stream(data: bytes) -> bool:
    """Whether ``data`` begins like a stream (rather than a unary ciphertext); :func:`parse_header` decides."""
    return data[2:8] == b'{"sv":'


class StreamEncryptor:
    """Encrypts one stream incrementally; holds at most one segment of plaintext.

    Write :attr:`header` first, then whatever :meth:`update` and :meth:`finish` return.
    """

    def __init__(
        self,
        data_key: bytes,
        wrapped_data_key: bytes,
        aad: bytes = b"",
        context: Optional[Mapping[str, str]] = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        check_segment_size(segment_size)
        alg = {16: "AES-128-GCM", 32: "AES-256-GCM"}.get(len(data_key))
        if alg is None:
            raise ValueError(f"a stream data key is 16 or 32 bytes, not {len(data_key)}")
        if not wrapped_data_key:
            raise ValueError("the wrapped data key is empty")
        salt = os.urandom(SALT_LEN)
        self._prefix = os.urandom(NONCE_PREFIX_LEN)
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        raw = {
            "sv": STREAM_VERSION,
            "alg": alg,
            "seg": segment_size,
            "salt": b64(salt),
            "np": b64(self._prefix),
            "kc": b64(key_commitment(data_key)),
            "dk": b64(wrapped_data_key),
        }
        body = json.dumps(raw, separators=(",", ":")).encode("utf-8")
        if len(body) > MAX_STREAM_HEADER_LEN:
            raise ValueError(f"stream header of {len(body)} bytes is over {MAX_STREAM_HEADER_LEN} (wrapped data key too long)")
        self.header: bytes = struct.pack(">H", len(body)) + body
        self._aead = AESGCM(_derive_stream_key(data_key, salt, self.header, aad, context))
        self.segment_size = segment_size
        self._index = 0
        self._pending = bytearray()
        self._finished = False

    def __repr__(self) -> str:
        return f"StreamEncryptor(segment_size={self.segment_size}, segments_sealed={self._index})"

    def update(self, plaintext: Union[bytes, bytearray, memoryview]) -> bytes:
        """Takes more plaintext and returns every segment it completes. A full segment is held back until more
        plaintext arrives (only then is it known not to be the last)."""
        if self._finished:
            raise ValueError("the stream is finished")
        out = bytearray()
        view = memoryview(plaintext)
        while view:
            if len(self._pending) == self.segment_size:
                out += self._seal_pending(last=False)
            take = min(self.segment_size - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
        return bytes(out)

    def finish(self) -> bytes:
        """Seals and returns the final segment (possibly of an empty plaintext)."""
        if self._finished:
            raise ValueError("the stream is finished")
        self._finished = True
        return self._seal_pending(last=True)

    def _seal_pending(self, last: bool) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, last), bytes(self._pending), None)
        self._pending = bytearray()
        self._index += 1
        return sealed


@dataclass(frozen=True)
class StreamHeader:
    """A parsed header. Its fields are claims until a segment opens."""

    algorithm: str
    segment_size: int
    salt: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)
    commitment: bytes = field(repr=False)
    wrapped_data_key: bytes = field(repr=False)
    raw: bytes = field(repr=False)  # the length prefix and the JSON, exactly as read

    @property
    def key_len(self) -> int:
        return _CIPHERS[self.algorithm]

    def decryptor(self, data_key: bytes, aad: bytes = b"", context: Optional[Mapping[str, str]] = None) -> "StreamDecryptor":
        """Checks ``data_key`` against the commitment (in constant time) and starts decrypting."""
        if len(data_key) != self.key_len or not hmac.compare_digest(key_commitment(data_key), self.commitment):
            raise DecryptionFailed()
        key = _derive_stream_key(data_key, self.salt, self.raw, aad, context)
        return StreamDecryptor(AESGCM(key), self.nonce_prefix, self.segment_size)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate field")
        out[k] = v
    return out


def _reject_constant(_: str) -> object:
    raise ValueError("not JSON")


def _canonical_b64(value: object, length: Optional[int]) -> bytes:
    """Standard, padded, canonical base64 (as Rust's base64 STANDARD engine decodes it)."""
    if not isinstance(value, str):
        raise DecryptionFailed()
    try:
        encoded = value.encode("ascii")
        decoded = base64.b64decode(encoded, validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise DecryptionFailed() from None
    if base64.b64encode(decoded) != encoded:
        raise DecryptionFailed()
    if (length is not None and len(decoded) != length) or (length is None and not decoded):
        raise DecryptionFailed()
    return decoded


def _uint(value: object, limit: int) -> int:
    # serde reads u8/u32 only from JSON integers: no floats such as 1.0, no booleans.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise DecryptionFailed()
    return value


def parse_header(data: bytes) -> Optional[tuple[StreamHeader, int]]:
    """Reads a header from the start of ``data``: ``None`` when more bytes are needed, else the header and
    how many bytes it took. Raises :class:`DecryptionFailed` as soon as the input is known to be malformed
    (a length prefix of 0 or over 8192 at once)."""
    if len(data) < 2:
        return None
    (length,) = struct.unpack(">H", data[:2])
    if length == 0 or length > MAX_STREAM_HEADER_LEN:
        raise DecryptionFailed()
    if len(data) < 2 + length:
        return None
    raw = bytes(data[: 2 + length])
    if raw[2:3] != b"{":
        raise DecryptionFailed()
    try:
        parsed = json.loads(raw[2:].decode("utf-8"), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecryptionFailed() from None
    if not isinstance(parsed, dict) or set(parsed) != set(_FIELDS):
        raise DecryptionFailed()
    if _uint(parsed["sv"], 0xFF) != STREAM_VERSION:
        raise DecryptionFailed()
    alg = parsed["alg"]
    if not isinstance(alg, str) or alg not in _CIPHERS:
        raise DecryptionFailed()
    segment_size = _uint(parsed["seg"], 0xFFFFFFFF)
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise DecryptionFailed()
    header = StreamHeader(
        algorithm=alg,
        segment_size=segment_size,
        salt=_canonical_b64(parsed["salt"], SALT_LEN),
        nonce_prefix=_canonical_b64(parsed["np"], NONCE_PREFIX_LEN),
        commitment=_canonical_b64(parsed["kc"], COMMITMENT_LEN),
        wrapped_data_key=_canonical_b64(parsed["dk"], None),
        raw=raw,
    )
    return header, len(raw)


class StreamDecryptor:
    """Decrypts the segments of one stream incrementally; holds at most one sealed segment. Made by
    :meth:`StreamHeader.decryptor`."""

    def __init__(self, aead: AESGCM, prefix: bytes, segment_size: int) -> None:
        self._aead = aead
        self._prefix = prefix
        self.segment_size = segment_size
        self._sealed_len = segment_size + SEGMENT_TAG_LEN
        self._index = 0
        self._pending = bytearray()
        self._failed = False
        self._finished = False

    def __repr__(self) -> str:
        return f"StreamDecryptor(segment_size={self.segment_size}, segments_opened={self._index})"

    def update(self, data: Union[bytes, bytearray, memoryview]) -> bytes:
        """Takes more of the stream (after the header) and returns the plaintext of every segment it verified.
        A full-length segment is held back until more input shows it is not the last. After a failure every
        call fails."""
        if self._failed or self._finished:
            raise DecryptionFailed()
        out = bytearray()
        view = memoryview(data)
        while view:
            if len(self._pending) == self._sealed_len:
                out += self._open_pending(last=False)
            take = min(self._sealed_len - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
        return bytes(out)

    def finish(self) -> bytes:
        """Opens the final segment. Only when this succeeds is the stream known to be whole (not truncated,
        nothing appended)."""
        if self._failed or self._finished:
            raise DecryptionFailed()
        self._finished = True
        return self._open_pending(last=True)

    def _open_pending(self, last: bool) -> bytes:
        try:
            if len(self._pending) < SEGMENT_TAG_LEN:
                raise DecryptionFailed()
            plaintext = self._aead.decrypt(_nonce(self._prefix, self._index, last), bytes(self._pending), None)
        except (InvalidTag, DecryptionFailed, OverflowError):
            self._failed = True
            raise DecryptionFailed() from None
        self._pending = bytearray()
        self._index += 1
        return plaintext


def seal_all(
    data_key: bytes,
    wrapped_data_key: bytes,
    plaintext: bytes,
    aad: bytes = b"",
    context: Optional[Mapping[str, str]] = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """A whole buffer into one stream (an envelope)."""
    encryptor = StreamEncryptor(data_key, wrapped_data_key, aad, context, segment_size)
    return encryptor.header + encryptor.update(plaintext) + encryptor.finish()


def open_all(
    stream: bytes,
    data_key: bytes,
    aad: bytes = b"",
    context: Optional[Mapping[str, str]] = None,
) -> bytes:
    """A whole stream (or envelope) back to plaintext, given its unwrapped data key."""
    parsed = parse_header(stream)
    if parsed is None:
        raise DecryptionFailed()
    header, used = parsed
    decryptor = header.decryptor(data_key, aad, context)
    return decryptor.update(memoryview(stream)[used:]) + decryptor.finish()
