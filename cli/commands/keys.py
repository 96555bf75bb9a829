"""`agentry keys new|use|rotate`: the data keys, run where a task agent would
(DATABASE_URL, AGENTRY_DATA_KEYS_FILE), as a one-off job beside the live agents.

Rotation: `keys new`, restart the services (all now read the new key), `keys use KID`,
restart again (all now write with it), `keys rotate`; then the old key may leave the file."""

import argparse
import asyncio
import getpass
import json
from pathlib import Path

from cli.commands import Commands
from cli.gateway import CliError
from cli.output import line
from cli.settings import CliSettings

# The database and task agent modules are imported by the commands that use them: they take
# a second to load, which every REST command would pay otherwise.


def _keys_file() -> Path:
    from services.task_agent.settings import TaskAgentSettings

    path = TaskAgentSettings().data_keys_file
    if path is None:
        raise CliError("AGENTRY_DATA_KEYS_FILE is not set")
    return path


def keys_new(_: argparse.Namespace, __: CliSettings) -> int:
    from libs.common.crypto import add_key

    path = _keys_file()
    kid = add_key(path)
    line(f"new key {kid} in {path}, for reading; restart the services, then `keys use {kid}`")
    return 0


def keys_use(args: argparse.Namespace, _: CliSettings) -> int:
    from libs.common.crypto import use_key

    path = _keys_file()
    use_key(path, args.kid)
    line(f"{args.kid} now writes; restart the services, then `keys rotate`")
    return 0


async def _rotate(batch_size: int) -> int:
    from libs.common.audit import AuditEntry, AuditLog
    from libs.common.crypto import keyring_from_settings
    from libs.common.db import create_engine
    from services.task_agent.key_rotation import rotate
    from services.task_agent.settings import TaskAgentSettings

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


def keys_rotate(args: argparse.Namespace, _: CliSettings) -> int:
    rewritten = asyncio.run(_rotate(args.batch_size))
    line(f"{rewritten} stored values re-encrypted under the write key")
    return 0


def register(commands: Commands) -> None:
    keys = commands.add_parser(
        "keys",
        help="data keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(metavar="COMMAND", required=True)
    keys.add_parser("new", help="add a key, for reading").set_defaults(run=keys_new)
    using = keys.add_parser("use", help="make a key the one that writes")
    using.add_argument("kid")
    using.set_defaults(run=keys_use)
    rotating = keys.add_parser("rotate", help="re-encrypt under the write key")
    rotating.add_argument("--batch-size", type=int, default=500)
    rotating.set_defaults(run=keys_rotate)
