"""keymesh.local against published vectors: NIST (FIPS 180-4 / FIPS 202 examples), RFC 7693 and RFC 4231."""

from __future__ import annotations

import unittest

import _support  # noqa: F401  (sys.path)

from keymesh import local

ABC = b"abc"
TWO_BLOCKS = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"

HASH_VECTORS = [
    ("sha256", b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("sha256", ABC, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ("SHA-256", TWO_BLOCKS, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    (
        "sha384",
        ABC,
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
    ),
    (
        "HASH_ALGORITHM_SHA512",
        ABC,
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    ),
    ("sha3-256", b"", "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"),
    ("SHA3_256", ABC, "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"),
    (
        "blake2b-512",
        ABC,
        "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
        "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923",
    ),
    (
        5,
        b"",
        "786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419"
        "d25e1031afee585313896444934eb04b903a685b1448b755d56f701afe9be2ce",
    ),
]

# RFC 4231 test cases 1, 2, 3, 6 and 7 (case 5 is a truncated tag, which keymesh never makes).
LARGE_KEY = b"\xaa" * 131
MAC_VECTORS = [
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
    ),
    (
        LARGE_KEY,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    ),
    (
        LARGE_KEY,
        b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to "
        b"be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
        "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
    ),
]


class LocalHashTest(unittest.TestCase):
    def test_published_hash_vectors(self) -> None:
        for algorithm, data, expected in HASH_VECTORS:
            with self.subTest(algorithm=algorithm, data=data[:8]):
                self.assertEqual(local.hash_hex(data, algorithm), expected)
                self.assertEqual(local.hash(data, algorithm), bytes.fromhex(expected))

    def test_million_a(self) -> None:
        # FIPS 180-4 example: one million repetitions of "a".
        self.assertEqual(
            local.hash_hex(b"a" * 1_000_000, "sha256"), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        )

    def test_names_and_enum_numbers(self) -> None:
        for name in ("sha256", "SHA256", "SHA-256", "HASH_ALGORITHM_SHA256", 1):
            self.assertEqual(local.hash(ABC, name), local.hash(ABC, "sha256"))
        for bad in ("md5", "sha1", 0, 6, "", "blake2s-256"):
            with self.assertRaises(ValueError):
                local.hash(ABC, bad)


class LocalMacTest(unittest.TestCase):
    def test_rfc_4231(self) -> None:
        for key, data, sha256, sha512 in MAC_VECTORS:
            with self.subTest(data=data[:16]):
                self.assertEqual(local.mac_hex(data, key, "hmac-sha256"), sha256)
                self.assertEqual(local.mac_hex(data, key, "HMAC-SHA512"), sha512)
                self.assertEqual(local.mac(data, key, "ALGORITHM_HMAC_SHA256"), bytes.fromhex(sha256))
                self.assertEqual(local.mac(data, key, 61), bytes.fromhex(sha512))

    def test_verify_is_exact(self) -> None:
        key = b"k" * 32
        tag = local.mac(b"message", key)
        self.assertEqual(len(tag), 32)
        self.assertTrue(local.verify_mac(b"message", key, tag))
        self.assertFalse(local.verify_mac(b"messagE", key, tag))
        self.assertFalse(local.verify_mac(b"message", key, tag[:16]), "truncated tags are refused")
        self.assertFalse(local.verify_mac(b"message", key, bytes([tag[0] ^ 0x80]) + tag[1:]))
        self.assertEqual(len(local.mac(b"m", b"k" * 64, "hmac-sha512")), 64)
        with self.assertRaises(ValueError):
            local.mac(b"m", key, "hmac-sha1")


if __name__ == "__main__":
    unittest.main()
