#!/usr/bin/env python3
"""End-to-end driver of the Python client against a live mesh (the lead's integration test runs it).

Usage (from any directory):
    python3 libs/python-client/tests/e2e.py basic
    python3 libs/python-client/tests/e2e.py envelope-seal KEY IN OUT     seal IN here (one GenerateDataKey)
    python3 libs/python-client/tests/e2e.py envelope-open IN OUT         open an envelope or EncryptStream output here
    python3 libs/python-client/tests/e2e.py stream-encrypt KEY IN OUT    through EncryptStream
    python3 libs/python-client/tests/e2e.py stream-decrypt IN OUT        through DecryptStream
    python3 libs/python-client/tests/e2e.py local-check                  keymesh.local against Hash and GenerateMac
    python3 libs/python-client/tests/e2e.py login                        keymesh.login into $KEYMESH_HOME
    python3 libs/python-client/tests/e2e.py register NAME ENVIRONMENT [KEY_PATTERN...]
                                                                  keymesh.register from that session

Environment: KEYMESH_{KEY,CRYPTO,TOKEN,AUDIT}_SERVICE (host:port), KEYMESH_CA_CERT, KEYMESH_CLIENT_CERT,
KEYMESH_CLIENT_KEY (PEM paths), KEYMESH_CLIENT_ID, KEYMESH_CLIENT_SECRET; for `basic` also KEYMESH_TEST_KEY,
KEYMESH_TEST_RUST_CIPHERTEXT_B64 and KEYMESH_TEST_RUST_AAD_B64; for the others, optionally
KEYMESH_TEST_AAD_B64 (standard base64) and KEYMESH_TEST_CONTEXT_JSON (a JSON object of strings).
`login` and `register` use the keymesh directory KEYMESH_HOME (else ~/.keymesh); `login` logs in with
KEYMESH_CLIENT_ID and KEYMESH_CLIENT_SECRET (or KEYMESH_SUBJECT_TOKEN_FILE); `register` takes the team from
KEYMESH_TEST_TEAM (optional) and, when KEYMESH_TEST_KEY is set, proves the application's client works with an
Encrypt and a Decrypt under that key ("roundtrip": true).

Each subcommand prints one JSON object as its last stdout line and exits 0; on failure it prints one line on
stderr and exits 1 (a failed open or decrypt leaves no OUT file).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keymesh  # noqa: E402
from keymesh import pb  # noqa: E402


class DriverError(Exception):
    pass


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise DriverError(f"set {name}")
    return value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def associated() -> tuple[bytes, dict[str, str]]:
    aad = base64.b64decode(os.environ.get("KEYMESH_TEST_AAD_B64", ""), validate=True)
    raw = os.environ.get("KEYMESH_TEST_CONTEXT_JSON", "")
    context = json.loads(raw) if raw else {}
    if not isinstance(context, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise DriverError("KEYMESH_TEST_CONTEXT_JSON must be a JSON object of strings")
    return aad, context


def client(credentials: keymesh.Credentials | None = None) -> keymesh.Client:
    if credentials is None:
        return keymesh.Client.from_env()
    return keymesh.Client.from_env(credentials=credentials)


def expect_refusal(call: Callable[[], Any], code: str) -> dict[str, Any]:
    try:
        call()
    except keymesh.KeymeshError as e:
        if e.code_name != code:
            raise DriverError(f"expected {code}, got {e.code_name}: {e.message}") from None
        return e.to_dict()
    raise DriverError(f"expected {code}, but the call succeeded")


def basic(args: list[str]) -> dict[str, Any]:
    if args:
        raise DriverError("basic takes no arguments")
    key_name = env("KEYMESH_TEST_KEY")
    rust_ciphertext = base64.b64decode(env("KEYMESH_TEST_RUST_CIPHERTEXT_B64"), validate=True)
    rust_aad = base64.b64decode(os.environ.get("KEYMESH_TEST_RUST_AAD_B64", ""), validate=True)
    with client() as c:
        c.access_token()  # client credentials grant
        key = c.create_key(key_name, purpose=pb.KEY_PURPOSE_ENCRYPT, algorithm=pb.ALGORITHM_AES_256_GCM)
        if key.name != key_name or not key.key_id:
            raise DriverError("CreateKey returned another key")
        plaintext = secrets.token_bytes(1024 + secrets.randbelow(3 * 1024 + 1))
        aad = f"python-e2e/{secrets.token_hex(4)}".encode()
        ciphertext = c.encrypt(key_name, plaintext, aad=aad)
        if c.decrypt(ciphertext, aad=aad) != plaintext:
            raise DriverError("Decrypt did not return the plaintext")
        rust_plaintext = c.decrypt(rust_ciphertext, aad=rust_aad)
        refused = expect_refusal(lambda: c.get_key(f"no-such-key-{secrets.token_hex(6)}"), "NOT_FOUND")
    wrong = keymesh.Credentials.client_credentials(env("KEYMESH_CLIENT_ID"), "wrong-" + secrets.token_hex(16))
    with client(wrong) as bad:
        unauthenticated = expect_refusal(bad.access_token, "UNAUTHENTICATED")
    return {
        "language": "python",
        "key_id": key.key_id,
        "key_name": key_name,
        "roundtrip": True,
        "ciphertext_b64": b64(ciphertext),
        "plaintext_b64": b64(plaintext),
        "aad_b64": b64(aad),
        "rust_plaintext_b64": b64(rust_plaintext),
        "refused": refused,
        "unauthenticated": unauthenticated,
    }


def file_command(name: str, with_key: bool) -> Callable[[list[str]], dict[str, Any]]:
    def run(args: list[str]) -> dict[str, Any]:
        expected = 3 if with_key else 2
        if len(args) != expected:
            raise DriverError(f"usage: {name} {'KEY ' if with_key else ''}IN OUT")
        aad, context = associated()
        start = time.monotonic()
        with client() as c:
            method: Callable[..., int] = getattr(
                c,
                {
                    "envelope-seal": "seal_file",
                    "envelope-open": "open_file",
                    "stream-encrypt": "encrypt_file",
                    "stream-decrypt": "decrypt_file",
                }[name],
            )
            n = method(*args, aad=aad, context=context)
        return {"ok": True, "bytes": n, "seconds": round(time.monotonic() - start, 3)}

    return run


def local_check(args: list[str]) -> dict[str, Any]:
    """keymesh.local against the service: Hash for every algorithm, and GenerateMac under MAC keys whose
    material was imported (so it is known here), for HMAC-SHA256 and HMAC-SHA512."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    if args:
        raise DriverError("local-check takes no arguments")
    data = secrets.token_bytes(1000 + secrets.randbelow(1000))
    hashes_ok: dict[str, bool] = {}
    macs_ok: dict[str, bool] = {}
    with client() as c:
        # The NIST inputs ("" and "abc"; test_local.py checks keymesh.local against the published digests) and a
        # random one.
        for name, number in (("sha256", 1), ("sha384", 2), ("sha512", 3), ("sha3-256", 4), ("blake2b-512", 5)):
            for sample in (b"", b"abc", data):
                if c.hash(sample, number) != keymesh.local.hash(sample, name):
                    raise DriverError(f"Hash {name} differs from keymesh.local on a {len(sample)}-byte input")
            hashes_ok[name] = True
        for name, algorithm, size in (("hmac-sha256", pb.ALGORITHM_HMAC_SHA256, 32), ("hmac-sha512", pb.ALGORITHM_HMAC_SHA512, 64)):
            key_name = f"py-local-{name}-{secrets.token_hex(4)}"
            c.keys.CreateKey(
                pb.CreateKeyRequest(name=key_name, purpose=pb.KEY_PURPOSE_MAC, algorithm=algorithm, origin=pb.KEY_ORIGIN_EXTERNAL)
            )
            wrapping = c.keys.GetWrappingKey(
                pb.GetWrappingKeyRequest(
                    key=key_name,
                    wrapping_algorithm=pb.WRAPPING_ALGORITHM_RSA_OAEP_SHA256,
                    wrapping_key_spec=pb.WRAPPING_KEY_SPEC_RSA_2048,
                )
            )
            public_key = serialization.load_pem_public_key(wrapping.public_key_pem.encode())
            material = secrets.token_bytes(size)
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
            c.keys.ImportKeyVersion(
                pb.ImportKeyVersionRequest(
                    key=key_name,
                    import_token=wrapping.import_token,
                    wrapping_algorithm=pb.WRAPPING_ALGORITHM_RSA_OAEP_SHA256,
                    wrapped_key_material=public_key.encrypt(material, oaep),  # type: ignore[union-attr]
                )
            )
            tag = c.generate_mac(key_name, data)
            if tag != keymesh.local.mac(data, material, name) or not keymesh.local.verify_mac(data, material, tag, name):
                raise DriverError(f"GenerateMac {name} differs from keymesh.local")
            if not c.verify_mac(key_name, data, keymesh.local.mac(data, material, name)):
                raise DriverError(f"VerifyMac refused keymesh.local's {name} tag")
            macs_ok[name] = True
    return {"ok": True, "hashes": hashes_ok, "macs": macs_ok}


