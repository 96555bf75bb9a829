"""Bearer tokens: short-lived JWTs signed with an asymmetric key (EdDSA), verified with an
explicit algorithm list, issuer and audience."""

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.common.errors import Unauthenticated

ALGORITHMS = ["EdDSA"]
ISSUER = "agentry"
ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 key pair in PEM files; the private one readable by its owner only."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def mint(private_pem: bytes, subject: str, role: str, audience: str, ttl_s: float) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": audience,
        "sub": subject,
        "role": role,
        "iat": now,
        "exp": now + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, private_pem, algorithm="EdDSA")


def verify(token: str, public_pem: bytes, audience: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            public_pem,
            algorithms=ALGORITHMS,
            audience=audience,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"invalid token: {exc}") from None
    role = claims.get("role")
    if role not in ROLES:
        raise Unauthenticated(f"token carries an unknown role {role!r}")
    return Principal(subject=str(claims["sub"]), role=role)
