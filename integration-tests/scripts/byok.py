#!/usr/bin/env python3
"""Independent BYOK / ciphertext helper for keymesh's integration tests.

This script deliberately shares no code with keymesh: it re-implements, from the
format description, the things an integration test wants to check from the
outside:

  wrap      Wrap raw key material for import ("bring your own key") under the
            RSA wrapping public key keymesh hands out, using one of the two
            schemes AWS KMS / GCP KMS users know.

  open      Decrypt a keymesh ciphertext (format version 3, any of its algorithms) with the raw key,
            proving that what keymesh produced is exactly the documented format
            and that the imported material really is the key in use.

  open-stream
            Decrypt a keymesh stream (EncryptStream's output, or a client envelope) with
            the raw data key, segment by segment in constant memory, to a file; prints
            the plaintext's SHA-256 and length. All or nothing: on any failure the
            output file is deleted.

  stream-header
            Print a stream's wrapped data key (header field "dk"), which the test hands
            to keymesh's Decrypt to get the raw data key for open-stream.

  selftest  Internal-consistency checks (plus the fixed vectors that keymesh's
            own unit tests use, and published vectors for the primitives under
            every mode), so a failure in an integration test can be
            pinned on keymesh rather than on this script.

Command line (all binary values are hex; results go to stdout as one hex line;
errors go to stderr with a non-zero exit status: 1 = operation failed,
2 = bad usage):

  byok.py wrap --public-key PEM_PATH
               --algorithm {rsa-oaep-sha256|rsa-aes-key-wrap-sha256}
               --material-hex HEX
  byok.py open --key-hex HEX --ciphertext-hex HEX
               [--aad-hex HEX] [--context-json JSON_OBJECT]
  byok.py open-stream --key-hex HEX --stream-file PATH
               [--aad-hex HEX] [--context-json JSON_OBJECT] --out-file PATH
        prints "<hex SHA-256 of the plaintext> <plaintext length in bytes>"; the plaintext
        goes to --out-file (created or truncated first, deleted again if the stream fails)
  byok.py stream-header --stream-file PATH
        prints the header's "dk" (the wrapped data key) as hex
  byok.py selftest

Only the standard library and the `cryptography` package are used.

Ciphertext format (as written by keymesh's libs/crypto/src/ciphertext.rs and aead.rs):

    [u16 big-endian header length][header: compact JSON, UTF-8][body]

    The header length is 1..=4096. The body's layout depends on the algorithm (table below).

    header (v3), keys in this order as serde_json writes them, no whitespace:
      {"v":3,                     format version (integer)
       "ctx":"user-pii",          the key's *name* (NOT the encryption context)
       "kid":"k_0123:v2",         "<key id>:v<version>", version a u32 > 0
       "alg":"AES-256-GCM",       the algorithm, one of the table below
       "mode":"gcm",              the algorithm's mode; must be the one the table pairs with "alg"
       "nonce":"<base64>",        nonce (IV), standard alphabet, padded; exactly the table's length
       "kc":"<base64>",           32-byte key commitment, HMAC-SHA256(K, "key-commitment-v1") over the
                                  whole raw key K as imported (also for the encrypt-then-MAC modes)
       "aad":false}               whether a non-empty AAD / encryption context was bound

    "alg"                     "mode"               key  nonce  body
    AES-128-GCM               gcm                  16   12     ct || 16-byte tag
    AES-256-GCM               gcm                  32   12     ct || 16-byte tag
    ChaCha20-Poly1305         chacha20-poly1305    32   12     ct || 16-byte tag (RFC 8439)
    XChaCha20-Poly1305        xchacha20-poly1305   32   24     ct || 16-byte tag
    AES-256-GCM-SIV           gcm-siv              32   12     ct || 16-byte tag (RFC 8452)
    AES-256-CBC-HMAC-SHA256   cbc-hmac             32   16     CBC ct (PKCS#7) || 32-byte HMAC tag
    AES-256-CTR-HMAC-SHA256   ctr-hmac             32   12     CTR ct || 32-byte HMAC tag
    AES-256-CCM               ccm                  32   12     ct || 16-byte tag (keymesh seals <= 64 KiB)

    Associated data A, authenticated by every mode:
        A = length prefix || header bytes (exactly as they appear in the ciphertext, not re-serialised)
            || u64be(len(aad)) || aad
            || u32be(number of context entries)
            || for each (k, v) sorted by key bytes:
                   u64be(len(k)) || k || u64be(len(v)) || v

    AEAD modes (GCM, ChaCha20-Poly1305, XChaCha20-Poly1305, GCM-SIV, CCM): the body is
    AEAD-Encrypt(K, nonce, plaintext, associated data = A), i.e. ciphertext (as long as the plaintext)
    followed by the 16-byte tag. CCM uses a 16-byte tag (M = 16) and a 12-byte nonce (L = 3).
    XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) is
        ChaCha20-Poly1305(key = HChaCha20(K, nonce[0:16]), nonce = 00000000 || nonce[16:24])
    where HChaCha20 runs the 20 ChaCha20 rounds on
        constants "expand 32-byte k" || K (8 little-endian words) || nonce[0:16] (4 little-endian words)
    and, without adding the input state back, outputs words 0..3 and 12..15 little-endian (32 bytes).

    Encrypt-then-MAC modes (CBC-HMAC, CTR-HMAC): two 32-byte keys come from K with HKDF-SHA256
    (RFC 5869), empty salt (= 32 zero bytes), info "keymesh/v3/<alg>/enc" (the AES-256 key) and
    "keymesh/v3/<alg>/mac" (the HMAC key), <alg> being the header's "alg" string, e.g.
    "keymesh/v3/AES-256-CBC-HMAC-SHA256/enc". Then
        ct   = AES-256-CBC(enc_key, IV = nonce, PKCS#7-padded plaintext)       for cbc-hmac
             = AES-256-CTR(enc_key, initial counter block = nonce || 00000000,  for ctr-hmac
                           the whole 16-byte block incremented big-endian)
        tag  = HMAC-SHA256(mac_key, u64be(len(A)) || A || nonce || ct)
        body = ct || tag
    The tag is checked (in constant time) before anything is decrypted, so CBC's padding check is no
    oracle.

The encryption context is *not* stored in the header: like the AAD, the caller
must present it again to decrypt (hence --context-json).

Stream format (as written by keymesh's libs/crypto/src/stream.rs; the STREAM construction over AES-GCM):

    [u16 big-endian header length][header: compact JSON, UTF-8][segment 0][segment 1]...[segment n-1]

    The header length is 1..=8192. The header has exactly these keys (keymesh writes them in this order,
    no whitespace; it reads any order, but no other key, none missing, none twice):
      {"sv":1,                    stream format version (integer), must be 1
       "alg":"AES-256-GCM",       "AES-128-GCM" (16-byte data key) or "AES-256-GCM" (32-byte data key)
       "seg":1048576,             plaintext bytes per segment (integer), 4096..=2097152
       "salt":"<base64>",         32 bytes, fresh per stream
       "np":"<base64>",           7-byte nonce prefix
       "kc":"<base64>",           32-byte commitment to the data key DK: HMAC-SHA256(DK, "key-commitment-v1")
       "dk":"<base64>"}           DK wrapped by keymesh (a v3 ciphertext as above, for Decrypt with the
                                  stream's AAD and encryption context); not empty
    (base64: standard alphabet, padded, canonical, as in the v3 header.)

    Opening: the length of DK must be the one "alg" names and "kc" must match DK (constant-time compare),
    then
        binding    = u64be(len(aad)) || aad || u32be(number of context entries)
                     || for each (k, v) sorted by key bytes: u64be(len(k)) || k || u64be(len(v)) || v
                     (the binding part of A above; no context and an empty context both give a count of 0)
        stream key = HKDF-SHA256(ikm = DK, salt = "salt",
                                 info = "keymesh/stream/v1" || SHA-256(length prefix || header || binding),
                                 length = len(DK))
    Segment i (counting from 0) is AES-GCM under the stream key with no associated data,
        nonce = np || u32be(i) || (01 if it is the final segment, else 00)     (12 bytes)
    and is stored as ciphertext || 16-byte tag. Every segment but the last holds exactly "seg" plaintext
    bytes (stored as seg + 16 bytes); the last holds 0..="seg" (stored as 16..=seg + 16 bytes). An empty
    plaintext is one final segment of just a tag. A stream must end with a segment sealed as final, and a
    segment followed by anything must not be: so a stored segment of full length is opened as final only if
    the stream ends right after it. Reordered, dropped, duplicated or appended segments, segments from
    another stream, truncation (also at a segment boundary), a changed header, and a wrong AAD, context or
    data key all fail, and open-stream then fails as a whole: the plaintext of segments that verified before
    the failure may already have been written, so it deletes its output file.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import struct
import sys
import tempfile
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, AESGCMSIV, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)
from cryptography.hazmat.primitives.padding import PKCS7

# --------------------------------------------------------------------------------------------------
# Errors and small helpers
# --------------------------------------------------------------------------------------------------


class ByokError(Exception):
    """An operation failed for a reason worth telling the test author (exit status 1)."""


class UsageError(Exception):
    """The command line itself was wrong (exit status 2)."""


_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")


def parse_hex(value: str, what: str, *, allow_empty: bool = False) -> bytes:
    """Strict hex: an even number of hex digits, nothing else (no spaces, no 0x prefix)."""
    if not _HEX_RE.fullmatch(value):
        raise UsageError(f"{what}: not an even-length hex string")
    data = bytes.fromhex(value)
    if not data and not allow_empty:
        raise UsageError(f"{what}: must not be empty")
    return data


def b64_decode_canonical(value: str, what: str) -> bytes:
    """Decodes standard, padded base64 the way Rust's `base64::engine::general_purpose::STANDARD` does:
    standard alphabet, padding required, no whitespace, and no non-zero trailing bits. Enforced by
    requiring that the value re-encodes to itself."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ByokError(f"header field {what!r} is not valid base64: {e}") from None
    if base64.b64encode(data).decode("ascii") != value:
        raise ByokError(f"header field {what!r} is not canonical padded standard base64")
    return data


# --------------------------------------------------------------------------------------------------
# BYOK wrapping
# --------------------------------------------------------------------------------------------------

# RSA-OAEP with SHA-256 as both the label hash and the MGF1 hash, empty label: what AWS KMS calls
# RSAES_OAEP_SHA_256 and what keymesh's key_import.rs configures on OpenSSL.
OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

# Size of the ephemeral AES key in RSA_AES_KEY_WRAP_SHA_256 (keymesh unwraps with AES-256 KWP only).
EPHEMERAL_AES_KEY_LEN = 32

WRAP_ALGORITHMS = ("rsa-oaep-sha256", "rsa-aes-key-wrap-sha256")


