"""The keyring: what it seals opens only with the right key and the right associated data,
plaintext from before encryption reads as it is, and nothing secret leaks into errors."""

import json

import pytest
from structlog.testing import capture_logs

from libs.common.crypto import MAGIC, Keyring, Undecryptable, keyring_from_settings
from libs.common.errors import FailedPrecondition
from libs.common.settings import ServiceSettings

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(32, 64))
PLAINTEXT = json.dumps({"card": "4111 1111 1111 1111"}).encode()
AAD = b"tasks.payload:row-1"


def _keyring(write: str = "new", **keys: bytes) -> Keyring:
    return Keyring(keys or {"old": OLD_KEY, "new": NEW_KEY}, write)


def test_a_sealed_value_opens_to_its_plaintext_and_names_its_key() -> None:
    keyring = _keyring()

    sealed = keyring.encrypt(PLAINTEXT, AAD)

    assert sealed.startswith(MAGIC + b"\x03new")
    assert PLAINTEXT not in sealed
    assert keyring.decrypt(sealed, AAD) == PLAINTEXT


def test_sealing_the_same_plaintext_twice_gives_different_values() -> None:
    keyring = _keyring()

    assert keyring.encrypt(PLAINTEXT, AAD) != keyring.encrypt(PLAINTEXT, AAD)


def test_every_key_reads_but_only_the_write_key_writes() -> None:
    under_old = _keyring(write="old").encrypt(PLAINTEXT, AAD)
    keyring = _keyring(write="new")

    assert keyring.decrypt(under_old, AAD) == PLAINTEXT
    assert keyring.encrypt(PLAINTEXT, AAD).startswith(keyring.write_prefix)
    assert keyring.write_prefix == MAGIC + b"\x03new"


def test_a_value_under_a_key_not_held_is_refused_naming_only_the_key_id() -> None:
    sealed = _keyring(write="old").encrypt(PLAINTEXT, AAD)
    keyring = _keyring(write="new", new=NEW_KEY)

    with pytest.raises(Undecryptable) as refused:
        keyring.decrypt(sealed, AAD)

    message = str(refused.value)
    assert "'old'" in message
    assert "4111" not in message and OLD_KEY.hex() not in message
    assert isinstance(refused.value, FailedPrecondition)


def test_an_altered_value_is_refused() -> None:
    keyring = _keyring()
    sealed = bytearray(keyring.encrypt(PLAINTEXT, AAD))
    sealed[-1] ^= 1

    with pytest.raises(Undecryptable, match=r"'new'.*integrity"):
        keyring.decrypt(bytes(sealed), AAD)


def test_a_value_moved_to_another_row_or_field_is_refused() -> None:
    keyring = _keyring()
    sealed = keyring.encrypt(PLAINTEXT, AAD)

    for elsewhere in (b"tasks.payload:row-2", b"tasks.result:row-1"):
        with pytest.raises(Undecryptable, match="integrity"):
            keyring.decrypt(sealed, elsewhere)


def test_a_truncated_value_is_refused() -> None:
    keyring = _keyring()
    sealed = keyring.encrypt(PLAINTEXT, AAD)

    for cut in (len(MAGIC), len(MAGIC) + 2, len(keyring.write_prefix) + 20):
        with pytest.raises(Undecryptable):
            keyring.decrypt(sealed[:cut], AAD)


def test_plaintext_stored_before_encryption_reads_as_it_is() -> None:
    keyring = _keyring()

    for stored in (PLAINTEXT, b"null", b" [1]", b""):
        assert keyring.decrypt(stored, AAD) == stored


def test_a_disabled_keyring_stores_plaintext_and_refuses_ciphertext() -> None:
    disabled = Keyring.disabled()
    sealed = _keyring().encrypt(PLAINTEXT, AAD)

    assert not disabled.enabled
    assert disabled.encrypt(PLAINTEXT, AAD) == PLAINTEXT
    assert disabled.decrypt(PLAINTEXT, AAD) == PLAINTEXT
    with pytest.raises(Undecryptable, match=r"'new'.*disabled"):
        disabled.decrypt(sealed, AAD)


@pytest.mark.parametrize(
    ("keys", "write", "problem"),
    [
        ({"k1": b"short"}, "k1", "not 32 bytes"),
        ({"bad id": OLD_KEY}, "bad id", "is not 1-64"),
        ({"k1": OLD_KEY}, "k2", "write key 'k2' is not among"),
    ],
)
def test_a_malformed_keyring_is_refused(keys: dict[str, bytes], write: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Keyring(keys, write)


def _settings(**fields: object) -> ServiceSettings:
    return ServiceSettings(database_url="postgresql://unused", redis_url="redis://unused", **fields)


def test_a_service_with_neither_keys_nor_encryption_disabled_does_not_start() -> None:
    with pytest.raises(SystemExit) as stopped:
        keyring_from_settings(_settings(data_keys_file=None, encryption_disabled=False))

    assert "AGENTRY_DATA_KEYS_FILE" in str(stopped.value.code)
    assert "AGENTRY_ENCRYPTION_DISABLED" in str(stopped.value.code)


def test_disabling_encryption_is_said_loudly() -> None:
    with capture_logs() as logs:
        keyring = keyring_from_settings(_settings(encryption_disabled=True))

    assert not keyring.enabled
    assert [e["log_level"] for e in logs if "ENCRYPTION AT REST IS DISABLED" in e["event"]] == [
        "warning"
    ]
