"""The gateway over REST, as the commands use it: every failure becomes a `CliError` whose
text is the one line the user sees (the problem's status and detail)."""

from http import HTTPStatus
from types import TracebackType
from typing import Any

import httpx

from cli.output import cut
from cli.settings import CliSettings

DEFAULT_TIMEOUT_S = 30.0
# A 422 names the fields it refused; this many of them fit on the one line.
_SHOWN_FIELD_ERRORS = 3
_DETAIL_LIMIT = 300


class CliError(Exception):
    """What went wrong, in one line for stderr; the command exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GatewayError(CliError):
    def __init__(self, status: int, detail: str) -> None:
        try:
            named = f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            named = str(status)
        super().__init__(f"{named}: {detail}")
        self.status = status


def _problem(reply: httpx.Response) -> GatewayError:
    try:
        body = reply.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return GatewayError(reply.status_code, cut(reply.text, _DETAIL_LIMIT) or "no detail")
    detail = str(body.get("detail") or body.get("title") or "no detail")
    fields = body.get("errors")
    if isinstance(fields, list) and fields:
        named = [
            f"{'.'.join(str(part) for part in e.get('loc', []))}: {e.get('msg', '')}"
            for e in fields[:_SHOWN_FIELD_ERRORS]
            if isinstance(e, dict)
        ]
        detail = f"{detail} ({'; '.join(named)})"
    return GatewayError(reply.status_code, cut(detail, _DETAIL_LIMIT))


class Gateway:
    """A bearer-token client of the gateway at `settings.url`; use it as a context manager."""

    def __init__(self, settings: CliSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not settings.token:
            raise CliError(
                "AGENTRY_TOKEN is not set: the gateway needs a bearer token"
                " (`agentry token --role ROLE` makes one for the local stack)"
            )
        self.url = settings.url.rstrip("/")
        self._timeout_s = timeout_s
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {settings.token}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._client.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """The answer to a request that succeeded; a `CliError` otherwise."""
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            reply = self._client.request(
                method, path, json=json, content=content, params=query, headers=headers
            )
        except httpx.TimeoutException:
            raise CliError(
                f"the gateway at {self.url} did not answer within {self._timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the gateway at {self.url}: {exc}") from None
        if reply.status_code >= 400:
            raise _problem(reply)
        return reply

    def json(self, method: str, path: str, **request: Any) -> Any:
        reply = self.call(method, path, **request)
        try:
            return reply.json()
        except ValueError:
            raise CliError(
                f"the gateway answered {method} {path} with something that is not JSON"
            ) from None
