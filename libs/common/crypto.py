"""Encryption at rest: AES-256-GCM under a keyring of named data keys, any of which reads
and one of which writes.

A stored value is `MAGIC | len(kid) | kid | nonce | ciphertext+tag`, so each value names
the key that sealed it and keys can be rotated one value at a time. JSON never starts with
a NUL byte: a value without MAGIC is plaintext written while encryption was off, and reads
as it is. The caller's associated data (for example b"tasks.payload:" + the row's id) binds
a value to its row and field, so a ciphertext copied elsewhere does not open.

The key file: {"write": "<kid>", "keys": {"<kid>": "<base64 of 32 bytes>"}}. Neither keys
nor plaintext ever reach a log line or an error message; key ids do."""

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from libs.common.errors import FailedPrecondition
from libs.common.settings import ServiceSettings

log = structlog.get_logger(__name__)

MAGIC = b"\x00ag1"
KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Undecryptable(FailedPrecondition):
    """A stored value this keyring cannot open: its key is not held, or it was altered."""


class Keyring:
    """Data keys by id; `write` seals new values. Without a write key the keyring is
    disabled: it stores plaintext and refuses to read ciphertext."""

    def __init__(self, keys: Mapping[str, bytes], write: str | None) -> None:
        for kid, key in keys.items():
            if not _KID.fullmatch(kid):
                raise ValueError(f"data key id {kid!r} is not 1-64 of [A-Za-z0-9._-]")
            if len(key) != KEY_BYTES:
                raise ValueError(f"data key {kid!r} is not {KEY_BYTES} bytes")
        if write is not None and write not in keys:
            raise ValueError(f"the write key {write!r} is not among the keys")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._write = write
        self._prefix = _prefix(write) if write is not None else b""

    @classmethod
    def disabled(cls) -> "Keyring":
        return cls({}, None)

    @classmethod
    def from_file(cls, path: Path) -> "Keyring":
        write, keys = _read_key_file(path)
        return cls(keys, write)

    @property
    def enabled(self) -> bool:
        return self._write is not None

    @property
    def write_key_id(self) -> str | None:
        return self._write

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ciphers)

    @property
    def write_prefix(self) -> bytes:
        """How every value this keyring seals starts (empty when disabled)."""
        return self._prefix

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        if self._write is None:
            return plaintext
        nonce = os.urandom(NONCE_BYTES)
        return self._prefix + nonce + self._ciphers[self._write].encrypt(nonce, plaintext, aad)

    def decrypt(self, value: bytes, aad: bytes) -> bytes:
        if not value.startswith(MAGIC):
            return value
        start = len(MAGIC) + 1
        end = start + value[len(MAGIC)] if len(value) >= start else len(value)
        kid = value[start:end].decode("ascii", errors="replace")
        if len(value) < end + NONCE_BYTES + _TAG_BYTES:
            raise Undecryptable(f"a stored value sealed with data key {kid!r} is truncated")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            if self._write is None:
                raise Undecryptable(
                    f"a stored value is sealed with data key {kid!r}, but encryption at rest "
                    "is disabled on this service"
                )
            raise Undecryptable(
                f"a stored value is sealed with data key {kid!r}, which this service does not hold"
            )
        try:
            return cipher.decrypt(value[end : end + NONCE_BYTES], value[end + NONCE_BYTES :], aad)
        except InvalidTag:
            raise Undecryptable(
                f"a stored value sealed with data key {kid!r} fails its integrity check "
                "(altered, or moved from another row or field)"
            ) from None


def keyring_from_settings(settings: ServiceSettings) -> Keyring:
    """The keyring a service starts with; it does not start without one, or without
    encryption explicitly disabled."""
    if settings.encryption_disabled:
        log.warning(
            "ENCRYPTION AT REST IS DISABLED: payloads and results are stored in clear, and "
            "values already encrypted cannot be read (AGENTRY_ENCRYPTION_DISABLED=true)"
        )
        return Keyring.disabled()
    if settings.data_keys_file is None:
        raise SystemExit(
            "AGENTRY_DATA_KEYS_FILE is not set: payloads and results are encrypted at rest "
            "with the keys it holds (or set AGENTRY_ENCRYPTION_DISABLED=true, explicitly)"
        )
    try:
        keyring = Keyring.from_file(settings.data_keys_file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"AGENTRY_DATA_KEYS_FILE {settings.data_keys_file}: {exc}") from None
    log.info("encryption at rest", write_key=keyring.write_key_id, read_keys=keyring.key_ids)
    return keyring


def generate_key_file(path: Path) -> str:
    """A new key file (mode 0600) holding one fresh key, which writes; answers its id.
    Refuses to overwrite an existing file: its keys may be the only way to read data."""
    kid = _new_kid()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(path, kid, {kid: AESGCM.generate_key(bit_length=256)})
    return kid


def add_key(path: Path) -> str:
    """Adds a fresh key to the file, for reading only: once every process has it, `use_key`
    makes it the writer (so no process meets a value under a key it does not hold yet).
    Answers the new key's id."""
    write, keys = _read_key_file(path)
    kid = _new_kid()
    _replace(path, write, {**keys, kid: AESGCM.generate_key(bit_length=256)})
    return kid


def use_key(path: Path, kid: str) -> None:
    """Makes `kid`, already in the file, the write key."""
    _, keys = _read_key_file(path)
    if kid not in keys:
        raise ValueError(f"no data key {kid!r} in {path}")
    _replace(path, kid, keys)


def remove_key(path: Path, kid: str) -> None:
    """Drops a key no value uses any more (after a rotation); never the write key."""
    write, keys = _read_key_file(path)
    if kid == write:
        raise ValueError(f"data key {kid!r} is the write key; add another one first")
    if kid not in keys:
        raise ValueError(f"no data key {kid!r} in {path}")
    _replace(path, write, {k: v for k, v in keys.items() if k != kid})


def _prefix(kid: str) -> bytes:
    encoded = kid.encode("ascii")
    return MAGIC + bytes([len(encoded)]) + encoded


def _new_kid() -> str:
    # Dated, so an operator sees at a glance which key is older.
    return f"{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


def _read_key_file(path: Path) -> tuple[str, dict[str, bytes]]:
    try:
        data: Any = json.loads(path.read_bytes())
    except json.JSONDecodeError:
        raise ValueError("the key file is not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
        raise ValueError('the key file is not {"write": kid, "keys": {kid: base64}}')
    write = data.get("write")
    if not isinstance(write, str) or write not in data["keys"]:
        raise ValueError('the key file\'s "write" does not name one of its keys')
    keys = {}
    for kid, encoded in data["keys"].items():
        try:
            keys[kid] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError):
            raise ValueError(f"data key {kid!r} is not base64") from None
    Keyring(keys, write)  # the same checks as at start-up, before anything is written
    return write, keys


def _key_file_text(write: str, keys: Mapping[str, bytes]) -> bytes:
    data = {"write": write, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}}
    return json.dumps(data, indent=2).encode() + b"\n"


def _write_new(path: Path, write: str, keys: Mapping[str, bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(_key_file_text(write, keys))
        out.flush()
        os.fsync(out.fileno())


def _replace(path: Path, write: str, keys: Mapping[str, bytes]) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of either."""
    staged = path.with_name(f".{path.name}.new")
    staged.unlink(missing_ok=True)
    _write_new(staged, write, keys)
    os.replace(staged, path)
