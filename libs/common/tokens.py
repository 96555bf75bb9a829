"""Bearer tokens, each a short-lived JWT verified with an explicit algorithm list, issuer and
audience.

- People's and programs' tokens (`mint`, `verify`): EdDSA, issued by the operator's key, with
  a role of viewer, operator or admin; the gateway checks them, and relays them to the
  services, which check them again.
- Agent tokens (`mint_agent_token`, `verify_agent_token`): ES256, signed by the calling agent
  with the key of the certificate it presents on the connection, so the callee verifies them
  with the peer certificate's public key: a token is only good over its own agent's mTLS
  connection, for the one callee named in `aud`, for minutes."""

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from libs.common.errors import Unauthenticated

ALGORITHMS = ["EdDSA"]
AGENT_ALGORITHMS = ["ES256"]
ISSUER = "agentry"
ROLES = ("viewer", "operator", "admin")
# An agent token that claims to live longer than this is refused.
MAX_AGENT_TOKEN_TTL_S = 900


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    expires_at: float = 0.0


@dataclass(frozen=True)
class AgentClaims:
    subject: str
    role: str
    expires_at: float


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
    return Principal(subject=str(claims["sub"]), role=role, expires_at=float(claims["exp"]))


def mint_agent_token(
    signing_key: PrivateKeyTypes, identity: str, role: str, audience: str, ttl_s: float
) -> str:
    now = int(time.time())
    claims = {
        "iss": identity,
        "sub": identity,
        "aud": audience,
        "role": role,
        "iat": now,
        "exp": now + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, signing_key, algorithm="ES256")  # type: ignore[arg-type]


def verify_agent_token(token: str, peer_key: PublicKeyTypes, audience: str) -> AgentClaims:
    """Claims of a token signed by the peer certificate's key for `audience`."""
    try:
        claims = jwt.decode(
            token,
            peer_key,  # type: ignore[arg-type]
            algorithms=AGENT_ALGORITHMS,
            audience=audience,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "role"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("agent token expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthenticated(f"agent token is not meant for {audience}") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"invalid agent token: {exc}") from None
    if claims["iss"] != claims["sub"]:
        raise Unauthenticated("agent token issuer and subject differ")
    if claims["exp"] - claims["iat"] > MAX_AGENT_TOKEN_TTL_S:
        raise Unauthenticated("agent token lives too long")
    return AgentClaims(str(claims["sub"]), str(claims["role"]), float(claims["exp"]))
