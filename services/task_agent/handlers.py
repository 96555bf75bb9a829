"""How a website's engineers write task handlers: a decorated function (async, or plain to
run in a thread) that names its type and defaults, and gets a context."""

import functools
import importlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from libs.common.crypto import Keyring
from services.task_agent.analysis_client import AnalysisClient
from services.task_agent.limits import RateLimiter
from services.task_agent.model import RetryPolicy, TaskType

_MARK = "__agentry_task__"


class RetryableError(Exception):
    """The attempt failed; try again under the retry policy, and not before
    `retry_after_s` when given (an upstream's Retry-After)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NonRetryableError(Exception):
    """The task cannot succeed however often it is tried: no retry, straight to the
    fallback or the dead letters."""


@dataclass(frozen=True)
class Resources:
    """What an agent shares with every handler it runs."""

    http: httpx.AsyncClient
    limiter: RateLimiter
    # Webhook signing secrets by name; payloads carry only the name.
    secrets: Mapping[str, str] = field(default_factory=dict)
    allow_private_networks: bool = False
    # The data keys: they open the secrets the orchestrator seals for webhook deliveries.
    keyring: Keyring = field(default_factory=Keyring.disabled)
    # AnalysisService, which runs the analysis.* types; None: not configured.
    analysis: AnalysisClient | None = None


@dataclass
class TaskContext:
    task_id: str
    type: str
    attempt: int
    resources: Resources
    _report: Callable[[float], Awaitable[None]]
    # Set when the task is cancelled; async handlers are also cancelled outright, threads
    # can only look at it.
    cancelled: threading.Event = field(default_factory=threading.Event)

    @functools.cached_property
    def log(self) -> Any:
        """A logger whose lines name the task, made when a handler first logs (most never
        do, and making one is a good part of a short task's cost)."""
        return structlog.get_logger("task").bind(
            task_id=self.task_id, task_type=self.type, attempt=self.attempt
        )

    async def heartbeat(self, progress: float) -> None:
        """Reports progress (0..1); the agent also keeps the lease alive on its own."""
        await self._report(max(0.0, min(1.0, progress)))


@dataclass(frozen=True)
class Handler:
    task_type: TaskType
    fn: Callable[..., Any]
    # CPU-heavy: runs as fn(payload) in a process pool, off the event loop and the GIL.
    in_process: bool = False

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def task(
    name: str,
    *,
    queue: str = "default",
    retry: RetryPolicy | None = None,
    timeout_s: float = 60.0,
    fallback: str | None = None,
    rate_limit_per_s: float = 0.0,
    concurrency_limit: int = 0,
    process: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks `fn(payload, ctx)` as the handler of task type `name`: an `async def` runs on
    the agent's event loop, a plain function in a thread. With `process=True` a plain,
    module-level `fn(payload)` runs in a process pool instead (no context: it cannot cross
    the process boundary)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = TaskType(
            name=name,
            queue=queue,
            retry=retry or RetryPolicy(),
            timeout_s=timeout_s,
            fallback_type=fallback,
            rate_limit_per_s=rate_limit_per_s,
            concurrency_limit=concurrency_limit,
        )
        setattr(fn, _MARK, Handler(spec, fn, process))
        return fn

    return mark


class Handlers:
    """The handlers one agent serves, found in the modules it was started on."""

    def __init__(self, handlers: Iterable[Handler]) -> None:
        self._by_type = {h.task_type.name: h for h in handlers}

    @classmethod
    def from_modules(cls, names: Iterable[str]) -> "Handlers":
        found = []
        for name in names:
            module = importlib.import_module(name)
            for value in vars(module).values():
                handler = getattr(value, _MARK, None)
                if isinstance(handler, Handler):
                    found.append(handler)
        return cls(found)

    def get(self, type_: str) -> Handler | None:
        return self._by_type.get(type_)

    @property
    def types(self) -> list[TaskType]:
        return [h.task_type for h in self._by_type.values()]

    @property
    def queues(self) -> list[str]:
        return sorted({h.task_type.queue for h in self._by_type.values()})
