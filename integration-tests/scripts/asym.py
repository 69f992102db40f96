#!/usr/bin/env python3
"""Independent asymmetric-crypto helper for keymesh's integration tests.

Built only on the Python standard library and `cryptography`, and sharing no code with keymesh, it checks
keymesh's signatures, public keys and public-key encryption from the outside. All binary values are
lowercase hex on the command line and on stdout. Errors go to stderr with a non-zero exit status
(1 = operation failed or key unreadable, 2 = bad usage, including a key that does not fit the algorithm).

  verify   --public-key PEM_PATH --algorithm ALG (--message-hex HEX | --digest-hex HEX) --signature-hex HEX
           Checks a signature with a SubjectPublicKeyInfo PEM key; prints `valid` or `invalid` (exit 0 both).
  sign     --private-key-hex PKCS8_DER_HEX --algorithm ALG (--message-hex HEX | --digest-hex HEX)
           Prints the signature.
  genkey   --algorithm ALG
           Prints two lines: the PKCS#8 DER private key, then the SubjectPublicKeyInfo DER public key.
  encrypt  --public-key PEM_PATH --algorithm ALG --plaintext-hex HEX [--aad-hex HEX]
           Prints the ciphertext.
  decrypt  --private-key-hex PKCS8_DER_HEX --algorithm ALG --ciphertext-hex HEX [--aad-hex HEX]
           Prints the plaintext.
  mac      --algorithm {hmac-sha256|hmac-sha512} --key-hex HEX --message-hex HEX
           Prints the tag.
  selftest Round trips for every algorithm plus the RFC 9180 and RFC 4231 vectors; prints `ok`.

Algorithms (as keymesh defines them):
  ed25519                          pure Ed25519 (RFC 8032), 64-byte signatures; no digest input.
  ecdsa-p256-sha256, ecdsa-p384-sha384
                                   ECDSA, DER ECDSA-Sig-Value; --digest-hex is the precomputed hash.
  rsa-pss-{2048,3072,4096}-sha256  RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt; e = 65537.
  hpke-x25519-sha256-aes256gcm     RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
                                   AES-256-GCM, single shot, empty info, AAD = --aad-hex;
                                   wire form enc (32 bytes) || AES-GCM ciphertext with its 16-byte tag.
  rsa-oaep-{2048,3072,4096}-sha256 RSAES-OAEP, SHA-256, MGF1-SHA-256; label = AAD, or none if empty.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

# name -> (kind, curve or RSA size, hash)
ALGORITHMS = {
    "ed25519": ("ed25519", None, None),
    "ecdsa-p256-sha256": ("ecdsa", ec.SECP256R1(), hashes.SHA256()),
    "ecdsa-p384-sha384": ("ecdsa", ec.SECP384R1(), hashes.SHA384()),
    **{f"rsa-pss-{n}-sha256": ("rsa-pss", n, hashes.SHA256()) for n in (2048, 3072, 4096)},
    "hpke-x25519-sha256-aes256gcm": ("hpke", None, None),
    **{f"rsa-oaep-{n}-sha256": ("rsa-oaep", n, hashes.SHA256()) for n in (2048, 3072, 4096)},
}
SIGNING = [a for a, (kind, _, _) in ALGORITHMS.items() if kind in ("ed25519", "ecdsa", "rsa-pss")]
ENCRYPTION = [a for a, (kind, _, _) in ALGORITHMS.items() if kind in ("hpke", "rsa-oaep")]
MACS = {"hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}
VECTOR = os.path.join(os.path.dirname(__file__), "../../libs/crypto/vectors/hpke_x25519_sha256_aes256gcm.json")


class UsageError(Exception):
    """Bad input: exit status 2."""


class Failure(Exception):
    """The operation failed (unreadable key, decryption failure): exit status 1."""


def unhex(value, name):
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{name} is not valid hex") from None


def check_key(algorithm, key):
    """Raises UsageError unless `key` (public or private) is the key type, curve and size `algorithm` needs."""
    kind, param, _ = ALGORITHMS[algorithm]
    if kind == "ed25519":
        ok = isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey))
    elif kind == "ecdsa":
        ok = isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and key.curve.name == param.name
    elif kind == "hpke":
        ok = isinstance(key, (x25519.X25519PublicKey, x25519.X25519PrivateKey))
    else:
        ok = isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)) and key.key_size == param
    if not ok:
        raise UsageError(f"the key ({type(key).__name__}, size/curve {describe(key)}) does not fit {algorithm}")
    return key


def describe(key):
    return getattr(getattr(key, "curve", None), "name", None) or getattr(key, "key_size", "-")


def load_public_key(path, algorithm):
    try:
        with open(path, "rb") as f:
            return check_key(algorithm, serialization.load_pem_public_key(f.read()))
    except (OSError, ValueError, TypeError) as e:
        raise Failure(f"cannot read public key {path}: {e}") from None


def load_private_key(der_hex, algorithm):
    try:
        key = serialization.load_der_private_key(unhex(der_hex, "--private-key-hex"), password=None)
    except (ValueError, TypeError) as e:
        raise Failure(f"cannot read PKCS#8 private key: {e}") from None
    return check_key(algorithm, key)


def signature_scheme(algorithm, prehashed):
    """The `cryptography` arguments after the data for sign()/verify(), or () for Ed25519."""
    kind, _, digest = ALGORITHMS[algorithm]
    if kind == "ed25519":
        if prehashed:
            raise UsageError("ed25519 signs the message itself; --digest-hex is not allowed")
        return ()
    hash_arg = utils.Prehashed(digest) if prehashed else digest
    if kind == "ecdsa":
        return (ec.ECDSA(hash_arg),)
    return (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hash_arg)


def check_digest(algorithm, digest):
    size = ALGORITHMS[algorithm][2].digest_size
    if len(digest) != size:
        raise UsageError(f"{algorithm} needs a {size}-byte digest, got {len(digest)} bytes")


def sign(private_key, algorithm, data, prehashed=False):
    scheme = signature_scheme(algorithm, prehashed)
    if prehashed:
        check_digest(algorithm, data)
    return private_key.sign(data, *scheme)


def verify(public_key, algorithm, data, signature, prehashed=False):
    scheme = signature_scheme(algorithm, prehashed)
    if prehashed:
        check_digest(algorithm, data)
    try:
        public_key.verify(signature, data, *scheme)
        return True
    except InvalidSignature:
        return False


def genkey(algorithm):
    kind, param, _ = ALGORITHMS[algorithm]
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa":
        return ec.generate_private_key(param)
    if kind == "hpke":
        return x25519.X25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=param)


# HPKE (RFC 9180) base mode for DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, sections 4 and 5.
# cryptography's own hpke.Suite takes no AAD, so it cannot express keymesh's use.
KEM_ID = b"KEM\x00\x20"
HPKE_ID = b"HPKE\x00\x20\x00\x01\x00\x02"


def labeled_extract(salt, suite_id, label, ikm):
    return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def labeled_expand(prk, suite_id, label, info, length):
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def raw(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_schedule(dh, enc, pk_rm, info):
    """Returns (key, base_nonce) from the X25519 shared value, via ExtractAndExpand and KeySchedule (mode 0)."""
    eae_prk = labeled_extract(b"", KEM_ID, b"eae_prk", dh)
    shared_secret = labeled_expand(eae_prk, KEM_ID, b"shared_secret", enc + pk_rm, 32)
    context = (b"\x00" + labeled_extract(b"", HPKE_ID, b"psk_id_hash", b"")
               + labeled_extract(b"", HPKE_ID, b"info_hash", info))
    secret = labeled_extract(shared_secret, HPKE_ID, b"secret", b"")
    return (labeled_expand(secret, HPKE_ID, b"key", context, 32),
            labeled_expand(secret, HPKE_ID, b"base_nonce", context, 12))


def hpke_seal(pk_r, plaintext, aad, info=b"", sk_e=None):
    sk_e = sk_e or x25519.X25519PrivateKey.generate()
    enc = raw(sk_e.public_key())
    key, nonce = key_schedule(sk_e.exchange(pk_r), enc, raw(pk_r), info)
    return enc + AESGCM(key).encrypt(nonce, plaintext, aad)


def hpke_open(sk_r, sealed, aad, info=b""):
    if len(sealed) < 32 + 16:
        raise Failure("HPKE ciphertext too short")
    enc, ciphertext = sealed[:32], sealed[32:]
    key, nonce = key_schedule(sk_r.exchange(x25519.X25519PublicKey.from_public_bytes(enc)),
                              enc, raw(sk_r.public_key()), info)
    return AESGCM(key).decrypt(nonce, ciphertext, aad)


def oaep(aad):
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=aad or None)


def encrypt(public_key, algorithm, plaintext, aad=b""):
    if ALGORITHMS[algorithm][0] == "hpke":
        return hpke_seal(public_key, plaintext, aad)
    return public_key.encrypt(plaintext, oaep(aad))


def decrypt(private_key, algorithm, ciphertext, aad=b""):
    try:
        if ALGORITHMS[algorithm][0] == "hpke":
            return hpke_open(private_key, ciphertext, aad)
        return private_key.decrypt(ciphertext, oaep(aad))
    except (InvalidTag, ValueError):
        raise Failure("decryption failed") from None


def mac(algorithm, key, message):
    return hmac.new(key, message, MACS[algorithm]).digest()


def selftest():
    for algorithm in ALGORITHMS:
        private_key = genkey(algorithm)
        public_key = check_key(algorithm, private_key.public_key())
        if algorithm in SIGNING:
            message = b"keymesh asym selftest " + algorithm.encode()
            signature = sign(private_key, algorithm, message)
            assert verify(public_key, algorithm, message, signature), algorithm
            assert not verify(public_key, algorithm, message + b"!", signature), algorithm
            if ALGORITHMS[algorithm][0] != "ed25519":
                digest = hashes.Hash(ALGORITHMS[algorithm][2])
                digest.update(message)
                digest = digest.finalize()
                assert verify(public_key, algorithm, digest, signature, prehashed=True), algorithm
                assert verify(public_key, algorithm, message, sign(private_key, algorithm, digest, True)), algorithm
        else:
            for aad in (b"", b"context"):
                sealed = encrypt(public_key, algorithm, b"secret " + algorithm.encode(), aad)
                assert decrypt(private_key, algorithm, sealed, aad) == b"secret " + algorithm.encode(), algorithm
                try:
                    decrypt(private_key, algorithm, sealed, aad + b"x")
                    raise AssertionError(f"{algorithm}: wrong AAD accepted")
                except Failure:
                    pass
    with open(VECTOR) as f:
        v = {k: bytes.fromhex(x) if isinstance(x, str) else x for k, x in json.load(f)[0].items()}
    sk_r = x25519.X25519PrivateKey.from_private_bytes(v["skRm"])
    sk_e = x25519.X25519PrivateKey.from_private_bytes(v["skEm"])
    assert raw(sk_r.public_key()) == v["pkRm"] and raw(sk_e.public_key()) == v["enc"]
    assert key_schedule(sk_e.exchange(sk_r.public_key()), v["enc"], v["pkRm"], v["info"]) == (v["key"], v["base_nonce"])
    first = {k: bytes.fromhex(x) for k, x in v["encryptions"][0].items()}
    sealed = hpke_seal(sk_r.public_key(), first["pt"], first["aad"], v["info"], sk_e)
    assert sealed == v["enc"] + first["ct"], "RFC 9180 vector: seal"
    assert hpke_open(sk_r, sealed, first["aad"], v["info"]) == first["pt"], "RFC 9180 vector: open"
    rfc4231_case2 = {
        "hmac-sha256": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "hmac-sha512": "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                       "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    }
    for algorithm, tag in rfc4231_case2.items():
        assert mac(algorithm, b"Jefe", b"what do ya want for nothing?").hex() == tag, f"RFC 4231 case 2, {algorithm}"


def build_parser():
    parser = argparse.ArgumentParser(prog="asym.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, needs_key in (("verify", "--public-key"), ("sign", "--private-key-hex")):
        p = sub.add_parser(name)
        p.add_argument(needs_key, required=True)
        p.add_argument("--algorithm", required=True, choices=SIGNING)
        data = p.add_mutually_exclusive_group(required=True)
        data.add_argument("--message-hex")
        data.add_argument("--digest-hex")
        if name == "verify":
            p.add_argument("--signature-hex", required=True)
    sub.add_parser("genkey").add_argument("--algorithm", required=True, choices=list(ALGORITHMS))
    for name, needs_key, data in (("encrypt", "--public-key", "--plaintext-hex"),
                                  ("decrypt", "--private-key-hex", "--ciphertext-hex")):
        p = sub.add_parser(name)
        p.add_argument(needs_key, required=True)
        p.add_argument("--algorithm", required=True, choices=ENCRYPTION)
        p.add_argument(data, required=True)
        p.add_argument("--aad-hex", default="")
    p = sub.add_parser("mac")
    p.add_argument("--algorithm", required=True, choices=list(MACS))
    p.add_argument("--key-hex", required=True)
    p.add_argument("--message-hex", required=True)
    sub.add_parser("selftest")
    return parser


def run(args):
    alg = args.algorithm if args.command != "selftest" else None
    if args.command in ("sign", "verify"):
        prehashed = args.digest_hex is not None
        data = unhex(args.digest_hex if prehashed else args.message_hex, "the message/digest")
        if args.command == "sign":
            return sign(load_private_key(args.private_key_hex, alg), alg, data, prehashed).hex()
        signature = unhex(args.signature_hex, "--signature-hex")
        ok = verify(load_public_key(args.public_key, alg), alg, data, signature, prehashed)
        return "valid" if ok else "invalid"
    if args.command == "genkey":
        key = genkey(alg)
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"{pkcs8.hex()}\n{spki.hex()}"
    if args.command == "encrypt":
        plaintext, aad = unhex(args.plaintext_hex, "--plaintext-hex"), unhex(args.aad_hex, "--aad-hex")
        return encrypt(load_public_key(args.public_key, alg), alg, plaintext, aad).hex()
    if args.command == "decrypt":
        ciphertext, aad = unhex(args.ciphertext_hex, "--ciphertext-hex"), unhex(args.aad_hex, "--aad-hex")
        return decrypt(load_private_key(args.private_key_hex, alg), alg, ciphertext, aad).hex()
    if args.command == "mac":
        return mac(alg, unhex(args.key_hex, "--key-hex"), unhex(args.message_hex, "--message-hex")).hex()
    selftest()
    return "ok"


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except UsageError as e:
        print(f"asym.py {args.command}: {e}", file=sys.stderr)
        return 2
    except Failure as e:
        print(f"asym.py {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