def load_rsa_public_key(path: str) -> rsa.RSAPublicKey:
    """Loads a PEM public key (SubjectPublicKeyInfo, or PKCS#1 "RSA PUBLIC KEY") and insists it is RSA."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ByokError(f"cannot read public key {path!r}: {e}") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise ByokError(f"{path!r} is not a PEM public key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ByokError(f"{path!r} holds a {type(key).__name__}, not an RSA public key")
    return key


def modulus_len(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> int:
    """Length of the RSA modulus in bytes, which is also the length of every RSA ciphertext."""
    return (key.key_size + 7) // 8


def wrap(public_key: rsa.RSAPublicKey, algorithm: str, material: bytes) -> bytes:
    """Wraps `material` for import under `public_key`."""
    k = modulus_len(public_key)
    if algorithm == "rsa-oaep-sha256":
        # OAEP can carry at most k - 2*hLen - 2 bytes (RFC 8017 section 7.1.1), hLen = 32 for SHA-256.
        limit = k - 2 * hashes.SHA256.digest_size - 2
        if len(material) > limit:
            raise ByokError(
                f"{len(material)} bytes of material is over the RSA-OAEP-SHA-256 limit of {limit} bytes "
                f"for a {public_key.key_size}-bit key; use rsa-aes-key-wrap-sha256"
            )
        wrapped = public_key.encrypt(material, OAEP_SHA256)
    elif algorithm == "rsa-aes-key-wrap-sha256":
        # RSA_AES_KEY_WRAP_SHA_256: a fresh AES-256 key, RSA-OAEP-SHA-256-encrypted, followed by the
        # material wrapped under that AES key with AES key wrap with padding (RFC 5649). No length field:
        # the RSA part is exactly the modulus long.
        ephemeral = os.urandom(EPHEMERAL_AES_KEY_LEN)
        rsa_part = public_key.encrypt(ephemeral, OAEP_SHA256)
        wrapped = rsa_part + aes_key_wrap_with_padding(ephemeral, material)
    else:  # argparse restricts choices; kept for callers from Python.
        raise UsageError(f"unknown wrapping algorithm {algorithm!r}")
    # Both schemes start with an RSA ciphertext exactly the modulus long.
    assert len(wrapped) >= k
    return wrapped


def unwrap(private_key: rsa.RSAPrivateKey, algorithm: str, wrapped: bytes) -> bytes:
    """The inverse of `wrap`, mirroring keymesh's checks; used by the self-test only."""
    k = modulus_len(private_key)
    if algorithm == "rsa-oaep-sha256":
        if len(wrapped) != k:
            raise ByokError("wrapped material is not exactly the modulus long")
        return private_key.decrypt(wrapped, OAEP_SHA256)
    if algorithm == "rsa-aes-key-wrap-sha256":
        if len(wrapped) <= k:
            raise ByokError("wrapped material has no AES-KWP part")
        ephemeral = private_key.decrypt(wrapped[:k], OAEP_SHA256)
        if len(ephemeral) != EPHEMERAL_AES_KEY_LEN:
            raise ByokError("ephemeral AES key is not 32 bytes")
        return aes_key_unwrap_with_padding(ephemeral, wrapped[k:])
    raise UsageError(f"unknown wrapping algorithm {algorithm!r}")


# --------------------------------------------------------------------------------------------------
# Body constructions (one per mode), each given the associated data A
# --------------------------------------------------------------------------------------------------

_MASK32 = 0xFFFF_FFFF
_CHACHA_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k", little-endian


def _rotl32(v: int, n: int) -> int:
    return ((v << n) & _MASK32) | (v >> (32 - n))


def _chacha20_rounds(state: list[int]) -> list[int]:
    """The 20 rounds (10 double rounds) of the ChaCha20 block function (RFC 8439 section 2.3) on a 16-word
    state, WITHOUT adding the input state back at the end (the caller adds it for a ChaCha20 block; HChaCha20
    does not)."""
    x = list(state)

    def quarter_round(a: int, b: int, c: int, d: int) -> None:
        x[a] = (x[a] + x[b]) & _MASK32
        x[d] = _rotl32(x[d] ^ x[a], 16)
        x[c] = (x[c] + x[d]) & _MASK32
        x[b] = _rotl32(x[b] ^ x[c], 12)
        x[a] = (x[a] + x[b]) & _MASK32
        x[d] = _rotl32(x[d] ^ x[a], 8)
        x[c] = (x[c] + x[d]) & _MASK32
        x[b] = _rotl32(x[b] ^ x[c], 7)

    for _ in range(10):
        # Column round.
        quarter_round(0, 4, 8, 12)
        quarter_round(1, 5, 9, 13)
        quarter_round(2, 6, 10, 14)
        quarter_round(3, 7, 11, 15)
        # Diagonal round.
        quarter_round(0, 5, 10, 15)
        quarter_round(1, 6, 11, 12)
        quarter_round(2, 7, 8, 13)
        quarter_round(3, 4, 9, 14)
    return x


def _chacha20_state(key: bytes, last16: bytes) -> list[int]:
    """Constants, the 32-byte key and 16 more bytes (counter || nonce for ChaCha20, the HChaCha20 nonce for
    HChaCha20), as little-endian words."""
    if len(key) != 32 or len(last16) != 16:
        raise ValueError("ChaCha20 state needs a 32-byte key and 16 further bytes")
    return [*_CHACHA_CONSTANTS, *struct.unpack("<8I", key), *struct.unpack("<4I", last16)]


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha section 2.2): 20 rounds, no final addition, output words 0..3 and
    12..15 as 32 little-endian bytes."""
    x = _chacha20_rounds(_chacha20_state(key, nonce16))
    return struct.pack("<8I", *x[0:4], *x[12:16])


class XChaCha20Poly1305:
    """XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha section 2.3) on top of the library's ChaCha20-Poly1305:
    the subkey is HChaCha20(key, nonce[0:16]) and the ChaCha20-Poly1305 nonce is 4 zero bytes ||
    nonce[16:24]. Same interface as the library's AEAD classes (`cryptography` has no XChaCha)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("XChaCha20-Poly1305 key must be 32 bytes")
        self._key = bytes(key)

    def _inner(self, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
        if len(nonce) != 24:
            raise ValueError("XChaCha20-Poly1305 nonce must be 24 bytes")
        return ChaCha20Poly1305(hchacha20(self._key, nonce[:16])), bytes(4) + nonce[16:]

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        aead, nonce12 = self._inner(nonce)
        return aead.encrypt(nonce12, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        aead, nonce12 = self._inner(nonce)
        return aead.decrypt(nonce12, data, associated_data)


def _aead_for(spec: AlgorithmSpec, key: bytes):
    """The AEAD object of an AEAD-mode algorithm; every one returns/takes ciphertext || 16-byte tag."""
    try:
        if spec.mode == "gcm":
            return AESGCM(key)
        if spec.mode == "chacha20-poly1305":
            return ChaCha20Poly1305(key)
        if spec.mode == "xchacha20-poly1305":
            return XChaCha20Poly1305(key)
        if spec.mode == "gcm-siv":
            return AESGCMSIV(key)
        if spec.mode == "ccm":
            return AESCCM(key, tag_length=GCM_TAG_LEN)
    except UnsupportedAlgorithm as e:  # e.g. AES-GCM-SIV needs OpenSSL >= 3.2 under `cryptography`
        raise ByokError(f"{spec.name} is not available in this `cryptography`/OpenSSL build: {e}") from None
    raise AssertionError(f"no AEAD for mode {spec.mode!r}")


def etm_keys(spec: AlgorithmSpec, key: bytes) -> tuple[bytes, bytes]:
    """The AES-256 key and the HMAC key of an encrypt-then-MAC mode: HKDF-SHA256 (RFC 5869) of the raw key,
    empty salt (= HashLen zero bytes), info "keymesh/v3/<alg>/enc" and "keymesh/v3/<alg>/mac"."""

    def derive(part: str) -> bytes:
        info = f"keymesh/v3/{spec.name}/{part}".encode("ascii")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)

    return derive("enc"), derive("mac")


def etm_tag(mac_key: bytes, associated: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    """HMAC-SHA256(mac_key, u64be(len(A)) || A || nonce || ciphertext)."""
    message = struct.pack(">Q", len(associated)) + associated + nonce + ciphertext
    return hmac.new(mac_key, message, hashlib.sha256).digest()


def _aes_ctr(key: bytes, nonce12: bytes, data: bytes) -> bytes:
    """AES-CTR whose initial counter block is the 12-byte nonce || 00000000; the library increments the
    whole 16-byte block big-endian (checked in the self-test)."""
    ctx = Cipher(algorithms.AES(key), modes.CTR(nonce12 + bytes(4))).encryptor()
    return ctx.update(data) + ctx.finalize()


def _aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    padder = PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    ctx = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return ctx.update(padded) + ctx.finalize()


def _aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    if not ciphertext or len(ciphertext) % 16:
        raise ByokError(f"CBC ciphertext is {len(ciphertext)} bytes, not a non-zero multiple of 16")
    ctx = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = ctx.update(ciphertext) + ctx.finalize()
    unpadder = PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ByokError("CBC plaintext has invalid PKCS#7 padding (after a valid HMAC tag!)") from None


def _check_key_and_nonce(spec: AlgorithmSpec, key: bytes, nonce: bytes) -> None:
    if len(key) != spec.key_len:
        raise ByokError(f"{spec.name} needs a {spec.key_len}-byte key, got {len(key)} bytes")
    if len(nonce) != spec.nonce_len:
        raise ByokError(f"{spec.name} needs a {spec.nonce_len}-byte nonce, got {len(nonce)} bytes")


def seal_body(spec: AlgorithmSpec, key: bytes, nonce: bytes, associated: bytes, plaintext: bytes) -> bytes:
    """The encrypt side of every construction: the ciphertext body for associated data A. Self-test only."""
    _check_key_and_nonce(spec, key, nonce)
    if spec.mode == "ccm" and len(plaintext) > CCM_MAX_PLAINTEXT:
        raise ByokError(f"{spec.name} seals at most {CCM_MAX_PLAINTEXT} bytes")
    if not spec.encrypt_then_mac:
        return _aead_for(spec, key).encrypt(nonce, plaintext, associated)
    enc_key, mac_key = etm_keys(spec, key)
    if spec.mode == "cbc-hmac":
        ciphertext = _aes_cbc_encrypt(enc_key, nonce, plaintext)
    else:
        ciphertext = _aes_ctr(enc_key, nonce, plaintext)
    return ciphertext + etm_tag(mac_key, associated, nonce, ciphertext)


def open_body(spec: AlgorithmSpec, key: bytes, nonce: bytes, associated: bytes, body: bytes) -> bytes:
    """Authenticates and decrypts a ciphertext body under associated data A; any failure is a ByokError."""
    _check_key_and_nonce(spec, key, nonce)
    if len(body) < spec.tag_len:
        raise ByokError(f"body ({len(body)} bytes) is shorter than a {spec.name} tag ({spec.tag_len} bytes)")
    if not spec.encrypt_then_mac:
        try:
            # The library takes ciphertext || tag, exactly keymesh's body layout.
            return _aead_for(spec, key).decrypt(nonce, body, associated)
        except InvalidTag:
            raise ByokError(
                f"{spec.name} authentication failed (wrong AAD/encryption context, or tampered ciphertext)"
            ) from None
    ciphertext, tag = body[: -spec.tag_len], body[-spec.tag_len :]
    enc_key, mac_key = etm_keys(spec, key)
    # The tag first, in constant time; nothing is decrypted unless it is valid.
    if not hmac.compare_digest(etm_tag(mac_key, associated, nonce, ciphertext), tag):
        raise ByokError(
            f"{spec.name} HMAC authentication failed (wrong AAD/encryption context, or tampered ciphertext)"
        )
    if spec.mode == "cbc-hmac":
        return _aes_cbc_decrypt(enc_key, nonce, ciphertext)
    return _aes_ctr(enc_key, nonce, ciphertext)


# --------------------------------------------------------------------------------------------------
# keymesh ciphertext format
# --------------------------------------------------------------------------------------------------

SUPPORTED_VERSION = 3
MAX_HEADER_LEN = 4096  # keymesh refuses longer headers (and zero-length ones).
GCM_TAG_LEN = 16  # the tag of every AEAD mode (GCM, ChaCha20-Poly1305, XChaCha20-Poly1305, GCM-SIV, CCM)
ETM_TAG_LEN = 32  # the HMAC-SHA256 tag of the encrypt-then-MAC modes
COMMITMENT_LABEL = b"key-commitment-v1"
COMMITMENT_LEN = 32
CCM_MAX_PLAINTEXT = 64 * 1024  # keymesh seals at most this much under CCM (used by the local seal only)


@dataclass(frozen=True)
class AlgorithmSpec:
    """One row of the format's algorithm table."""

    name: str  # header "alg"
    mode: str  # header "mode"
    key_len: int
    nonce_len: int
    tag_len: int
    encrypt_then_mac: bool  # CBC/CTR + HMAC-SHA256 (else a real AEAD taking A as its AAD)


# "alg" -> its row. "mode" must be the row's mode.
ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("AES-128-GCM", "gcm", 16, 12, GCM_TAG_LEN, False),
        AlgorithmSpec("AES-256-GCM", "gcm", 32, 12, GCM_TAG_LEN, False),
        AlgorithmSpec("ChaCha20-Poly1305", "chacha20-poly1305", 32, 12, GCM_TAG_LEN, False),
        AlgorithmSpec("XChaCha20-Poly1305", "xchacha20-poly1305", 32, 24, GCM_TAG_LEN, False),
        AlgorithmSpec("AES-256-GCM-SIV", "gcm-siv", 32, 12, GCM_TAG_LEN, False),
        AlgorithmSpec("AES-256-CBC-HMAC-SHA256", "cbc-hmac", 32, 16, ETM_TAG_LEN, True),
        AlgorithmSpec("AES-256-CTR-HMAC-SHA256", "ctr-hmac", 32, 12, ETM_TAG_LEN, True),
        AlgorithmSpec("AES-256-CCM", "ccm", 32, 12, GCM_TAG_LEN, False),
    )
}

