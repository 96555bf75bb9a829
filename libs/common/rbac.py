"""The RBAC policy (`rbac.toml` beside this module, or the file settings name): which roles
may call which RPCs and REST routes. Deny by default."""

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_POLICY = Path(__file__).with_name("rbac.toml")


@dataclass(frozen=True)
class Role:
    rpc: frozenset[str] = frozenset()
    http: frozenset[str] = frozenset()
    relays_users: bool = False


@dataclass
class Policy:
    identities: dict[str, str]
    roles: dict[str, Role]
    _decisions: dict[tuple[str, str], bool] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = DEFAULT_POLICY) -> "Policy":
        raw = tomllib.loads(path.read_text())
        declared = raw.get("roles", {})

        def grants(name: str, seen: tuple[str, ...] = ()) -> tuple[set[str], set[str]]:
            if name in seen:
                raise ValueError(f"{path}: role {name} includes itself")
            if name not in declared:
                raise ValueError(f"{path}: unknown role {name}")
            body = declared[name]
            rpc, http = set(body.get("rpc", [])), set(body.get("http", []))
            for included in body.get("includes", []):
                more_rpc, more_http = grants(included, (*seen, name))
                rpc |= more_rpc
                http |= more_http
            return rpc, http

        roles = {}
        for name, body in declared.items():
            rpc, http = grants(name)
            roles[name] = Role(frozenset(rpc), frozenset(http), bool(body.get("relays_users")))
        identities = dict(raw.get("identities", {}))
        for identity, role in identities.items():
            if role not in roles:
                raise ValueError(f"{path}: identity {identity} has unknown role {role}")
        return cls(identities, roles)

    def role_of(self, identity: str) -> str | None:
        return self.identities.get(identity)

    def relays_users(self, role: str) -> bool:
        granted = self.roles.get(role)
        return granted is not None and granted.relays_users

    def allows_rpc(self, role: str, method: str) -> bool:
        """`method` as gRPC names it on the wire: "/package.Service/Method"."""
        key = (role, method)
        decision = self._decisions.get(key)
        if decision is None:
            granted = self.roles.get(role)
            name = method.lstrip("/")
            decision = granted is not None and any(
                fnmatch.fnmatchcase(name, pattern) for pattern in granted.rpc
            )
            self._decisions[key] = decision
        return decision

    def allows_http(self, role: str, method: str, route: str) -> bool:
        granted = self.roles.get(role)
        return granted is not None and f"{method} {route}" in granted.http
