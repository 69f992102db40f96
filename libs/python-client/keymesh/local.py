"""Hashes and HMACs computed here, never by the service, byte for byte what crypto-service returns.

- :func:`hash` matches the Hash RPC: SHA-256, SHA-384, SHA-512, SHA3-256 and BLAKE2b-512 (unkeyed BLAKE2b
  with a 64-byte digest, OpenSSL's ``BLAKE2B512``) of the data.
- :func:`mac` matches GenerateMac: a full-length HMAC-SHA256 (32 bytes) or HMAC-SHA512 (64 bytes) of the
  message under the key's material (RFC 2104). keymesh's MAC keys hold 32..128 (HMAC-SHA256) or 64..128
  (HMAC-SHA512) bytes; :func:`mac` itself takes any key length, as HMAC does.
- :func:`verify_mac` compares in constant time and refuses truncated tags, as VerifyMac does.

Algorithm names are read loosely: ``"sha256"``, ``"SHA-256"``, ``"HASH_ALGORITHM_SHA256"`` or the proto enum
number all name SHA-256; ``"hmac-sha256"``, ``"HMAC_SHA256"``, ``"ALGORITHM_HMAC_SHA256"`` or 60 name
HMAC-SHA256.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from typing import Any, Callable, Union

__all__ = ["HASH_ALGORITHMS", "MAC_ALGORITHMS", "hash", "hash_hex", "mac", "mac_hex", "verify_mac"]

Data = Union[bytes, bytearray, memoryview]

# Normalised name -> hashlib constructor; the proto enum numbers of HashAlgorithm map to the same names.
HASH_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "SHA256": hashlib.sha256,
    "SHA384": hashlib.sha384,
    "SHA512": hashlib.sha512,
    "SHA3256": hashlib.sha3_256,
    "BLAKE2B512": lambda: hashlib.blake2b(digest_size=64),
}
_HASH_NUMBERS = {1: "SHA256", 2: "SHA384", 3: "SHA512", 4: "SHA3256", 5: "BLAKE2B512"}

MAC_ALGORITHMS: dict[str, str] = {"HMACSHA256": "sha256", "HMACSHA512": "sha512"}
_MAC_NUMBERS = {60: "HMACSHA256", 61: "HMACSHA512"}


def _normalise(name: Union[str, int], prefixes: tuple[str, ...], numbers: dict[int, str]) -> str:
    if isinstance(name, int) and not isinstance(name, bool):
        return numbers.get(name, "")
    if not isinstance(name, str):
        return ""
    upper = name.upper()
    for prefix in prefixes:
        if upper.startswith(prefix):
            upper = upper[len(prefix) :]
            break
    return upper.replace("-", "").replace("_", "")


def _hasher(algorithm: Union[str, int]) -> Any:
    name = _normalise(algorithm, ("HASH_ALGORITHM_",), _HASH_NUMBERS)
    factory = HASH_ALGORITHMS.get(name)
    if factory is None:
        raise ValueError(f"unknown hash algorithm {algorithm!r}: choose sha256, sha384, sha512, sha3-256 or blake2b-512")
    return factory()


def hash(data: Data, algorithm: Union[str, int] = "sha256") -> bytes:  # noqa: A001 (the service's name)
    """The digest of ``data``, as the Hash RPC computes it."""
    h = _hasher(algorithm)
    h.update(data)
    return h.digest()


def hash_hex(data: Data, algorithm: Union[str, int] = "sha256") -> str:
    """:func:`hash` in lower-case hex."""
    return hash(data, algorithm).hex()


def _mac_digest(algorithm: Union[str, int]) -> str:
    name = _normalise(algorithm, ("ALGORITHM_",), _MAC_NUMBERS)
    digest = MAC_ALGORITHMS.get(name)
    if digest is None:
        raise ValueError(f"unknown MAC algorithm {algorithm!r}: choose hmac-sha256 or hmac-sha512")
    return digest


def mac(data: Data, key: Data, algorithm: Union[str, int] = "hmac-sha256") -> bytes:
    """The full-length HMAC of ``data`` under ``key``, as GenerateMac computes it with a key holding ``key``."""
    return _hmac.new(bytes(key), data, _mac_digest(algorithm)).digest()


def mac_hex(data: Data, key: Data, algorithm: Union[str, int] = "hmac-sha256") -> str:
    """:func:`mac` in lower-case hex."""
    return mac(data, key, algorithm).hex()


def verify_mac(data: Data, key: Data, tag: Data, algorithm: Union[str, int] = "hmac-sha256") -> bool:
    """Whether ``tag`` is exactly the full-length HMAC of ``data`` (constant time; truncated tags are not valid)."""
    expected = mac(data, key, algorithm)
    return len(expected) == len(tag) and _hmac.compare_digest(expected, bytes(tag))
