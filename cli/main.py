"""`agentry`: the operator's command line.

    agentry audit verify          the gateway checks the audit chain (admin token)
    agentry keys new              a fresh data key becomes the write key (older ones still read)
    agentry keys rotate           re-encrypts stored values under the write key, in batches

REST commands read AGENTRY_URL and AGENTRY_TOKEN; the key commands run where a task agent
would (DATABASE_URL, AGENTRY_DATA_KEYS_FILE), as a one-off job beside the live agents."""

import argparse
import asyncio
import getpass
import json
import sys
from typing import Any

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.audit import AuditEntry, AuditLog
from libs.common.crypto import add_key, keyring_from_settings
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


def keys_new(_: argparse.Namespace) -> int:
    settings = TaskAgentSettings()
    if settings.data_keys_file is None:
        raise SystemExit("AGENTRY_DATA_KEYS_FILE is not set")
    kid = add_key(settings.data_keys_file)
    _out(f"new write key {kid} in {settings.data_keys_file}; restart the services to use it")
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
    keys.add_parser("new", help="add a write key").set_defaults(run=keys_new)
    rotating = keys.add_parser("rotate", help="re-encrypt under the write key")
    rotating.add_argument("--batch-size", type=int, default=500)
    rotating.set_defaults(run=keys_rotate)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
