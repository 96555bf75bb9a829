"""`agentry token`: a person's token for the local stack, signed with the dev key `make run`
uses (or another one)."""

import argparse
import getpass
import re
import time
from pathlib import Path

import jwt

from cli.commands import Commands, add_json_flag
from cli.gateway import CliError
from cli.output import as_json, line
from cli.settings import CliSettings
from dev.secrets import ROOT, DevSecrets
from libs.common.tokens import ROLES, mint

# The gateway's own default (AGENTRY_JWT_AUDIENCE).
AUDIENCE = "agentry-gateway"
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def ttl(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, or plain seconds."""
    match = _TTL.fullmatch(text.strip().lower())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime like 90s, 30m, 12h or 7d")
    return float(match[1]) * _SECONDS[match[2]]


def make_token(args: argparse.Namespace, _: CliSettings) -> int:
    key_file: Path = args.key or DevSecrets(ROOT / ".dev").jwt_private_key
    try:
        private_pem = key_file.read_bytes()
    except OSError as exc:
        hint = "" if args.key else " (`make certs` makes the dev key)"
        raise CliError(f"cannot read the signing key {key_file}: {exc.strerror}{hint}") from None
    subject = args.subject or getpass.getuser()
    try:
        token = mint(private_pem, subject, args.role, args.audience, args.ttl)
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise CliError(f"{key_file} is not an Ed25519 private key in PEM: {exc}") from None
    if args.json:
        as_json(
            {
                "token": token,
                "subject": subject,
                "role": args.role,
                "audience": args.audience,
                "expires_at": int(time.time() + args.ttl),
            }
        )
    else:
        line(token)
    return 0


def register(commands: Commands) -> None:
    token = commands.add_parser(
        "token",
        help="a dev token for the local stack",
        description="Prints a bearer token: export AGENTRY_TOKEN=$(agentry token --role admin)",
    )
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--subject", help="who the token names (default: your user name)")
    token.add_argument("--ttl", type=ttl, default=ttl("12h"), help="lifetime (default 12h)")
    token.add_argument(
        "--key", type=Path, help="the Ed25519 private key (default .dev/keys/jwt-private.pem)"
    )
    token.add_argument("--audience", default=AUDIENCE, help=f"(default {AUDIENCE})")
    add_json_flag(token)
    token.set_defaults(run=make_token)
