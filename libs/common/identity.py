"""Who this process is on the wire: the certificate it presents on both ends of every call
(mTLS), and the short-lived token it signs with that certificate's key for each callee.

The files are a cert-manager Secret's layout (`ca.crt`, `tls.crt`, `tls.key` in one
directory) and are read again when they change: a rotated certificate is served from the
next handshake on, without a restart."""

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from libs.common.tokens import mint_agent_token

# An agent token lives this long, and is signed again this long before it expires.
TOKEN_TTL_S = 300
TOKEN_RENEW_S = 60


@dataclass(frozen=True)
class TlsMaterial:
    ca: bytes
    cert: bytes
    key: bytes
    name: str
    signing_key: PrivateKeyTypes


def common_name(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _load(directory: Path) -> TlsMaterial:
    ca = (directory / "ca.crt").read_bytes()
    cert = (directory / "tls.crt").read_bytes()
    key = (directory / "tls.key").read_bytes()
    return TlsMaterial(ca, cert, key, common_name(cert), load_pem_private_key(key, None))


class AgentIdentity:
    """The certificate and key of this process, reloaded when the files change."""

    def __init__(self, tls_dir: Path, role: str) -> None:
        self._dir = tls_dir
        self.role = role
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._material = _load(tls_dir)
        self.name = self._material.name
        self._tokens: dict[str, tuple[float, str]] = {}

    def _file_stamp(self) -> tuple[float, ...]:
        return tuple(
            os.stat(self._dir / name).st_mtime for name in ("ca.crt", "tls.crt", "tls.key")
        )

    def material(self) -> TlsMaterial:
        """The current files; read again (and tokens signed again) when they changed."""
        stamp = self._file_stamp()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._material = _load(self._dir)
                    self._tokens.clear()
                    self._stamp = stamp
        return self._material

    @property
    def generation(self) -> tuple[float, ...]:
        """Changes whenever the files do: clients open new channels on a new generation."""
        self.material()
        return self._stamp

    def server_credentials(self) -> grpc.ServerCredentials:
        """Requires a client certificate signed by our CA; serves the newest files from the
        next handshake on."""
        served = self._stamp

        def config() -> grpc.ServerCertificateConfiguration:
            material = self.material()
            return grpc.ssl_server_certificate_configuration(
                [(material.key, material.cert)], root_certificates=material.ca
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            if self.generation == served:
                return None
            served = self._stamp
            return config()

        return grpc.dynamic_ssl_server_credentials(
            config(), fetch, require_client_authentication=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        material = self.material()
        return grpc.ssl_channel_credentials(
            root_certificates=material.ca,
            private_key=material.key,
            certificate_chain=material.cert,
        )

    def token_for(self, audience: str) -> str:
        """A token naming this agent, for one callee, signed with the certificate's key."""
        material = self.material()
        now = time.time()
        cached = self._tokens.get(audience)
        if cached is not None and cached[0] - now > TOKEN_RENEW_S:
            return cached[1]
        token = mint_agent_token(material.signing_key, self.name, self.role, audience, TOKEN_TTL_S)
        self._tokens[audience] = (now + TOKEN_TTL_S, token)
        return token
