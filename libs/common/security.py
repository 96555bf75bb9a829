"""The security a process runs with, from its settings: its identity on the wire, the RBAC
policy, and the key that verifies people's tokens. On unless a setting turns it off."""

from dataclasses import dataclass

import structlog

from libs.common.call_guard import Authenticator
from libs.common.identity import AgentIdentity, common_name
from libs.common.rbac import Policy
from libs.common.settings import ServiceSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Security:
    # None: mTLS and agent tokens were turned off.
    identity: AgentIdentity | None
    policy: Policy
    user_key: bytes | None
    user_audience: str

    def authenticator(self) -> Authenticator | None:
        if self.identity is None:
            return None
        return Authenticator(self.identity.name, self.policy, self.user_key, self.user_audience)


def load_security(settings: ServiceSettings) -> Security:
    policy = Policy.load(settings.rbac_policy_file)
    user_key = settings.jwt_public_key_file.read_bytes() if settings.jwt_public_key_file else None
    if settings.tls_disabled:
        log.warning(
            "mTLS AND AGENT TOKENS ARE DISABLED: calls between services are plaintext and "
            "unauthenticated (AGENTRY_TLS_DISABLED)"
        )
        return Security(None, policy, user_key, settings.jwt_audience)
    if settings.tls_dir is None:
        raise SystemExit(
            "AGENTRY_TLS_DIR is not set: it names the directory with this service's ca.crt, "
            "tls.crt and tls.key (`make certs` makes dev ones), or set "
            "AGENTRY_TLS_DISABLED=true, explicitly"
        )
    name = common_name((settings.tls_dir / "tls.crt").read_bytes())
    role = policy.role_of(name)
    if role is None:
        raise SystemExit(
            f"the certificate in {settings.tls_dir} names {name!r}, which the RBAC policy "
            f"{settings.rbac_policy_file} gives no role"
        )
    return Security(AgentIdentity(settings.tls_dir, role), policy, user_key, settings.jwt_audience)
