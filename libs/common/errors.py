"""The domain's errors. Code everywhere raises these; only the gRPC interceptor and the
gateway translate them, each through its one table."""


class AgentryError(Exception):
    """Base of every error a client may see; the message is safe to show."""


class InvalidArgument(AgentryError):
    pass


class NotFound(AgentryError):
    pass


class AlreadyExists(AgentryError):
    pass


class FailedPrecondition(AgentryError):
    pass


class PermissionDenied(AgentryError):
    pass


class Unauthenticated(AgentryError):
    pass


class ResourceExhausted(AgentryError):
    """Too many requests; `retry_after_s` tells the client when to come back."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(AgentryError):
    pass


class DeadlineExceeded(AgentryError):
    pass
