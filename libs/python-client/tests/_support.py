"""Shared test helpers: puts libs/python-client on sys.path, makes a throwaway CA with server and client certificates
(``cryptography``), and runs fake keymesh services on 127.0.0.1 over mutual TLS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no INFO lines from grpc core when a test server stops

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

import keymesh  # noqa: E402
from keymesh import pb  # noqa: E402
from keymesh.v1 import crypto_service_pb2_grpc, key_service_pb2_grpc, token_service_pb2_grpc  # noqa: E402


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Optional[x509.Certificate], issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"spiffe://keymesh.local/ns/keymesh/sa/{subject}")]
        if server:
            sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class Tls:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate, as PEM files."""

    _instance: Optional["Tls"] = None

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="keymesh-py-tls-")
        d = Path(self.dir.name)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("keymesh-test-ca", ca_key, None, ca_key, ca=True, server=False)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _cert("crypto-service", server_key, ca, ca_key, ca=False, server=True)
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = _cert("test-app", client_key, ca, ca_key, ca=False, server=False)
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.server_cert_pem = server.public_bytes(serialization.Encoding.PEM)
        self.server_key_pem = _pem_key(server_key)
        self.ca_cert = d / "ca.pem"
        self.client_cert = d / "client.pem"
        self.client_key = d / "client-key.pem"
        self.ca_cert.write_bytes(self.ca_pem)
        self.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
        self.client_key.write_bytes(_pem_key(client_key))

    @classmethod
    def get(cls) -> "Tls":
        if cls._instance is None:
            cls._instance = Tls()
        return cls._instance


def bearer(context: grpc.ServicerContext) -> Optional[str]:
    for key, value in context.invocation_metadata():
        if key == "authorization":
            return value
    return None


class FakeTokenService(token_service_pb2_grpc.TokenServiceServicer):
    """IssueToken answers tokens "tok-1", "tok-2", ... after ``delay`` seconds, each valid ``lifetime`` s."""

    def __init__(self, *, delay: float = 0.0, lifetime: int = 600, secret: str = "s3cret-value") -> None:
        self.delay = delay
        self.lifetime = lifetime
        self.secret = secret
        self.requests: list[Any] = []
        self.lock = threading.Lock()

    def IssueToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        import time

        with self.lock:
            self.requests.append(request)
            n = len(self.requests)
        if bearer(context) is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "IssueToken must carry no token")
        if request.grant_type == pb.GRANT_TYPE_CLIENT_CREDENTIALS and request.client_secret != self.secret:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid client credentials")
        time.sleep(self.delay)
        return pb.IssueTokenResponse(access_token=f"tok-{n}", token_type="Bearer", expires_in_seconds=self.lifetime)


class FakeMesh:
    """A grpc.server on 127.0.0.1:0 with mutual TLS, serving the given servicers for every service."""

    def __init__(
        self,
        *,
        crypto: Optional[crypto_service_pb2_grpc.CryptoServiceServicer] = None,
        keys: Optional[key_service_pb2_grpc.KeyServiceServicer] = None,
        tokens: Optional[FakeTokenService] = None,
        workers: int = 48,
    ) -> None:
        tls = Tls.get()
        self.tokens = tokens or FakeTokenService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        token_service_pb2_grpc.add_TokenServiceServicer_to_server(self.tokens, self.server)
        if crypto is not None:
            crypto_service_pb2_grpc.add_CryptoServiceServicer_to_server(crypto, self.server)
        if keys is not None:
            key_service_pb2_grpc.add_KeyServiceServicer_to_server(keys, self.server)
        credentials = grpc.ssl_server_credentials(
            [(tls.server_key_pem, tls.server_cert_pem)], root_certificates=tls.ca_pem, require_client_auth=True
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    def client(self, credentials: Optional[keymesh.Credentials] = None, **kwargs: Any) -> keymesh.Client:
        tls = Tls.get()
        target = f"127.0.0.1:{self.port}"
        return keymesh.Client(
            keymesh.Endpoints(key_service=target, crypto_service=target, token_service=target),
            ca_cert=tls.ca_cert,
            client_cert=tls.client_cert,
            client_key=tls.client_key,
            credentials=credentials or keymesh.Credentials.client_credentials("app_test", self.tokens.secret),
            **kwargs,
        )

    def stop(self) -> None:
        self.server.stop(grace=None)


def retry_info_trailer(seconds: float, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> tuple[tuple[str, bytes], ...]:
    """A grpc-status-details-bin trailer holding a google.rpc.Status with a RetryInfo of ``seconds``."""
    from google.rpc import error_details_pb2, status_pb2

    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(int(seconds * 1e9))
    status = status_pb2.Status(code=code.value[0], message="busy")
    status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),)


Handler = Callable[[Any, grpc.ServicerContext], Any]