# Every field a header may have (keymesh deserialises with deny_unknown_fields), in the order keymesh
# serialises them.
HEADER_FIELDS = ("v", "ctx", "kid", "alg", "mode", "nonce", "kc", "aad")
V3_REQUIRED = frozenset(HEADER_FIELDS)  # v3 has exactly all of them.

_KID_VERSION_RE = re.compile(r"\+?[0-9]+")  # what Rust's u32::from_str accepts (ASCII digits, optional +)


def key_commitment(key: bytes) -> bytes:
    """HMAC-SHA256(key, "key-commitment-v1")."""
    return hmac.new(key, COMMITMENT_LABEL, hashlib.sha256).digest()


def encode_binding(aad: bytes, context: dict[str, str] | None) -> bytes:
    """The caller-supplied part of the GCM associated data. Always present, even when empty (then it is
    8 + 4 zero bytes). Every piece is length-prefixed so that different (aad, context) pairs never
    encode alike. Context entries are sorted by key, as Rust's BTreeMap<String, String> iterates (byte
    order of the UTF-8 keys)."""
    out = bytearray()
    out += struct.pack(">Q", len(aad)) + aad
    items = sorted(((k.encode("utf-8"), v.encode("utf-8")) for k, v in (context or {}).items()))
    out += struct.pack(">I", len(items))
    for k, v in items:
        out += struct.pack(">Q", len(k)) + k
        out += struct.pack(">Q", len(v)) + v
    return bytes(out)


def binding_is_empty(aad: bytes, context: dict[str, str] | None) -> bool:
    """keymesh's Binding::is_empty: no AAD and no (or an empty) context."""
    return not aad and not context


@dataclass
class ParsedCiphertext:
    """A ciphertext whose header has been read; the header is only a *claim* until `open_parsed`."""

    version: int
    key_name: str  # "ctx"
    key_id: str  # from "kid"
    key_version: int  # from "kid"
    algorithm: str  # "alg"
    nonce: bytes
    commitment: bytes
    has_binding: bool  # "aad"
    prefix_and_header: bytes  # the first 2 + header_len bytes, authenticated as-is
    body: bytes  # ciphertext || tag (layout per algorithm)


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # serde refuses duplicate struct fields; Python's json would silently keep the last one.
    seen: dict[str, object] = {}
    for k, v in pairs:
        if k in seen:
            raise ByokError(f"header has duplicate field {k!r}")
        seen[k] = v
    return seen


def _reject_constant(name: str) -> object:
    raise ByokError(f"header contains non-JSON constant {name}")


def _expect_str(header: dict[str, object], field: str) -> str:
    value = header[field]
    if not isinstance(value, str):
        raise ByokError(f"header field {field!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")  # serde_json refuses lone surrogate escapes such as "\ud800".
    except UnicodeEncodeError:
        raise ByokError(f"header field {field!r} is not valid Unicode") from None
    return value


