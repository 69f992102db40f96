"""moto_server for the AWS KMS backend tests, with the key-state checks AWS KMS makes and moto leaves out.

AWS refuses Encrypt and Decrypt under a disabled key (DisabledException) and under a key pending deletion
(KMSInvalidStateException); moto 5 records the state but still encrypts. The patch below adds exactly those
two refusals, with AWS's error codes, so the backend's handling of a disabled key is tested against the
answers AWS gives. Everything else is moto as shipped.

Usage: python3 moto_kms.py PORT
"""

import sys

from moto.core.exceptions import JsonRESTError
from moto.kms import models
from moto.server import main


def _refuse_unless_enabled(backend, key_id):
    key = backend.keys[backend.any_id_to_key_id(key_id)]
    if key.key_state == "Disabled":
        raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
    if key.key_state != "Enabled":
        raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is {key.key_state}.")


_encrypt = models.KmsBackend.encrypt
_decrypt = models.KmsBackend.decrypt


def encrypt(self, key_id, plaintext, encryption_context):
    _refuse_unless_enabled(self, key_id)
    return _encrypt(self, key_id, plaintext, encryption_context)


def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
    plaintext, arn = _decrypt(self, ciphertext_blob, encryption_context, key_id)
    _refuse_unless_enabled(self, arn)
    return plaintext, arn


models.KmsBackend.encrypt = encrypt
models.KmsBackend.decrypt = decrypt

if __name__ == "__main__":
    main(["-H", "127.0.0.1", "-p", sys.argv[1]])
