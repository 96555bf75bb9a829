"""Keyset pages, newest first: a page token names the (created_at, id) of the last row given,
so rows added meanwhile neither repeat nor shift the pages after it."""

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from libs.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

Cursor = tuple[datetime, uuid.UUID]


def newest_first(
    query: sa.Select[Any], table: sa.Table, after: Cursor | None, limit: int
) -> sa.Select[Any]:
    """`query` as one page of `table`'s rows, newest first, after the row `after` names."""
    if after is not None:
        key = sa.tuple_(table.c.created_at, table.c.id)
        query = query.where(key < sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
    return query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)


def page_token(cursor: Cursor) -> str:
    raw = json.dumps([cursor[0].isoformat(), str(cursor[1])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_page_token(token: str) -> Cursor | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except (ValueError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token is not one this service gave out: pass the next_page_token of an"
            " earlier answer, or none for the first page"
        ) from None


def check_page_size(page_size: int) -> int:
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, not {page_size}")
    return page_size or DEFAULT_PAGE_SIZE
