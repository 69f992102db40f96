#!/usr/bin/env python3
"""Independent BYOK / ciphertext helper for keymesh's integration tests.

This script deliberately shares no code with keymesh: it re-implements, from the
format description, the two things an integration test wants to check from the
outside:

  wrap      Wrap raw key material for import ("bring your own key") under the
            RSA wrapping public key keymesh hands out, using one of the two
            schemes AWS KMS / GCP KMS users know.

  open      Decrypt a keymesh ciphertext (format version 3) with the raw AES key,
            proving that what keymesh produced is exactly the documented format
            and that the imported material really is the key in use.

  selftest  Internal-consistency checks (plus the fixed vectors that keymesh's
            own unit tests use), so a failure in an integration test can be
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

Ciphertext format (as written by keymesh's libs/crypto/src/ciphertext.rs):

    [u16 big-endian header length][header: compact JSON, UTF-8][GCM ciphertext || 16-byte tag]

    header (v3), keys in this order as serde_json writes them, no whitespace:
      {"v":3,                     format version (integer)
       "ctx":"user-pii",          the key's *name* (NOT the encryption context)
       "kid":"k_0123:v2",         "<key id>:v<version>", version a u32 > 0
       "alg":"AES-256-GCM",       or "AES-128-GCM"
       "mode":"gcm",
       "nonce":"<base64>",        12 bytes, standard alphabet, padded
       "kc":"<base64>",           32-byte key commitment, HMAC-SHA256(key, "key-commitment-v1")
       "aad":false}               whether a non-empty AAD / encryption context was bound

    GCM associated data = length prefix || header bytes (exactly as they appear
    in the ciphertext, not re-serialised)
                          || u64be(len(aad)) || aad
                          || u32be(number of context entries)
                          || for each (k, v) sorted by key bytes:
                                 u64be(len(k)) || k || u64be(len(v)) || v

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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

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
# keymesh ciphertext format
# --------------------------------------------------------------------------------------------------

SUPPORTED_VERSION = 3
MAX_HEADER_LEN = 4096  # keymesh refuses longer headers (and zero-length ones).
GCM_NONCE_LEN = 12
GCM_TAG_LEN = 16
COMMITMENT_LABEL = b"key-commitment-v1"
COMMITMENT_LEN = 32

# "alg" -> AES key length in bytes. Both are GCM; "mode" must then be "gcm".
ALGORITHMS = {"AES-128-GCM": 16, "AES-256-GCM": 32}
ALGORITHM_MODE = "gcm"

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
    body: bytes  # GCM ciphertext || tag


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

    if algorithm not in ALGORITHMS:
        raise ByokError(f"unsupported algorithm {algorithm!r}; expected one of {sorted(ALGORITHMS)}")
    if mode != ALGORITHM_MODE:
        raise ByokError(f"header mode {mode!r} does not match algorithm {algorithm} (expected {ALGORITHM_MODE!r})")

    nonce = b64_decode_canonical(nonce_b64, "nonce")
    if len(nonce) != GCM_NONCE_LEN:
        raise ByokError(f"nonce is {len(nonce)} bytes, expected {GCM_NONCE_LEN}")
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
    """Checks the key commitment (constant time), then authenticates and decrypts."""
    expected_key_len = ALGORITHMS[parsed.algorithm]
    if len(key) != expected_key_len:
        raise ByokError(f"{parsed.algorithm} needs a {expected_key_len}-byte key, got {len(key)} bytes")
    # Key commitment before anything else touches the key: HMAC-SHA256(key, "key-commitment-v1").
    if len(parsed.commitment) != COMMITMENT_LEN or not hmac.compare_digest(key_commitment(key), parsed.commitment):
        raise ByokError("key commitment does not match: this ciphertext was not made under this key")
    # A header that says nothing was bound must not be opened with a binding (keymesh refuses it too).
    if not parsed.has_binding and not binding_is_empty(aad, context):
        raise ByokError("header says no AAD/encryption context was bound, but one was supplied")
    if len(parsed.body) < GCM_TAG_LEN:
        raise ByokError("body is shorter than a GCM tag")
    associated = parsed.prefix_and_header + encode_binding(aad, context)
    try:
        # AESGCM takes ciphertext || tag, exactly keymesh's body layout.
        return AESGCM(key).decrypt(parsed.nonce, parsed.body, associated)
    except InvalidTag:
        raise ByokError("GCM authentication failed (wrong AAD/encryption context, or tampered ciphertext)") from None


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
    if len(key) != ALGORITHMS[algorithm]:
        raise ByokError(f"{algorithm} needs a {ALGORITHMS[algorithm]}-byte key")
    nonce = os.urandom(GCM_NONCE_LEN) if nonce is None else nonce
    header = {
        "v": SUPPORTED_VERSION,
        "ctx": key_name,
        "kid": f"{key_id}:v{key_version}",
        "alg": algorithm,
        "mode": ALGORITHM_MODE,
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
    return prefix_and_header + AESGCM(key).encrypt(nonce, plaintext, associated)


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
    except (ByokError, InvalidUnwrap, ValueError):
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
    p.add_argument("--key-hex", required=True, metavar="HEX", help="the raw AES key (16 or 32 bytes)")
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
