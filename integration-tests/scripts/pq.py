#!/usr/bin/env python3
"""ML-DSA and ML-KEM outside keymesh, for the post-quantum interop tests (integration-tests/tests/post_quantum.rs).

`hybrid-encrypt` and `hybrid-decrypt` implement the source document's hybrid mode (AES-256-GCM+ML-KEM-768)
from the document alone: the header layout of its "Hybrid Mode" section, HKDF-SHA256 with info
"cryptoserve-hybrid-v1", and the key commitment of its ciphertext format (HMAC-SHA256(key, "key-commitment-v1")
in the header's "kc", checked before decrypting).

Two implementations that share no code with keymesh or with each other: the pure-Python `dilithium-py` and
`kyber-py` (written from FIPS 203/204), and `cryptography` (Rust bindings over its own OpenSSL/AWS-LC build).
Public keys arrive as keymesh exports them: SubjectPublicKeyInfo DER (GetPublicKey's public_key_der), whose
raw key the script takes out itself. Output is hex on stdout, one value per line.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from kyber_py.ml_kem import ML_KEM_512, ML_KEM_768, ML_KEM_1024

DILITHIUM = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}
KYBER = {"ML-KEM-512": ML_KEM_512, "ML-KEM-768": ML_KEM_768, "ML-KEM-1024": ML_KEM_1024}
CRYPTOGRAPHY_DSA = {
    "ML-DSA-44": mldsa.MLDSA44PrivateKey,
    "ML-DSA-65": mldsa.MLDSA65PrivateKey,
    "ML-DSA-87": mldsa.MLDSA87PrivateKey,
}
# `cryptography` offers ML-KEM-768 and ML-KEM-1024 only.
CRYPTOGRAPHY_KEM = {"ML-KEM-768": mlkem.MLKEM768PrivateKey, "ML-KEM-1024": mlkem.MLKEM1024PrivateKey}
PUBLIC_KEY_LEN = {
    "ML-DSA-44": 1312, "ML-DSA-65": 1952, "ML-DSA-87": 2592,
    "ML-KEM-512": 800, "ML-KEM-768": 1184, "ML-KEM-1024": 1568,
}


def raw_from_spki(spki: bytes, algorithm: str) -> bytes:
    """The key inside a SubjectPublicKeyInfo: a BIT STRING with no unused bits at the very end."""
    n = PUBLIC_KEY_LEN[algorithm]
    if spki[-n - 1] != 0:
        raise SystemExit("the BIT STRING has unused bits")
    return spki[-n:]


def hybrid_key(shared_secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cryptoserve-hybrid-v1").derive(shared_secret)


def commitment(key: bytes) -> bytes:
    return hmac.new(key, b"key-commitment-v1", hashlib.sha256).digest()


def hybrid_encrypt(ek: bytes, kid: str, plaintext: bytes) -> bytes:
    shared_secret, kem_ct = ML_KEM_768.encaps(ek)
    key = hybrid_key(shared_secret)
    nonce = os.urandom(12)
    header = json.dumps({
        "v": 1, "mode": "AES-256-GCM+ML-KEM-768", "kid": kid, "nonce": base64.b64encode(nonce).decode(),
        "kem_ct_len": len(kem_ct), "kc": base64.b64encode(commitment(key)).decode(),
    }).encode()
    return struct.pack(">H", len(header)) + header + kem_ct + AESGCM(key).encrypt(nonce, plaintext, None)


def hybrid_decrypt(dk: bytes, ciphertext: bytes) -> bytes:
    (header_len,) = struct.unpack(">H", ciphertext[:2])
    header = json.loads(ciphertext[2:2 + header_len])
    assert header["v"] == 1 and header["mode"] == "AES-256-GCM+ML-KEM-768", header
    rest = ciphertext[2 + header_len:]
    kem_ct, sealed = rest[:header["kem_ct_len"]], rest[header["kem_ct_len"]:]
    key = hybrid_key(ML_KEM_768.decaps(dk, kem_ct))
    if not hmac.compare_digest(commitment(key), base64.b64decode(header["kc"])):
        raise SystemExit("key commitment mismatch")
    return AESGCM(key).decrypt(base64.b64decode(header["nonce"]), sealed, None)


def selftest() -> None:
    for name, dsa in DILITHIUM.items():
        pk, sk = dsa.key_derive(bytes(32))
        sig = dsa.sign(sk, b"m", deterministic=True)
        assert dsa.verify(pk, b"m", sig) and not dsa.verify(pk, b"n", sig), name
    for name, kem in KYBER.items():
        ek, dk = kem.keygen()
        key, ct = kem.encaps(ek)
        assert kem.decaps(dk, ct) == key, name
    ek, dk = ML_KEM_768.keygen()
    assert hybrid_decrypt(dk, hybrid_encrypt(ek, "k:v1", b"hybrid")) == b"hybrid"
    print("ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--algorithm")
    parser.add_argument("--impl", choices=["dilithium", "kyber", "cryptography"])
    parser.add_argument("--seed-hex")
    parser.add_argument("--spki-hex")
    parser.add_argument("--message-hex", default="")
    parser.add_argument("--signature-hex")
    parser.add_argument("--ciphertext-hex")
    parser.add_argument("--plaintext-hex")
    parser.add_argument("--kid")
    parser.add_argument("--context-hex", default="")
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    alg = args.algorithm

    if args.command == "selftest":
        selftest()
    elif args.command == "mldsa-keypair":
        # A seed, its PKCS#8 (seed form) as `cryptography` writes it, and the raw public key both derive.
        seed = os.urandom(32)
        key = CRYPTOGRAPHY_DSA[alg].from_seed_bytes(seed)
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        pk, _ = DILITHIUM[alg].key_derive(seed)
        assert key.public_key().public_bytes_raw() == pk, "the two implementations derive different keys"
        print(seed.hex())
        print(pkcs8.hex())
        print(pk.hex())
    elif args.command == "mldsa-sign":
        seed, message = bytes.fromhex(args.seed_hex), bytes.fromhex(args.message_hex)
        if args.impl == "dilithium":
            _, sk = DILITHIUM[alg].key_derive(seed)
            print(DILITHIUM[alg].sign(sk, message, deterministic=args.deterministic).hex())
        else:
            print(CRYPTOGRAPHY_DSA[alg].from_seed_bytes(seed).sign(message).hex())
    elif args.command == "mldsa-verify":
        spki, signature = bytes.fromhex(args.spki_hex), bytes.fromhex(args.signature_hex)
        pk = raw_from_spki(spki, alg)
        context = bytes.fromhex(args.context_hex)
        if args.impl == "dilithium":
            valid = DILITHIUM[alg].verify(pk, bytes.fromhex(args.message_hex), signature, ctx=context)
        else:
            key = serialization.load_der_public_key(spki)
            try:
                key.verify(signature, bytes.fromhex(args.message_hex), context or None)
                valid = True
            except InvalidSignature:
                valid = False
        print("valid" if valid else "invalid")
    elif args.command == "mldsa-mu":
        pk = raw_from_spki(bytes.fromhex(args.spki_hex), alg)
        print(DILITHIUM[alg].prehash_external_mu(pk, bytes.fromhex(args.message_hex)).hex())
    elif args.command == "mlkem-keypair":
        # A seed `d || z` and its PKCS#8 (seed form) as `cryptography` writes it (ML-KEM-768/1024), or as the
        # LAMPS profile defines it (ML-KEM-512, which `cryptography` lacks): [0] IMPLICIT OCTET STRING.
        seed = os.urandom(64)
        if alg in CRYPTOGRAPHY_KEM:
            pkcs8 = CRYPTOGRAPHY_KEM[alg].from_seed_bytes(seed).private_bytes(serialization.Encoding.DER,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption())
        else:
            oid = bytes.fromhex("0609608648016503040401")
            inner = b"\x80\x40" + seed
            body = b"\x02\x01\x00" + b"\x30" + bytes([len(oid)]) + oid + b"\x04" + bytes([len(inner)]) + inner
            pkcs8 = b"\x30" + bytes([len(body)]) + body
        print(seed.hex())
        print(pkcs8.hex())
    elif args.command == "mlkem-decaps":
        seed, ciphertext = bytes.fromhex(args.seed_hex), bytes.fromhex(args.ciphertext_hex)
        if args.impl == "kyber":
            _, dk = KYBER[alg].key_derive(seed)
            print(KYBER[alg].decaps(dk, ciphertext).hex())
        else:
            print(CRYPTOGRAPHY_KEM[alg].from_seed_bytes(seed).decapsulate(ciphertext).hex())
    elif args.command == "hybrid-encrypt":
        ek = raw_from_spki(bytes.fromhex(args.spki_hex), "ML-KEM-768")
        print(hybrid_encrypt(ek, args.kid, bytes.fromhex(args.plaintext_hex)).hex())
    elif args.command == "hybrid-decrypt":
        _, dk = ML_KEM_768.key_derive(bytes.fromhex(args.seed_hex))
        print(hybrid_decrypt(dk, bytes.fromhex(args.ciphertext_hex)).hex())
    elif args.command == "mlkem-encaps":
        spki = bytes.fromhex(args.spki_hex)
        if args.impl == "kyber":
            shared, ciphertext = KYBER[alg].encaps(raw_from_spki(spki, alg))
        else:
            assert alg in CRYPTOGRAPHY_KEM, f"cryptography has no {alg}"
            shared, ciphertext = serialization.load_der_public_key(spki).encapsulate()
        print(ciphertext.hex())
        print(shared.hex())
    else:
        sys.exit(f"unknown command {args.command}")


if __name__ == "__main__":
    main()