def login(args: list[str]) -> dict[str, Any]:
    if args:
        raise DriverError("login takes no arguments")
    token_file = os.environ.get("KEYMESH_SUBJECT_TOKEN_FILE")
    if token_file:
        client_id = keymesh.login(subject_token_file=token_file)
    else:
        client_id = keymesh.login(client_id=env("KEYMESH_CLIENT_ID"), client_secret=env("KEYMESH_CLIENT_SECRET"))
    return {"ok": True, "client_id": client_id}


def register(args: list[str]) -> dict[str, Any]:
    if len(args) < 2:
        raise DriverError("usage: register NAME ENVIRONMENT [KEY_PATTERN...]")
    name, environment, keys = args[0], args[1], args[2:]
    with keymesh.register(name, team=os.environ.get("KEYMESH_TEST_TEAM", ""), environment=environment, keys=keys) as c:
        registered = c.registered
        if registered is None:
            raise DriverError("keymesh.register returned a client without its registration")
        result: dict[str, Any] = {"ok": True, **registered.to_dict()}
        key_name = os.environ.get("KEYMESH_TEST_KEY")
        if key_name:
            plaintext = secrets.token_bytes(64 + secrets.randbelow(512))
            aad = f"python-e2e-register/{secrets.token_hex(4)}".encode()
            ciphertext = c.encrypt(key_name, plaintext, aad=aad)
            if c.decrypt(ciphertext, aad=aad) != plaintext:
                raise DriverError("Decrypt did not return the plaintext")
            result["roundtrip"] = True
    return result


COMMANDS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "basic": basic,
    "envelope-seal": file_command("envelope-seal", True),
    "envelope-open": file_command("envelope-open", False),
    "stream-encrypt": file_command("stream-encrypt", True),
    "stream-decrypt": file_command("stream-decrypt", False),
    "local-check": local_check,
    "login": login,
    "register": register,
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(f"usage: e2e.py {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    try:
        result = COMMANDS[argv[1]](argv[2:])
    except (keymesh.KeymeshError, DriverError, OSError, ValueError) as e:
        line = " ".join(str(e).split())
        print(f"e2e.py {argv[1]}: {type(e).__name__}: {line}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
