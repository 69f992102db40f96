#!/usr/bin/env python3
"""Independent BYOK / ciphertext helper for keymesh's integration tests.

This script deliberately shares no code with keymesh: it re-implements, from the
format description, the two things an integration test wants to check from the
outside:

  wrap      Wrap raw key material for import ("bring your own key") under the
            RSA wrapping public key keymesh hands out, using one of the two
            schemes AWS KMS / GCP KMS users know.

  open      Decrypt a keymesh ciphertext (format version 3, any of its algorithms) with the raw key,
            proving that what keymesh produced is exactly the documented format
            and that the imported material really is the key in use.

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
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
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


# key = 00 01 .. 1f, nonce = 00 01 .. 0b, plaintext "attack at dawn", aad "order-17", context {"tenant":"acme"},
# key name "user-pii", kid "k_0123:v2", AES-256-GCM.
PINNED_VECTOR_HEX = (
    "00a57b2276223a332c22637478223a22757365722d706969222c226b6964223a226b5f303132333a7632222c22616c67"
    "223a224145532d3235362d47434d222c226d6f6465223a2267636d222c226e6f6e6365223a2241414543417751464267"
    "634943516f4c222c226b63223a2235752f70753133427576506f502b517256316f3962467678766f4e6f314f7135396e"
    "4c71774a6f6e5859553d222c22616164223a747275657d2676a27aa68ee27af961f3eac687957919291f67d07e1a6b8f"
    "9d35ce19fd"
)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byok.py", description="Independent BYOK wrapping and keymesh ciphertext opening for integration tests."
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
