"""`agentry`: the operator's command line.

    agentry audit verify          the gateway checks the audit chain (admin token)
    agentry keys new              adds a fresh data key, for reading only
    agentry keys use KID          makes that key the one that writes
    agentry keys rotate           re-encrypts stored values under the write key, in batches

Rotation: `keys new`, restart the services (all now read the new key), `keys use KID`,
restart again (all now write with it), `keys rotate`; then the old key may leave the file.

REST commands read AGENTRY_URL and AGENTRY_TOKEN; the key commands run where a task agent
would (DATABASE_URL, AGENTRY_DATA_KEYS_FILE), as a one-off job beside the live agents."""

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.audit import AuditEntry, AuditLog
from libs.common.crypto import add_key, keyring_from_settings, use_key
from libs.common.db import create_engine
from services.task_agent.key_rotation import rotate
from services.task_agent.settings import TaskAgentSettings


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTRY_", extra="ignore")

    url: str = "http://127.0.0.1:8080"
    token: str = ""


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _gateway(path: str) -> Any:
    settings = CliSettings()
    if not settings.token:
        raise SystemExit("AGENTRY_TOKEN is not set: the gateway needs a bearer token")
    reply = httpx.get(
        f"{settings.url}{path}",
        headers={"Authorization": f"Bearer {settings.token}"},
        timeout=300.0,
    )
    if reply.status_code >= 400:
        problem = reply.json() if reply.headers.get("content-type", "").endswith("json") else {}
        raise SystemExit(f"{reply.status_code}: {problem.get('detail') or reply.text}")
    return reply.json()


def audit_verify(_: argparse.Namespace) -> int:
    result = _gateway("/v1/audit/verify")
    if result["ok"]:
        _out(f"audit log intact: {result['checked']} rows, head {result['head_hash']}")
        return 0
    _out(f"AUDIT LOG TAMPERED: {len(result['problems'])} problem(s) in {result['checked']} rows")
    for problem in result["problems"]:
        _out(f"  row {problem['id']}: {problem['problem']}")
    return 1


def _keys_file() -> Path:
    path = TaskAgentSettings().data_keys_file
    if path is None:
        raise SystemExit("AGENTRY_DATA_KEYS_FILE is not set")
    return path


def keys_new(_: argparse.Namespace) -> int:
    path = _keys_file()
    kid = add_key(path)
    _out(f"new key {kid} in {path}, for reading; restart the services, then `keys use {kid}`")
    return 0


def keys_use(args: argparse.Namespace) -> int:
    path = _keys_file()
    use_key(path, args.kid)
    _out(f"{args.kid} now writes; restart the services, then `keys rotate`")
    return 0


async def _rotate(batch_size: int) -> int:
    settings = TaskAgentSettings()
    keyring = keyring_from_settings(settings)
    rewritten = await rotate(settings.database_url, keyring, batch_size)
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        await AuditLog(engine).record(
            AuditEntry(
                principal=getpass.getuser(),
                role="admin",
                action="agentry keys rotate",
                resource=f"write_key={keyring.write_key_id}",
                outcome="OK",
                detail=json.dumps({"rewritten": rewritten}),
            )
        )
    finally:
        await engine.dispose()
    return rewritten


def keys_rotate(args: argparse.Namespace) -> int:
    rewritten = asyncio.run(_rotate(args.batch_size))
    _out(f"{rewritten} stored values re-encrypted under the write key")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentry", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True)
    audit = commands.add_parser("audit", help="the audit log").add_subparsers(required=True)
    audit.add_parser("verify", help="check the hash chain").set_defaults(run=audit_verify)
    keys = commands.add_parser("keys", help="data keys").add_subparsers(required=True)
    keys.add_parser("new", help="add a key, for reading").set_defaults(run=keys_new)
    using = keys.add_parser("use", help="make a key the one that writes")
    using.add_argument("kid")
    using.set_defaults(run=keys_use)
    rotating = keys.add_parser("rotate", help="re-encrypt under the write key")
    rotating.add_argument("--batch-size", type=int, default=500)
    rotating.set_defaults(run=keys_rotate)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