def parse_ciphertext(ciphertext: bytes) -> ParsedCiphertext:
    """Reads and strictly validates the header, mirroring keymesh's `ciphertext::parse`, but only accepting
    format version 3."""
    if len(ciphertext) < 2:
        raise ByokError("ciphertext is shorter than its 2-byte header length")
    (header_len,) = struct.unpack(">H", ciphertext[:2])
    if header_len == 0 or header_len > MAX_HEADER_LEN:
        raise ByokError(f"header length {header_len} is outside 1..={MAX_HEADER_LEN}")
    if len(ciphertext) < 2 + header_len:
        raise ByokError(f"ciphertext ({len(ciphertext)} bytes) is shorter than its header ({header_len} bytes)")
    prefix_and_header = ciphertext[: 2 + header_len]
    body = ciphertext[2 + header_len :]

    # Decode UTF-8 ourselves: json.loads on bytes would also guess UTF-16/32, serde_json does not.
    try:
        header_text = prefix_and_header[2:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ByokError(f"header is not UTF-8: {e}") from None
    try:
        header = json.loads(
            header_text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as e:
        raise ByokError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ByokError("header is not a JSON object")

    unknown = set(header) - set(HEADER_FIELDS)
    if unknown:
        raise ByokError(f"header has unknown field(s): {sorted(unknown)}")
    # serde treats an explicit null for an Option field like an absent one.
    header = {k: v for k, v in header.items() if not (v is None and k in ("mode", "kc", "aad"))}

    # Version first, so that an old or future ciphertext gets a clear message.
    if "v" not in header:
        raise ByokError("header has no 'v' (format version)")
    version = header["v"]
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= 255:
        raise ByokError(f"header field 'v' must be an integer 0..=255, got {version!r}")
    if version != SUPPORTED_VERSION:
        raise ByokError(f"unsupported ciphertext format version {version}; this script reads only v3")

    # v3 has exactly its fields: ctx, kid, alg, mode, nonce, kc, aad.
    missing = V3_REQUIRED - set(header)
    if missing:
        raise ByokError(f"v3 header is missing field(s): {sorted(missing)}")

    key_name = _expect_str(header, "ctx")
    kid = _expect_str(header, "kid")
    algorithm = _expect_str(header, "alg")
    mode = _expect_str(header, "mode")
    nonce_b64 = _expect_str(header, "nonce")
    kc_b64 = _expect_str(header, "kc")
    has_binding = header["aad"]
    if not isinstance(has_binding, bool):
        raise ByokError(f"header field 'aad' must be a boolean, got {has_binding!r}")

    spec = ALGORITHMS.get(algorithm)
    if spec is None:
        raise ByokError(f"unsupported algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)}")
    if mode != spec.mode:
        raise ByokError(f"header mode {mode!r} does not match algorithm {algorithm} (expected {spec.mode!r})")

    nonce = b64_decode_canonical(nonce_b64, "nonce")
    if len(nonce) != spec.nonce_len:
        raise ByokError(f"nonce is {len(nonce)} bytes, {algorithm} needs {spec.nonce_len}")
    commitment = b64_decode_canonical(kc_b64, "kc")

    # kid = "<key id>:v<version>", split at the *last* ":v"; key id non-empty; version a u32 > 0.
    key_id, sep, version_text = kid.rpartition(":v")
    if not sep or not key_id or not _KID_VERSION_RE.fullmatch(version_text):
        raise ByokError(f"header kid {kid!r} is not '<key id>:v<version>'")
    key_version = int(version_text)
    if not 0 < key_version <= 0xFFFF_FFFF:
        raise ByokError(f"header kid {kid!r} has a version outside 1..=2^32-1")

    return ParsedCiphertext(
        version=version,
        key_name=key_name,
        key_id=key_id,
        key_version=key_version,
        algorithm=algorithm,
        nonce=nonce,
        commitment=commitment,
        has_binding=has_binding,
        prefix_and_header=prefix_and_header,
        body=body,
    )


def open_parsed(parsed: ParsedCiphertext, key: bytes, aad: bytes, context: dict[str, str] | None) -> bytes:
    """Checks the key length and the key commitment (constant time), then authenticates and decrypts."""
    spec = ALGORITHMS[parsed.algorithm]
    if len(key) != spec.key_len:
        raise ByokError(f"{parsed.algorithm} needs a {spec.key_len}-byte key, got {len(key)} bytes")
    # Key commitment before anything else touches the key: HMAC-SHA256(key, "key-commitment-v1").
    if len(parsed.commitment) != COMMITMENT_LEN or not hmac.compare_digest(key_commitment(key), parsed.commitment):
        raise ByokError("key commitment does not match: this ciphertext was not made under this key")
    # A header that says nothing was bound must not be opened with a binding (keymesh refuses it too).
    if not parsed.has_binding and not binding_is_empty(aad, context):
        raise ByokError("header says no AAD/encryption context was bound, but one was supplied")
    associated = parsed.prefix_and_header + encode_binding(aad, context)
    return open_body(spec, key, parsed.nonce, associated, parsed.body)


def open_ciphertext(key: bytes, ciphertext: bytes, aad: bytes = b"", context: dict[str, str] | None = None) -> bytes:
    return open_parsed(parse_ciphertext(ciphertext), key, aad, context)


def seal(
    key: bytes,
    plaintext: bytes,
    *,
    key_name: str,
    key_id: str,
    key_version: int,
    algorithm: str = "AES-256-GCM",
    aad: bytes = b"",
    context: dict[str, str] | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Builds a v3 ciphertext the way keymesh's `ciphertext::seal` does. Self-test only (keymesh is the
    producer in real tests); `nonce` is fixed only to make deterministic vectors."""
    spec = ALGORITHMS.get(algorithm)
    if spec is None:
        raise ByokError(f"unknown algorithm {algorithm!r}")
    nonce = os.urandom(spec.nonce_len) if nonce is None else nonce
    _check_key_and_nonce(spec, key, nonce)
    header = {
        "v": SUPPORTED_VERSION,
        "ctx": key_name,
        "kid": f"{key_id}:v{key_version}",
        "alg": algorithm,
        "mode": spec.mode,
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "kc": base64.b64encode(key_commitment(key)).decode("ascii"),
        "aad": not binding_is_empty(aad, context),
    }
    # serde_json::to_vec: compact, fields in declaration order, non-ASCII written as raw UTF-8.
    header_json = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(header_json) > MAX_HEADER_LEN:
        raise ByokError("header too large")
    prefix_and_header = struct.pack(">H", len(header_json)) + header_json
    associated = prefix_and_header + encode_binding(aad, context)
    return prefix_and_header + seal_body(spec, key, nonce, associated, plaintext)


def parse_context_json(value: str) -> dict[str, str]:
    """--context-json: a JSON object of string keys to string values."""
    try:
        context = json.loads(value, object_pairs_hook=_reject_duplicate_keys)
    except (json.JSONDecodeError, ByokError) as e:
        raise UsageError(f"--context-json: {e}") from None
    if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
        raise UsageError("--context-json must be a JSON object of string to string")
    return context


# --------------------------------------------------------------------------------------------------
# keymesh stream format (libs/crypto/src/stream.rs)
# --------------------------------------------------------------------------------------------------

STREAM_VERSION = 1
MAX_STREAM_HEADER_LEN = 8192  # keymesh refuses longer stream headers (and zero-length ones).
MIN_SEGMENT_SIZE = 4 << 10
MAX_SEGMENT_SIZE = 2 << 20
SEGMENT_TAG_LEN = 16
STREAM_SALT_LEN = 32
STREAM_NONCE_PREFIX_LEN = 7
STREAM_KDF_LABEL = b"keymesh/stream/v1"
MAX_SEGMENTS = 1 << 32  # the segment index is a u32 in the nonce
# "alg" -> data key length (the segment AEAD is AES-GCM either way).
STREAM_ALGORITHMS: dict[str, int] = {"AES-128-GCM": 16, "AES-256-GCM": 32}
# Every field a stream header has, all required, no others (serde deny_unknown_fields), in the order keymesh
# serialises them.
STREAM_HEADER_FIELDS = ("sv", "alg", "seg", "salt", "np", "kc", "dk")


@dataclass
class StreamHeader:
    """A parsed stream header; its fields are *claims* until the segments open."""

    algorithm: str  # "alg"
    segment_size: int  # "seg": plaintext bytes per segment
    salt: bytes
    nonce_prefix: bytes  # "np"
    commitment: bytes  # "kc"
    wrapped_data_key: bytes  # "dk": a keymesh v3 ciphertext of the data key
    prefix_and_header: bytes  # the first 2 + header_len bytes, hashed into the stream key as-is


def _expect_uint(header: dict[str, object], field: str, limit: int) -> int:
    """A JSON integer 0..=limit, as serde reads a u8/u32 (no floats such as 1.0, no booleans)."""
    value = header[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ByokError(f"stream header field {field!r} must be an integer 0..={limit}, got {value!r}")
    return value


def parse_stream_header(prefix_and_header: bytes) -> StreamHeader:
    """Strictly validates a stream header (the 2-byte length prefix and exactly that many JSON bytes),
    mirroring keymesh's `stream::parse_header`."""
    if len(prefix_and_header) < 2:
        raise ByokError("stream is shorter than its 2-byte header length")
    (header_len,) = struct.unpack(">H", prefix_and_header[:2])
    if header_len == 0 or header_len > MAX_STREAM_HEADER_LEN:
        raise ByokError(f"stream header length {header_len} is outside 1..={MAX_STREAM_HEADER_LEN}")
    if len(prefix_and_header) != 2 + header_len:
        raise ByokError(f"stream ends inside its header ({len(prefix_and_header) - 2} of {header_len} bytes)")
    try:
        header_text = prefix_and_header[2:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ByokError(f"stream header is not UTF-8: {e}") from None
    try:
        header = json.loads(header_text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ByokError(f"stream header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ByokError("stream header is not a JSON object")
    unknown = set(header) - set(STREAM_HEADER_FIELDS)
    if unknown:
        raise ByokError(f"stream header has unknown field(s): {sorted(unknown)}")
    missing = set(STREAM_HEADER_FIELDS) - set(header)
    if missing:
        raise ByokError(f"stream header is missing field(s): {sorted(missing)}")

    version = _expect_uint(header, "sv", 0xFF)
    if version != STREAM_VERSION:
        raise ByokError(f"unsupported stream format version {version}; this script reads only sv {STREAM_VERSION}")
    algorithm = _expect_str(header, "alg")
    if algorithm not in STREAM_ALGORITHMS:
        raise ByokError(f"unsupported stream algorithm {algorithm!r}; expected one of {sorted(STREAM_ALGORITHMS)}")
    segment_size = _expect_uint(header, "seg", 0xFFFF_FFFF)
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ByokError(f"stream segment size {segment_size} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}")

    def field_bytes(field: str, length: int | None) -> bytes:
        data = b64_decode_canonical(_expect_str(header, field), field)
        if length is not None and len(data) != length:
            raise ByokError(f"stream header field {field!r} is {len(data)} bytes, not {length}")
        if length is None and not data:
            raise ByokError(f"stream header field {field!r} is empty")
        return data

    return StreamHeader(
        algorithm=algorithm,
        segment_size=segment_size,
        salt=field_bytes("salt", STREAM_SALT_LEN),
        nonce_prefix=field_bytes("np", STREAM_NONCE_PREFIX_LEN),
        commitment=field_bytes("kc", COMMITMENT_LEN),
        wrapped_data_key=field_bytes("dk", None),
        prefix_and_header=prefix_and_header,
    )


def _read_full(reader, n: int) -> bytes:
    """Up to `n` bytes, fewer only at end of input (loops over short reads)."""
    parts, got = [], 0
    while got < n:
        part = reader.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_stream_header(reader) -> StreamHeader:
    """Reads exactly the header (length prefix and JSON) from the front of `reader` and parses it."""
    prefix = _read_full(reader, 2)
    if len(prefix) < 2:
        raise ByokError("stream is shorter than its 2-byte header length")
    (header_len,) = struct.unpack(">H", prefix)
    if header_len == 0 or header_len > MAX_STREAM_HEADER_LEN:  # checked before reading that much
        raise ByokError(f"stream header length {header_len} is outside 1..={MAX_STREAM_HEADER_LEN}")
    return parse_stream_header(prefix + _read_full(reader, header_len))


def stream_key(header: StreamHeader, data_key: bytes, aad: bytes, context: dict[str, str] | None) -> bytes:
    """Checks the data key's length and commitment (constant time), then derives the stream key:
    HKDF-SHA256(ikm = data key, salt = "salt", info = "keymesh/stream/v1" || SHA-256(length prefix ||
    header JSON || binding)), as long as the data key."""
    key_len = STREAM_ALGORITHMS[header.algorithm]
    if len(data_key) != key_len:
        raise ByokError(f"{header.algorithm} stream needs a {key_len}-byte data key, got {len(data_key)} bytes")
    if not hmac.compare_digest(key_commitment(data_key), header.commitment):
        raise ByokError("key commitment does not match: this stream was not made under this data key")
    transcript = header.prefix_and_header + encode_binding(aad, context)
    info = STREAM_KDF_LABEL + hashlib.sha256(transcript).digest()
    return HKDF(algorithm=hashes.SHA256(), length=key_len, salt=header.salt, info=info).derive(data_key)


def open_stream(
    data_key: bytes, reader, writer, aad: bytes = b"", context: dict[str, str] | None = None
) -> tuple[str, int]:
    """Decrypts a whole stream from `reader` (a binary file object) segment by segment, writing each
    segment's plaintext to `writer` once its tag verifies; holds at most two sealed segments. Returns the
    hex SHA-256 and the length of the plaintext. Any failure is a ByokError, and then what was written must
    be discarded: the stream is whole only if this returns."""
    header = read_stream_header(reader)
    key = stream_key(header, data_key, aad, context)
    aead = AESGCM(key)
    sealed_len = header.segment_size + SEGMENT_TAG_LEN
    digest, total = hashlib.sha256(), 0
    index = 0
    current = _read_full(reader, sealed_len)
    while True:
        # A full-length segment is the last one only if nothing follows it; a shorter one must be last.
        following = _read_full(reader, sealed_len) if len(current) == sealed_len else b""
        final = not following
        if index >= MAX_SEGMENTS:
            raise ByokError("stream has more than 2^32 segments")
        if len(current) < SEGMENT_TAG_LEN:
            raise ByokError(
                f"segment {index} is {len(current)} bytes, shorter than its {SEGMENT_TAG_LEN}-byte tag "
                "(truncated stream)"
            )
        nonce = header.nonce_prefix + struct.pack(">I", index) + (b"\x01" if final else b"\x00")
        try:
            plaintext = aead.decrypt(nonce, current, None)
        except InvalidTag:
            raise ByokError(
                f"segment {index}{' (final)' if final else ''} failed authentication (wrong data key, AAD or "
                "encryption context; or a tampered, truncated, reordered or extended stream)"
            ) from None
        writer.write(plaintext)
        digest.update(plaintext)
        total += len(plaintext)
        if final:
            return digest.hexdigest(), total
        current, index = following, index + 1


def open_stream_file(
    data_key: bytes, stream_path: str, out_path: str, aad: bytes = b"", context: dict[str, str] | None = None
) -> tuple[str, int]:
    """`open_stream` from a file to a file. The output file is created (or truncated) first; on any failure
    it is deleted, so it exists afterwards only if the whole stream verified."""
    try:
        if os.path.exists(out_path) and os.path.samefile(stream_path, out_path):
            raise UsageError("--out-file must not be the --stream-file")
    except OSError:
        pass
    try:
        writer = open(out_path, "wb")
    except OSError as e:
        raise ByokError(f"cannot create output file {out_path!r}: {e}") from None
    try:
        with writer:
            try:
                reader = open(stream_path, "rb")
            except OSError as e:
                raise ByokError(f"cannot read stream file {stream_path!r}: {e}") from None
            with reader:
                result = open_stream(data_key, reader, writer, aad, context)
    except BaseException:
        try:
            os.unlink(out_path)
        except OSError:
            pass
        raise
    return result


def stream_file_header(stream_path: str) -> StreamHeader:
    try:
        with open(stream_path, "rb") as reader:
            return read_stream_header(reader)
    except OSError as e:
        raise ByokError(f"cannot read stream file {stream_path!r}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------------------


def _expect_failure(what: str, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except (ByokError, InvalidUnwrap, InvalidTag, ValueError):
        return
    raise AssertionError(f"expected failure: {what}")


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def selftest() -> None:
    h = bytes.fromhex

    # --- Primitive vectors shared with keymesh's own unit tests --------------------------------------
    # commitment.rs: commit(32 zero bytes).
    _check(
        key_commitment(bytes(32)).hex() == "4bd4d0ce4e09f6e03ecf46b5a328f2773c5ec8b4b042d6fe1b36417b57c000a2",
        "key commitment vector (commitment.rs)",
    )
    # aead.rs: McGrew & Viega GCM test case 16 (ciphertext || tag).
    gcm = AESGCM(h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")).encrypt(
        h("cafebabefacedbaddecaf888"),
        h(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
            "49a6b525b16aedf5aa0de657ba637b39"
        ),
        h("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
    )
    _check(
        gcm.hex()
        == "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838"
        "c5f61e6393ba7a0abcc9f66276fc6ece0f4e1768cddf8853bb2d551b",
        "GCM test case 16 (aead.rs)",
    )
    # RFC 5649 section 6 vectors: the library's KWP really is RFC 5649.
    kek = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
    _check(
        aes_key_wrap_with_padding(kek, h("c37b7e6492584340bed12207808941155068f738")).hex()
        == "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
        "RFC 5649 vector 1",
    )
    _check(
        aes_key_wrap_with_padding(kek, h("466f7250617369")).hex() == "afbeb0f07dfbf5419200f2ccb50bb24f",
        "RFC 5649 vector 2",
    )

    # --- Published vectors for the primitives under the other modes ---------------------------------
    # draft-irtf-cfrg-xchacha-03 section 2.2.1: HChaCha20.
    _check(
        hchacha20(bytes(range(32)), h("000000090000004a0000000031415927")).hex()
        == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc",
        "HChaCha20 vector (draft-irtf-cfrg-xchacha 2.2.1)",
    )
    # The pure-Python ChaCha20 rounds, with the input state added back, are the library's ChaCha20 block
    # function (state words 12..15 = 32-bit little-endian block counter || 96-bit nonce).
    for _ in range(4):
        chacha_key, counter_and_nonce = os.urandom(32), os.urandom(16)
        state = _chacha20_state(chacha_key, counter_and_nonce)
        block = struct.pack("<16I", *((a + b) & _MASK32 for a, b in zip(_chacha20_rounds(state), state)))
        library = Cipher(algorithms.ChaCha20(chacha_key, counter_and_nonce), mode=None).encryptor().update(bytes(64))
        _check(block == library, "pure-Python ChaCha20 rounds agree with the library's ChaCha20")
    sunscreen = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it."
    )
    key_80 = bytes(range(0x80, 0xA0))
    aad_50 = h("50515253c0c1c2c3c4c5c6c7")
    # The published AEAD vectors go through this script's own dispatch (seal_body / open_body), so that each
    # "alg" is pinned to the right construction, not just the library to the RFCs.

    def body_vector(alg: str, key: bytes, nonce: bytes, associated: bytes, plaintext: bytes, expected: str) -> None:
        spec = ALGORITHMS[alg]
        _check(seal_body(spec, key, nonce, associated, plaintext).hex() == expected, f"{alg} vector")
        _check(open_body(spec, key, nonce, associated, h(expected)) == plaintext, f"{alg} vector opens")
        _expect_failure(f"{alg} vector, other A", open_body, spec, key, nonce, associated + b"\x00", h(expected))

    # McGrew & Viega GCM test case 16 again, through the dispatch.
    body_vector(
        "AES-256-GCM",
        h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"),
        h("cafebabefacedbaddecaf888"),
        h("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
        h(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
            "49a6b525b16aedf5aa0de657ba637b39"
        ),
        gcm.hex(),
    )
    # RFC 8439 section 2.8.2: ChaCha20-Poly1305.
    body_vector(
        "ChaCha20-Poly1305",
        key_80,
        h("070000004041424344454647"),
        aad_50,
        sunscreen,
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
        "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116" + "1ae10b594f09e26a7e902ecbd0600691",
    )
    # draft-irtf-cfrg-xchacha-03 section A.3.1: XChaCha20-Poly1305, both directions.
    xchacha_nonce = h("404142434445464748494a4b4c4d4e4f5051525354555657")
    xchacha_expected = h(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39"
        "ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e" + "c0875924c1c7987947deafd8780acf49"
    )
    xchacha = XChaCha20Poly1305(key_80)
    _check(
        xchacha.encrypt(xchacha_nonce, sunscreen, aad_50) == xchacha_expected,
        "XChaCha20-Poly1305 vector (draft-irtf-cfrg-xchacha A.3.1)",
    )
    _check(xchacha.decrypt(xchacha_nonce, xchacha_expected, aad_50) == sunscreen, "XChaCha20-Poly1305 vector opens")
    _expect_failure("XChaCha20-Poly1305 vector, other AAD", xchacha.decrypt, xchacha_nonce, xchacha_expected, b"")
    body_vector("XChaCha20-Poly1305", key_80, xchacha_nonce, aad_50, sunscreen, xchacha_expected.hex())
    # RFC 8452 appendix C.2: AEAD_AES_256_GCM_SIV (first two vectors).
    siv_key, siv_nonce = h("01" + "00" * 31), h("03" + "00" * 11)
    body_vector("AES-256-GCM-SIV", siv_key, siv_nonce, b"", b"", "07f5f4169bbf55a8400cd47ea6fd400f")
    body_vector(
        "AES-256-GCM-SIV", siv_key, siv_nonce, b"", h("0100000000000000"), "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28"
    )
    # RFC 5869 test cases 1 (the one primitives.rs uses) and 3 (empty salt and info): HKDF-SHA256.
    _check(
        HKDF(hashes.SHA256(), 42, h("000102030405060708090a0b0c"), h("f0f1f2f3f4f5f6f7f8f9"))
        .derive(bytes([11]) * 22)
        .hex()
        == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        "HKDF-SHA256 RFC 5869 case 1 (primitives.rs)",
    )
    _check(
        HKDF(hashes.SHA256(), 42, None, b"").derive(bytes([11]) * 22).hex()
        == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        "HKDF-SHA256 RFC 5869 case 3 (empty salt)",
    )
    # The encrypt-then-MAC key split, recomputed from RFC 5869's two steps with the standard library
    # (salt = HashLen zero bytes; one expand block, T(1) = HMAC(PRK, info || 0x01)).
    etm_ikm = os.urandom(32)
    for name in ("AES-256-CBC-HMAC-SHA256", "AES-256-CTR-HMAC-SHA256"):
        prk = hmac.new(bytes(32), etm_ikm, hashlib.sha256).digest()
        expected_keys = tuple(
            hmac.new(prk, f"keymesh/v3/{name}/{part}".encode() + b"\x01", hashlib.sha256).digest()
            for part in ("enc", "mac")
        )
        _check(etm_keys(ALGORITHMS[name], etm_ikm) == expected_keys, f"{name} HKDF key split")
        _check(expected_keys[0] != expected_keys[1], f"{name}: encryption and MAC keys differ")
    _check(
        etm_keys(ALGORITHMS["AES-256-CBC-HMAC-SHA256"], etm_ikm)[0]
        != etm_keys(ALGORITHMS["AES-256-CTR-HMAC-SHA256"], etm_ikm)[0],
        "CBC and CTR derive different keys (the alg is in the HKDF info)",
    )
    # AES-CTR counter layout: keystream block i is AES(nonce || u32be(i)).
    ctr_key, ctr_nonce = os.urandom(32), os.urandom(12)
    ecb = Cipher(algorithms.AES(ctr_key), modes.ECB()).encryptor()
    keystream = ecb.update(b"".join(ctr_nonce + struct.pack(">I", i) for i in range(3))) + ecb.finalize()
    _check(_aes_ctr(ctr_key, ctr_nonce, bytes(48)) == keystream, "CTR counter block = nonce || 32-bit counter")
    # The library's CTR increments the whole 16-byte block big-endian (carry out of the low 32 bits).
    ctr = Cipher(algorithms.AES(ctr_key), modes.CTR(bytes(11) + b"\x00" + b"\xff" * 4)).encryptor()
    ecb = Cipher(algorithms.AES(ctr_key), modes.ECB()).encryptor()
    _check(
        ctr.update(bytes(32)) == ecb.update(bytes(11) + b"\x00" + b"\xff" * 4 + bytes(11) + b"\x01" + bytes(4)),
        "CTR increments the whole block",
    )

    # --- (a) both wrap schemes round-trip against a fresh RSA-3072 key -------------------------------
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Go through the same PEM loading path the CLI uses.
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as f:
        f.write(public_pem)
        pem_path = f.name
    try:
        public_key = load_rsa_public_key(pem_path)
    finally:
        os.unlink(pem_path)
    k = modulus_len(public_key)
    _check(k == 384, "RSA-3072 modulus is 384 bytes")
    for material in (os.urandom(16), os.urandom(32), os.urandom(20), os.urandom(1)):
        for algorithm in WRAP_ALGORITHMS:
            wrapped = wrap(public_key, algorithm, material)
            if algorithm == "rsa-oaep-sha256":
                _check(len(wrapped) == k, "OAEP output is modulus-long")
            else:
                # RSA part + KWP part (8-byte integrity block + material padded to a multiple of 8).
                _check(len(wrapped) == k + 8 + -(-len(material) // 8) * 8, "RSA+KWP output length")
            _check(unwrap(private_key, algorithm, wrapped) == material, f"{algorithm} round trip")
            # Randomised: wrapping twice never gives the same bytes.
            _check(wrap(public_key, algorithm, material) != wrapped, f"{algorithm} is randomised")
    # Each scheme's output is refused by the other scheme's unwrap; tampering is caught.
    material = os.urandom(32)
    direct = wrap(public_key, "rsa-oaep-sha256", material)
    two_step = wrap(public_key, "rsa-aes-key-wrap-sha256", material)
    _expect_failure("OAEP unwrap of RSA+KWP", unwrap, private_key, "rsa-oaep-sha256", two_step)
    _expect_failure("RSA+KWP unwrap of OAEP", unwrap, private_key, "rsa-aes-key-wrap-sha256", direct)
    _expect_failure(
        "tampered KWP part", unwrap, private_key, "rsa-aes-key-wrap-sha256", two_step[:-1] + bytes([two_step[-1] ^ 1])
    )
    _expect_failure("oversized OAEP material", wrap, public_key, "rsa-oaep-sha256", bytes(k - 65))

    # --- (b) v3 ciphertexts built here open with the `open` logic -----------------------------------
    key256 = bytes(range(32))  # the key ciphertext.rs's tests use
    ct = seal(key256, b"attack at dawn", key_name="user-pii", key_id="k_0123", key_version=2, aad=b"order-17")
    parsed = parse_ciphertext(ct)
    _check(
        (parsed.version, parsed.key_name, parsed.key_id, parsed.key_version, parsed.algorithm, parsed.has_binding)
        == (3, "user-pii", "k_0123", 2, "AES-256-GCM", True),
        "parsed header fields",
    )
    _check(open_ciphertext(key256, ct, b"order-17") == b"attack at dawn", "open with AAD")
    _expect_failure("missing AAD", open_ciphertext, key256, ct)
    _expect_failure("wrong AAD", open_ciphertext, key256, ct, b"order-18")
    _expect_failure("wrong key (commitment)", open_ciphertext, bytes([7]) * 32, ct, b"order-17")

    # Encryption context: bound, order-independent, not interchangeable with AAD.
    context = {"tenant": "acme", "purpose": "billing"}
    ct = seal(key256, b"ctx data", key_name="user-pii", key_id="k_0123", key_version=2, context=context)
    _check(
        open_ciphertext(key256, ct, context={"purpose": "billing", "tenant": "acme"}) == b"ctx data",
        "open with context (any order)",
    )
    _expect_failure("other context", open_ciphertext, key256, ct, context={**context, "purpose": "marketing"})
    _expect_failure("context as AAD", open_ciphertext, key256, ct, b"tenantacme")

    # No binding: aad=false; empty context counts as no binding; a binding is then refused.
    ct = seal(key256, b"", key_name="user-pii", key_id="k_0123", key_version=2, context={})
    _check(parse_ciphertext(ct).has_binding is False, "empty binding -> aad:false")
    _check(open_ciphertext(key256, ct, context={}) == b"", "empty plaintext, empty context")
    _expect_failure("binding on aad:false", open_ciphertext, key256, ct, b"x")

    # AES-128-GCM, and the key length must match the algorithm.
    key128 = os.urandom(16)
    ct = seal(key128, b"short key", key_name="n", key_id="k_1", key_version=7, algorithm="AES-128-GCM")
    _check(open_ciphertext(key128, ct) == b"short key", "AES-128-GCM round trip")
    _expect_failure("AES-256 key on AES-128 ciphertext", open_ciphertext, key256, ct)

    # Every flipped bit anywhere fails (as keymesh's every_flipped_byte_fails_opaquely).
    ct = seal(key256, b"attack at dawn", key_name="user-pii", key_id="k_0123", key_version=2)
    for i in range(len(ct)):
        for bit in (0x01, 0x80):
            bad = bytearray(ct)
            bad[i] ^= bit
            _expect_failure(f"byte {i} bit {bit:#x}", open_ciphertext, key256, bytes(bad))

    # Malformed headers (the list from ciphertext.rs's malformed_headers_are_refused, plus v1/v2, which
    # keymesh still reads but this script deliberately does not, and a few parser corner cases).
    for header in (
        '{"v":4,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}',
        '{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","aad":false}',
        '{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false,"x":1}',
        '{"v":3,"ctx":"a","kid":"k:v1","alg":"DES","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}',
        '{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"!!","kc":"","aad":false}',
        '{"v":3,"ctx":"a","kid":"nokid","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}',
        "not json",
        '{"v":1,"ctx":"legacy","kid":"k_9:v1","alg":"AES-256-GCM","nonce":"CQkJCQkJCQkJCQkJ"}',
        '{"v":2,"ctx":"legacy","kid":"k_9:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"CQkJCQkJCQkJCQkJ"}',
        '{"v":3,"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}',
        '{"v":3.0,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}',
        '{"v":3,"ctx":"a","kid":"k:v0","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}',
        '{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"cbc","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}',
        '{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAA=","kc":"","aad":false}',
        '[3]',
    ):
        raw = header.encode()
        _expect_failure(f"malformed header {header}", parse_ciphertext, struct.pack(">H", len(raw)) + raw + bytes(32))
    # base64 as Rust's STANDARD engine: padding required, no whitespace, no non-zero trailing bits.
    _check(b64_decode_canonical("AAECAwQFBgcICQoL", "nonce") == bytes(range(12)), "canonical base64")
    for bad_b64 in ("AB==", "AA", "AAAA AAAA", "AAEC-_==", "AA==\n"):
        _expect_failure(f"base64 {bad_b64!r}", b64_decode_canonical, bad_b64, "x")
    _expect_failure("empty ciphertext", parse_ciphertext, b"")
    _expect_failure("oversized header length", parse_ciphertext, b"\xff\xff{")
    _expect_failure("zero header length", parse_ciphertext, b"\x00\x00" + bytes(32))

    # --- (c) every algorithm: round trips through the local seal, tampering, wrong A, header checks -----
    def with_header(ct: bytes, **changes: object) -> bytes:
        """The ciphertext with header fields changed, re-serialised the way keymesh writes headers."""
        (header_len,) = struct.unpack(">H", ct[:2])
        header = json.loads(ct[2 : 2 + header_len])
        header.update(changes)
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return struct.pack(">H", len(raw)) + raw + ct[2 + header_len :]

    bind_aad, bind_context = b"order-17", {"tenant": "acme"}
    keys = {spec.name: os.urandom(spec.key_len) for spec in ALGORITHMS.values()}
    for spec in ALGORITHMS.values():
        key = keys[spec.name]
        other_len_key = os.urandom(32 if spec.key_len == 16 else 16)
        for length in (0, 1, 15, 16, 17, 100):
            plaintext = os.urandom(length)
            ct = seal(key, plaintext, key_name="n", key_id="k_1", key_version=3, algorithm=spec.name,
                      aad=bind_aad, context=bind_context)
            parsed = parse_ciphertext(ct)
            _check(
                (parsed.algorithm, len(parsed.nonce), parsed.has_binding) == (spec.name, spec.nonce_len, True),
                f"{spec.name}: header",
            )
            _check(json.loads(parsed.prefix_and_header[2:])["mode"] == spec.mode, f"{spec.name}: header mode")
            if spec.mode == "cbc-hmac":
                body_len = (length // 16 + 1) * 16 + ETM_TAG_LEN  # PKCS#7 always adds 1..=16 bytes
            else:
                body_len = length + spec.tag_len
            _check(len(parsed.body) == body_len, f"{spec.name}: body length for {length} bytes")
            _check(with_header(ct) == ct, f"{spec.name}: header re-serialises byte for byte")
            _check(
                open_ciphertext(key, ct, bind_aad, bind_context) == plaintext, f"{spec.name} round trip, {length} bytes"
            )
            # Wrong A (through the caller's binding).
            _expect_failure(f"{spec.name}: other AAD", open_ciphertext, key, ct, b"order-18", bind_context)
            _expect_failure(f"{spec.name}: other context", open_ciphertext, key, ct, bind_aad, {"tenant": "acm"})
            _expect_failure(f"{spec.name}: no binding", open_ciphertext, key, ct)
            _expect_failure(f"{spec.name}: AAD only", open_ciphertext, key, ct, bind_aad)
            # Wrong key length for the algorithm; wrong key of the right length (commitment).
            _expect_failure(
                f"{spec.name}: wrong key length", open_ciphertext, other_len_key, ct, bind_aad, bind_context
            )
            _expect_failure(
                f"{spec.name}: wrong key", open_ciphertext, os.urandom(spec.key_len), ct, bind_aad, bind_context
            )
        # No binding at all also round-trips (A then ends in 8 + 4 zero bytes).
        ct = seal(key, b"unbound", key_name="n", key_id="k_1", key_version=3, algorithm=spec.name)
        _check(open_ciphertext(key, ct) == b"unbound", f"{spec.name}: unbound round trip")

        # A one-bit flip anywhere in the ciphertext (header or body) fails.
        ct = seal(key, os.urandom(33), key_name="n", key_id="k_1", key_version=3, algorithm=spec.name,
                  aad=bind_aad)
        for i in range(len(ct)):
            for bit in (0x01, 0x80):
                bad = bytearray(ct)
                bad[i] ^= bit
                _expect_failure(f"{spec.name}: byte {i} bit {bit:#x}", open_ciphertext, key, bytes(bad), bind_aad)

        # The construction on its own: every single-bit flip in the body, and any change to A, fails.
        nonce = os.urandom(spec.nonce_len)
        associated = os.urandom(40)
        plaintext = os.urandom(33)
        body = seal_body(spec, key, nonce, associated, plaintext)
        _check(open_body(spec, key, nonce, associated, body) == plaintext, f"{spec.name}: body round trip")
        for i in range(len(body)):
            for bit in range(8):
                bad = bytearray(body)
                bad[i] ^= 1 << bit
                _expect_failure(
                    f"{spec.name}: body byte {i} bit {bit}", open_body, spec, key, nonce, associated, bytes(bad)
                )
        for bad_associated in (
            associated[:-1] + bytes([associated[-1] ^ 1]),
            bytes([associated[0] ^ 0x80]) + associated[1:],
            associated[:-1],
            associated + b"\x00",
            b"",
        ):
            _expect_failure(f"{spec.name}: wrong A", open_body, spec, key, nonce, bad_associated, body)
        _expect_failure(f"{spec.name}: other nonce", open_body, spec, key, os.urandom(spec.nonce_len), associated, body)
        _expect_failure(f"{spec.name}: short nonce", open_body, spec, key, nonce[:-1], associated, body)
        _expect_failure(f"{spec.name}: long nonce", open_body, spec, key, nonce + b"\x00", associated, body)
        _expect_failure(f"{spec.name}: truncated body", open_body, spec, key, nonce, associated, body[:-1])
        _expect_failure(
            f"{spec.name}: body shorter than a tag", open_body, spec, key, nonce, associated, body[: spec.tag_len - 1]
        )
        _expect_failure(f"{spec.name}: empty body", open_body, spec, key, nonce, associated, b"")
        _expect_failure(
            f"{spec.name}: wrong key length (body)", open_body, spec, other_len_key, nonce, associated, body
        )

        # Header: "mode" must be this alg's mode; the nonce must have this alg's length.
        ct = seal(key, b"header checks", key_name="n", key_id="k_1", key_version=3, algorithm=spec.name)
        for other_mode in sorted({other.mode for other in ALGORITHMS.values()} - {spec.mode}):
            _expect_failure(f"{spec.name} with mode {other_mode}", parse_ciphertext, with_header(ct, mode=other_mode))
        for nonce_len in sorted({other.nonce_len for other in ALGORITHMS.values()} - {spec.nonce_len}):
            bad = with_header(ct, nonce=base64.b64encode(os.urandom(nonce_len)).decode("ascii"))
            _expect_failure(f"{spec.name} with a {nonce_len}-byte nonce", parse_ciphertext, bad)
        # Relabelled as another algorithm of the same key and nonce length (consistent alg and mode): the
        # header is part of A, and the constructions differ, so it never opens.
        for other in ALGORITHMS.values():
            if other is not spec and (other.key_len, other.nonce_len) == (spec.key_len, spec.nonce_len):
                relabelled = with_header(ct, alg=other.name, mode=other.mode)
                _check(parse_ciphertext(relabelled).algorithm == other.name, "relabelled header parses")
                _expect_failure(f"{spec.name} relabelled {other.name}", open_ciphertext, key, relabelled)

    # No two algorithms with the same key and nonce lengths compute the same body (each "alg" really selects
    # its own construction; CCM, which has no published vector here, included).
    shared_key, shared_plaintext, shared_associated = os.urandom(32), os.urandom(40), os.urandom(20)
    for nonce_len in {spec.nonce_len for spec in ALGORITHMS.values()}:
        shared_nonce = os.urandom(nonce_len)
        bodies = {
            spec.name: seal_body(spec, shared_key, shared_nonce, shared_associated, shared_plaintext)
            for spec in ALGORITHMS.values()
            if (spec.key_len, spec.nonce_len) == (32, nonce_len)
        }
        _check(len(set(bodies.values())) == len(bodies), f"distinct constructions for {sorted(bodies)}")
        # ...and so do the ciphertext parts, not just the tags.
        ciphertexts = {name: body[: len(shared_plaintext)] for name, body in bodies.items()}
        _check(len(set(ciphertexts.values())) == len(ciphertexts), f"distinct ciphertexts for {sorted(bodies)}")

    # Encrypt-then-MAC: the tag is checked before any decryption. A CBC body with a *valid* tag over a
    # ciphertext with bad padding fails on the padding; with one tag bit flipped it fails on the tag instead.
    cbc = ALGORITHMS["AES-256-CBC-HMAC-SHA256"]
    key, iv, associated = keys[cbc.name], os.urandom(16), os.urandom(20)
    enc_key, mac_key = etm_keys(cbc, key)
    raw_cbc = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    unpadded = raw_cbc.update(bytes(16)) + raw_cbc.finalize()  # last byte 0x00: never valid PKCS#7
    good_tag = etm_tag(mac_key, associated, iv, unpadded)
    for tag, expected in ((good_tag, "padding"), (good_tag[:-1] + bytes([good_tag[-1] ^ 1]), "HMAC")):
        try:
            open_body(cbc, key, iv, associated, unpadded + tag)
        except ByokError as e:
            _check(expected in str(e), f"CBC-HMAC fails on the {expected} first: {e}")
        else:
            raise AssertionError("CBC-HMAC opened a badly padded body")
    # The tag is HMAC-SHA256(mac_key, u64be(len(A)) || A || nonce || ciphertext), recomputed by hand.
    ctr_spec = ALGORITHMS["AES-256-CTR-HMAC-SHA256"]
    key, nonce, associated = keys[ctr_spec.name], os.urandom(12), os.urandom(20)
    body = seal_body(ctr_spec, key, nonce, associated, b"counter mode")
    enc_key, mac_key = etm_keys(ctr_spec, key)
    by_hand = hmac.new(mac_key, len(associated).to_bytes(8, "big") + associated + nonce + body[:-32], "sha256")
    _check(body[-32:] == by_hand.digest(), "CTR-HMAC tag layout")
    _check(body[:-32] == _aes_ctr(enc_key, nonce, b"counter mode"), "CTR-HMAC ciphertext is plain AES-CTR")
    # CCM's tag is 16 bytes: a CCM library object with an 8-byte tag does not open keymesh's CCM body.
    ccm = ALGORITHMS["AES-256-CCM"]
    key, nonce, associated = keys[ccm.name], os.urandom(12), os.urandom(20)
    body = seal_body(ccm, key, nonce, associated, b"ccm")
    _check(AESCCM(key, tag_length=16).decrypt(nonce, body, associated) == b"ccm", "CCM, 16-byte tag")
    _expect_failure("CCM with an 8-byte tag", lambda: AESCCM(key, tag_length=8).decrypt(nonce, body, associated))
    _expect_failure("CCM over 64 KiB", seal_body, ccm, key, nonce, b"", bytes(CCM_MAX_PLAINTEXT + 1))

    # --- Pinned vector (generated by this script with a fixed nonce; NOT produced by keymesh) ---------
    # ciphertext.rs has no fixed test vector, so this only guards this script against regressions; the
    # same hex can be pasted into a Rust unit test to pin the Rust side to the same bytes.
    pinned = seal(
        key256,
        b"attack at dawn",
        key_name="user-pii",
        key_id="k_0123",
        key_version=2,
        aad=b"order-17",
        context={"tenant": "acme"},
        nonce=bytes(range(12)),
    )
    _check(pinned.hex() == PINNED_VECTOR_HEX, "pinned v3 vector")
    _check(open_ciphertext(key256, pinned, b"order-17", {"tenant": "acme"}) == b"attack at dawn", "open pinned")

    _selftest_stream()


# key = 00 01 .. 1f, nonce = 00 01 .. 0b, plaintext "attack at dawn", aad "order-17", context {"tenant":"acme"},
# key name "user-pii", kid "k_0123:v2", AES-256-GCM.
PINNED_VECTOR_HEX = (
    "00a57b2276223a332c22637478223a22757365722d706969222c226b6964223a226b5f303132333a7632222c22616c67"
    "223a224145532d3235362d47434d222c226d6f6465223a2267636d222c226e6f6e6365223a2241414543417751464267"
    "634943516f4c222c226b63223a2235752f70753133427576506f502b517256316f3962467678766f4e6f314f7135396e"
    "4c71774a6f6e5859553d222c22616164223a747275657d2676a27aa68ee27af961f3eac687957919291f67d07e1a6b8f"
    "9d35ce19fd"
)


def _selftest_stream() -> None:
    """Stream format checks: streams built by an encoder written here from the format description (it derives
    the stream key with RFC 5869 spelled out in HMAC, not the library's HKDF) must open with `open_stream`, and
    every kind of damage must fail as a whole."""
    seg = MIN_SEGMENT_SIZE
    sealed_len = seg + SEGMENT_TAG_LEN

    def seal_stream(
        data_key: bytes,
        plaintext: bytes,
        *,
        aad: bytes = b"",
        context: dict[str, str] | None = None,
        dk: bytes = b"wrapped-dk",
        segment_size: int = seg,
        salt: bytes | None = None,
        np: bytes | None = None,
        finals: list[bool] | None = None,
    ) -> bytes:
        """The stream encoder, as keymesh's StreamEncryptor; `finals` overrides each segment's final flag (to
        build streams a correct encoder never writes)."""
        salt = os.urandom(32) if salt is None else salt
        np = os.urandom(7) if np is None else np
        header = {
            "sv": 1,
            "alg": {16: "AES-128-GCM", 32: "AES-256-GCM"}[len(data_key)],
            "seg": segment_size,
            "salt": base64.b64encode(salt).decode("ascii"),
            "np": base64.b64encode(np).decode("ascii"),
            "kc": base64.b64encode(hmac.new(data_key, b"key-commitment-v1", hashlib.sha256).digest()).decode("ascii"),
            "dk": base64.b64encode(dk).decode("ascii"),
        }
        raw = json.dumps(header, separators=(",", ":")).encode("ascii")
        prefix_and_header = struct.pack(">H", len(raw)) + raw
        info = b"keymesh/stream/v1" + hashlib.sha256(prefix_and_header + encode_binding(aad, context)).digest()
        # HKDF-SHA256 by hand: PRK = HMAC(salt, IKM); OKM = T(1) = HMAC(PRK, info || 0x01), cut to the key length.
        prk = hmac.new(salt, data_key, hashlib.sha256).digest()
        key = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[: len(data_key)]
        pieces = [plaintext[i : i + segment_size] for i in range(0, len(plaintext), segment_size)] or [b""]
        finals = [i == len(pieces) - 1 for i in range(len(pieces))] if finals is None else finals
        aead = AESGCM(key)
        out = bytearray(prefix_and_header)
        if len(finals) != len(pieces):
            raise AssertionError("one final flag per segment")
        for i, (piece, final) in enumerate(zip(pieces, finals)):
            out += aead.encrypt(np + struct.pack(">I", i) + bytes([final]), piece, None)
        return bytes(out)

    class Trickle:
        """A reader that hands out at most `piece` bytes per read and records the largest read asked for."""

        def __init__(self, data: bytes, piece: int) -> None:
            self._inner, self._piece, self.largest = io.BytesIO(data), piece, 0

        def read(self, n: int) -> bytes:
            self.largest = max(self.largest, n)
            return self._inner.read(min(n, self._piece))

    def opened(data_key: bytes, stream: bytes, aad: bytes = b"", context: dict[str, str] | None = None) -> bytes:
        out = io.BytesIO()
        digest, length = open_stream(data_key, io.BytesIO(stream), out, aad, context)
        plaintext = out.getvalue()
        _check((digest, length) == (hashlib.sha256(plaintext).hexdigest(), len(plaintext)), "digest and length")
        return plaintext

    def split(stream: bytes) -> tuple[bytes, list[bytes]]:
        (header_len,) = struct.unpack(">H", stream[:2])
        body = stream[2 + header_len :]
        return stream[: 2 + header_len], [body[i : i + sealed_len] for i in range(0, len(body), sealed_len)]

    data_key = bytes(range(100, 132))  # the data key stream.rs's tests use
    aad, context = b"object-7", {"bucket": "invoices", "a": "b"}

    # Round trips at every boundary; segment count and overhead as the format says.
    for length in (0, 1, seg - 1, seg, seg + 1, 2 * seg, 3 * seg + 5):
        plaintext = os.urandom(length)
        stream = seal_stream(data_key, plaintext, aad=aad, context=context)
        header, segments = split(stream)
        expected_segments = max(1, -(-length // seg))
        _check(len(segments) == expected_segments, f"stream of {length} bytes has {expected_segments} segments")
        _check(len(stream) == len(header) + length + expected_segments * SEGMENT_TAG_LEN, f"stream length, {length}")
        _check(opened(data_key, stream, aad, context) == plaintext, f"stream round trip, {length} bytes")
        _check(opened(data_key, stream, aad, dict(reversed(context.items()))) == plaintext, "context in any order")
    # Short reads anywhere (even inside the header) change nothing, and no read asks for more than a segment.
    plaintext = os.urandom(3 * seg + 5)
    stream = seal_stream(data_key, plaintext, aad=aad)
    for piece in (1, 7, 1000, sealed_len - 1, sealed_len + 1):
        reader, out = Trickle(stream, piece), io.BytesIO()
        open_stream(data_key, reader, out, aad)
        _check(out.getvalue() == plaintext, f"stream read {piece} bytes at a time")
        _check(reader.largest <= sealed_len, "reads are bounded by a sealed segment")
    # The header parser reads exactly the header, nothing more.
    reader = io.BytesIO(stream)
    parsed = read_stream_header(reader)
    _check(reader.tell() == len(split(stream)[0]), "header read exactly")
    _check(
        (parsed.algorithm, parsed.segment_size, parsed.wrapped_data_key) == ("AES-256-GCM", seg, b"wrapped-dk"),
        "stream header fields",
    )

    # AES-128-GCM; the key length must match "alg".
    key128 = os.urandom(16)
    stream = seal_stream(key128, b"short key")
    _check(opened(key128, stream) == b"short key", "AES-128-GCM stream round trip")
    _expect_failure("32-byte key on an AES-128-GCM stream", opened, key128 + key128, stream)
    _expect_failure("16-byte key on an AES-256-GCM stream", opened, key128, seal_stream(data_key, b"x"))
    # Largest segment size.
    plaintext = os.urandom(MAX_SEGMENT_SIZE + 3)
    _check(
        opened(data_key, seal_stream(data_key, plaintext, segment_size=MAX_SEGMENT_SIZE)) == plaintext,
        "largest segment size round trip",
    )

    # Binding: an empty context is no context; any other change fails; a wrong data key fails.
    stream = seal_stream(data_key, b"unbound")
    _check(opened(data_key, stream, b"", {}) == b"unbound", "no context opens with an empty context")
    stream = seal_stream(data_key, b"empty context", context={})
    _check(opened(data_key, stream) == b"empty context", "an empty context opens with no context")
    stream = seal_stream(data_key, b"bound", aad=aad, context=context)
    for what, bad_aad, bad_context in (
        ("wrong AAD", b"object-8", context),
        ("no AAD", b"", context),
        ("no context", aad, None),
        ("other context value", aad, {**context, "bucket": "invoice"}),
        ("extra context entry", aad, {**context, "z": ""}),
        ("no binding", b"", None),
        ("AAD and context swapped", b"bucketinvoices", {"object": "7"}),
    ):
        _expect_failure(f"stream: {what}", opened, data_key, stream, bad_aad, bad_context)
    _expect_failure("stream: wrong data key (commitment)", opened, os.urandom(32), stream, aad, context)
    # The commitment is checked on its own, before any key is derived or any segment is tried.
    parsed = read_stream_header(io.BytesIO(stream))
    _check(len(stream_key(parsed, data_key, aad, context)) == 32, "stream key from the right data key")
    _expect_failure("stream key from a wrong data key", stream_key, parsed, os.urandom(32), aad, context)

    # Truncation, reordering, duplication, extension and splicing.
    plaintext = os.urandom(3 * seg + 5)
    stream = seal_stream(data_key, plaintext)
    header, s = split(stream)
    other_header, other = split(seal_stream(data_key, plaintext))  # same data key, another salt and prefix
    for what, bad in (
        ("drop the last segment", header + s[0] + s[1] + s[2]),
        ("drop a middle segment", header + s[0] + s[2] + s[3]),
        ("swap two segments", header + s[1] + s[0] + s[2] + s[3]),
        ("duplicate a segment", header + s[0] + s[0] + s[1] + s[2] + s[3]),
        ("append after the last", header + s[0] + s[1] + s[2] + s[3] + s[3]),
        ("one byte after the last", stream + b"\x00"),
        ("header only", header),
        ("cut inside the last segment", stream[:-1]),
        ("last segment shorter than a tag", stream[:-6]),
        ("cut inside the header", header[:-1]),
        ("empty", b""),
        ("a segment from another stream", header + s[0] + other[1] + s[2] + s[3]),
        ("another stream's header", other_header + b"".join(s)),
    ):
        _expect_failure(f"stream: {what}", opened, data_key, bad)
    # The final flag: a full last segment sealed as not final, or a final segment followed by more, fails.
    _expect_failure(
        "stream: last segment not sealed as final", opened, data_key,
        seal_stream(data_key, bytes(2 * seg), finals=[False, False]),
    )
    _expect_failure(
        "stream: final segment followed by more", opened, data_key,
        seal_stream(data_key, bytes(2 * seg + 1), finals=[True, False, True]),
    )
    _expect_failure(
        "stream: two final segments", opened, data_key, seal_stream(data_key, bytes(seg + 1), finals=[True, True])
    )

    # Every flipped bit fails (stream.rs's every_flipped_bit_fails, plus the top bit of every header byte).
    stream = seal_stream(data_key, os.urandom(seg + 10))
    header_len = len(split(stream)[0])
    for i in range(len(stream)):
        for bit in {1 << (i % 8), *((0x80,) if i < header_len else ())}:
            bad = bytearray(stream)
            bad[i] ^= bit
            _expect_failure(f"stream byte {i} bit {bit:#x}", opened, data_key, bytes(bad))

    # Malformed headers (stream.rs's malformed_headers_are_refused, plus parser corner cases).
    salt, np, kc = (base64.b64encode(bytes(n)).decode("ascii") for n in (32, 7, 32))

    def stream_header(json_text: str | bytes) -> bytes:
        raw = json_text.encode("utf-8") if isinstance(json_text, str) else json_text
        return struct.pack(">H", len(raw)) + raw

    def fields(**changes: str) -> str:
        values = {"sv": "1", "alg": '"AES-256-GCM"', "seg": "4096", "salt": f'"{salt}"', "np": f'"{np}"',
                  "kc": f'"{kc}"', "dk": '"AA=="'}
        values.update(changes)
        return "{" + ",".join(f'"{k}":{v}' for k, v in values.items() if v is not None) + "}"

    good = fields()
    _check(parse_stream_header(stream_header(good)).wrapped_data_key == b"\x00", "good stream header")
    _check(parse_stream_header(stream_header(fields(seg=str(MAX_SEGMENT_SIZE)))).segment_size == MAX_SEGMENT_SIZE,
           "largest segment size in a header")
    _check(parse_stream_header(stream_header(good + " " * (MAX_STREAM_HEADER_LEN - len(good)))) is not None,
           "a header of exactly the largest length")
    for bad_json in (
        fields(sv="2"),
        fields(alg='"AES-512-GCM"'),
        fields(alg='"aes-256-gcm"'),
        fields(alg='"AES-256-GCM-SIV"'),
        fields(seg="4095"),
        fields(seg=str(MAX_SEGMENT_SIZE + 1)),
        fields(salt='"AA=="'),
        fields(np=f'"{base64.b64encode(bytes(8)).decode()}"'),
        fields(kc=f'"{base64.b64encode(bytes(31)).decode()}"'),
        fields(dk='""'),
        fields(dk='"!"'),
        fields(dk='"AB=="'),  # non-canonical (non-zero trailing bits)
        fields(dk='"AA"'),  # unpadded
        fields(dk="null"),
        fields(dk=None),
        fields(sv=None),
        fields(sv="true"),
        fields(sv="1.0"),
        fields(seg="4096.0"),
        fields(seg='"4096"'),
        fields(seg="-4096"),
        good[:-1] + ',"x":0}',
        good[:-1] + ',"sv":1}',  # duplicate field
        '{"v":3}',
        "[1]",
        "not json",
        "\ufeff" + good,
        good + " " * (MAX_STREAM_HEADER_LEN + 1 - len(good)),
    ):
        _expect_failure(f"stream header {bad_json[:80]!r}", parse_stream_header, stream_header(bad_json))
    _expect_failure("stream header not UTF-8", parse_stream_header, stream_header(good.encode()[:-2] + b'\xff"}'))
    for bad_prefix in (b"", b"\x00", b"\x00\x00", b"\x7f\xff", struct.pack(">H", MAX_STREAM_HEADER_LEN + 1)):
        _expect_failure(
            f"stream header prefix {bad_prefix.hex()}", read_stream_header, io.BytesIO(bad_prefix + bytes(9000))
        )
    _expect_failure("stream header cut short", read_stream_header, io.BytesIO(stream_header(good)[:-1]))

    # The command line: output, exit statuses, and the output file deleted on failure.
    plaintext = os.urandom(2 * seg + 9)
    wrapped = b"\x00\x01wrapped"
    stream = seal_stream(data_key, plaintext, aad=aad, context=context, dk=wrapped)
    with tempfile.TemporaryDirectory() as tmp:
        stream_path, out_path = os.path.join(tmp, "stream"), os.path.join(tmp, "out")
        with open(stream_path, "wb") as f:
            f.write(stream)

        def run(*argv: str) -> tuple[int, str]:
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    status = main(list(argv))
                except SystemExit as e:  # argparse's usage errors
                    status = e.code
            return status, stdout.getvalue()

        base = ("open-stream", "--key-hex", data_key.hex(), "--stream-file", stream_path, "--out-file", out_path)
        binding_args = ("--aad-hex", aad.hex(), "--context-json", json.dumps(context))
        status, printed = run(*base, *binding_args)
        _check(status == 0, "open-stream succeeds")
        _check(printed == f"{hashlib.sha256(plaintext).hexdigest()} {len(plaintext)}\n", "open-stream output")
        with open(out_path, "rb") as f:
            _check(f.read() == plaintext, "open-stream writes the plaintext")
        _check(run("stream-header", "--stream-file", stream_path) == (0, wrapped.hex() + "\n"),
               "stream-header prints dk as hex")
        for what, argv in (
            ("no binding", base),
            ("wrong AAD", (*base, "--aad-hex", "00", "--context-json", json.dumps(context))),
            ("wrong key", ("open-stream", "--key-hex", "00" * 32, *base[3:], *binding_args)),
            ("missing stream file", (*base[:4], os.path.join(tmp, "missing"), *base[5:], *binding_args)),
        ):
            _check(os.path.exists(out_path), "output file present before the failing run")
            _check(run(*argv)[0] == 1, f"open-stream fails with status 1: {what}")
            _check(not os.path.exists(out_path), f"open-stream deletes the output file: {what}")
            with open(out_path, "wb") as f:
                f.write(b"stale")
        with open(stream_path, "wb") as f:
            f.write(stream[:-1])
        _check(run(*base, *binding_args)[0] == 1 and not os.path.exists(out_path), "truncated file fails")
        _check(run("open-stream", "--key-hex", "0g", *base[3:])[0] == 2, "open-stream: bad hex is a usage error")
        _check(run("open-stream", "--key-hex", data_key.hex(), *base[3:], "--context-json", "[]")[0] == 2,
               "open-stream: bad context is a usage error")
        _check(run("open-stream", "--key-hex", data_key.hex())[0] == 2, "open-stream: missing arguments")
        with open(stream_path, "wb") as f:
            f.write(stream_header(fields(sv="2")))
        _check(run("stream-header", "--stream-file", stream_path)[0] == 1, "stream-header refuses a bad header")

    # --- Pinned stream vector (generated by this script's encoder above with a fixed salt and prefix; NOT
    # produced by keymesh; stream.rs has no fixed vector). Paste into a Rust test to pin both sides together.
    pinned = seal_stream(
        data_key, b"attack at dawn", aad=b"object-7", context={"bucket": "invoices"}, salt=bytes(range(32)),
        np=bytes(range(7)),
    )
    _check(pinned.hex() == PINNED_STREAM_VECTOR_HEX, "pinned stream vector")
    _check(opened(data_key, pinned, b"object-7", {"bucket": "invoices"}) == b"attack at dawn", "open pinned stream")


# data key = 64 65 .. 83 (100..131), salt = 00 01 .. 1f, np = 00 01 .. 06, dk "wrapped-dk", seg 4096,
# plaintext "attack at dawn", aad "object-7", context {"bucket":"invoices"}, AES-256-GCM.
PINNED_STREAM_VECTOR_HEX = (
    "00bd7b227376223a312c22616c67223a224145532d3235362d47434d222c22736567223a343039362c2273616c74223a"
    "2241414543417751464267634943516f4c4441304f4478415245684d554652595847426b61477877644868383d222c22"
    "6e70223a22414145434177514642673d3d222c226b63223a222f6b4f3545724f495636414e30414f69393331665a674f"
    "543156772f7a61673259472b346b544137614e6f3d222c22646b223a2264334a686348426c5a43316b61773d3d227dab"
    "33f7fc003fca1bc77e0968ad0c6473f4ac05b67c21d3a3c5ef894f3ae8"
)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byok.py",
        description="Independent BYOK wrapping and keymesh ciphertext and stream opening for integration tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("wrap", help="wrap key material for import; prints the wrapped bytes as hex")
    p.add_argument("--public-key", required=True, metavar="PEM_PATH", help="keymesh's RSA wrapping public key (PEM)")
    p.add_argument("--algorithm", required=True, choices=WRAP_ALGORITHMS)
    p.add_argument("--material-hex", required=True, metavar="HEX", help="the raw key material")

    p = sub.add_parser("open", help="decrypt a keymesh v3 ciphertext; prints the plaintext as hex")
    p.add_argument(
        "--key-hex", required=True, metavar="HEX", help="the raw key (16 bytes for AES-128-GCM, else 32 bytes)"
    )
    p.add_argument("--ciphertext-hex", required=True, metavar="HEX")
    p.add_argument("--aad-hex", default="", metavar="HEX", help="the AAD given to Encrypt (default: none)")
    p.add_argument(
        "--context-json",
        default=None,
        metavar="JSON",
        help='the encryption context given to Encrypt, e.g. \'{"tenant":"acme"}\' (default: none)',
    )

    p = sub.add_parser(
        "open-stream",
        help="decrypt a keymesh stream file to a file; prints the plaintext's hex SHA-256 and its length",
    )
    p.add_argument(
        "--key-hex",
        required=True,
        metavar="HEX",
        help="the raw data key (16 bytes for AES-128-GCM, 32 for AES-256-GCM)",
    )
    p.add_argument("--stream-file", required=True, metavar="PATH", help="the stream (header and segments)")
    p.add_argument("--aad-hex", default="", metavar="HEX", help="the stream's AAD (default: none)")
    p.add_argument(
        "--context-json",
        default=None,
        metavar="JSON",
        help='the stream\'s encryption context, e.g. \'{"bucket":"invoices"}\' (default: none, same as {})',
    )
    p.add_argument(
        "--out-file", required=True, metavar="PATH", help="where the plaintext goes (deleted if the stream fails)"
    )

    p = sub.add_parser("stream-header", help="print a stream's wrapped data key (header field dk) as hex")
    p.add_argument("--stream-file", required=True, metavar="PATH")

    sub.add_parser("selftest", help="run internal consistency checks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "wrap":
            material = parse_hex(args.material_hex, "--material-hex")
            public_key = load_rsa_public_key(args.public_key)
            print(wrap(public_key, args.algorithm, material).hex())
        elif args.command == "open":
            key = parse_hex(args.key_hex, "--key-hex")
            ciphertext = parse_hex(args.ciphertext_hex, "--ciphertext-hex")
            aad = parse_hex(args.aad_hex, "--aad-hex", allow_empty=True)
            context = parse_context_json(args.context_json) if args.context_json is not None else None
            print(open_ciphertext(key, ciphertext, aad, context).hex())
        elif args.command == "open-stream":
            key = parse_hex(args.key_hex, "--key-hex")
            aad = parse_hex(args.aad_hex, "--aad-hex", allow_empty=True)
            context = parse_context_json(args.context_json) if args.context_json is not None else None
            digest, length = open_stream_file(key, args.stream_file, args.out_file, aad, context)
            print(f"{digest} {length}")
        elif args.command == "stream-header":
            print(stream_file_header(args.stream_file).wrapped_data_key.hex())
        elif args.command == "selftest":
            selftest()
            print("selftest: ok")
    except UsageError as e:
        print(f"byok.py {args.command}: {e}", file=sys.stderr)
        return 2
    except ByokError as e:
        print(f"byok.py {args.command}: {e}", file=sys.stderr)
        return 1
    except AssertionError as e:
        print(f"byok.py {args.command}: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
