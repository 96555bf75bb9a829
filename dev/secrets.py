"""`make certs`: the development secrets, made with the `cryptography` package. A dev CA and
one certificate per service identity (in a cert-manager Secret's layout: `ca.crt`, `tls.crt`,
`tls.key`), the key pair that signs people's tokens, and the data keys. Kubernetes gets its
certificates from cert-manager instead; nothing here is committed (`.dev/` is ignored).

    python -m dev.secrets [DIR]     (default .dev)
"""

import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from libs.common.crypto import generate_key_file
from libs.common.tokens import generate_keypair

ROOT = Path(__file__).resolve().parent.parent
# The services' identities: the common name of each one's certificate.
IDENTITIES = ("task-agent", "orchestrator", "analysis", "gateway")
CA_DAYS = 365
CERT_DAYS = 90
# Certificates this close to expiry are made again.
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class DevSecrets:
    root: Path

    def tls_dir(self, identity: str) -> Path:
        return self.root / "certs" / identity

    @property
    def ca_dir(self) -> Path:
        return self.root / "certs" / "ca"

    @property
    def jwt_private_key(self) -> Path:
        return self.root / "keys" / "jwt-private.pem"

    @property
    def jwt_public_key(self) -> Path:
        return self.root / "keys" / "jwt-public.pem"

    @property
    def data_keys(self) -> Path:
        return self.root / "keys" / "data-keys.json"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_ca(directory: Path, name: str = "Agentry dev CA") -> None:
    """A self-signed CA: `ca.crt` and `ca.key` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / "ca.key", key)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue(
    ca_dir: Path,
    identity: str,
    directory: Path,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> None:
    """A certificate for `identity` signed by the CA in `ca_dir`, for both ends of a call
    (server and client auth), valid for the identity's name, its Kubernetes service names
    and localhost."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(identity),
        x509.DNSName(f"{identity}.agentry.svc"),
        x509.DNSName(f"{identity}.agentry.svc.cluster.local"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or _now() + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write_key(directory / "tls.key", key)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())


def _expiring(cert_file: Path) -> bool:
    if not cert_file.exists():
        return True
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.not_valid_after_utc - _now() < RENEW_BEFORE


def ensure(root: Path) -> DevSecrets:
    """Makes whatever is missing or about to expire; keeps the rest."""
    secrets = DevSecrets(root)
    if _expiring(secrets.ca_dir / "ca.crt"):
        make_ca(secrets.ca_dir)
        for identity in IDENTITIES:  # a new CA: every certificate again
            (secrets.tls_dir(identity) / "tls.crt").unlink(missing_ok=True)
    for identity in IDENTITIES:
        if _expiring(secrets.tls_dir(identity) / "tls.crt"):
            issue(secrets.ca_dir, identity, secrets.tls_dir(identity))
    if not secrets.jwt_private_key.exists() or not secrets.jwt_public_key.exists():
        generate_keypair(secrets.jwt_private_key, secrets.jwt_public_key)
    if not secrets.data_keys.exists():
        generate_key_file(secrets.data_keys)
    return secrets


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".dev"
    secrets = ensure(root)
    sys.stdout.write(f"dev CA, certificates and keys in {secrets.root}\n")


if __name__ == "__main__":
    main()
