"""One exception hierarchy for every failure a client can see.

Each error knows its HTTP status, OpenAI ``type``, string ``code`` and ``param``; the two
renderers in :mod:`serve_app.transport.error_rendering` turn it into either API's body.
"""

from __future__ import annotations

# What a client reads for a failure inside the server: its detail (exception names, paths,
# tracebacks) is for the log, found there by the request id the body carries.
INTERNAL_ERROR_MESSAGE = "The server had an error while processing your request."


class ServingError(Exception):
    """Base of every error rendered to clients."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    # Whether ``message`` was written for clients; an internal failure's is only logged.
    client_safe: bool = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def client_message(self) -> str:
        """The message a client is shown: ours for errors we raise on purpose, a fixed one for
        internal failures (a bare 5xx :class:`ServingError` or an :class:`EngineError`)."""
        internal = not self.client_safe or (type(self) is ServingError and self.status >= 500)
        return INTERNAL_ERROR_MESSAGE if internal else self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross the Ray handle hop pickled; keep status, code, param and headers.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[ServingError], message: str, state: dict[str, object]) -> ServingError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidRequest(ServingError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unsupported(InvalidRequest):
    """A request the server understands but this model or engine cannot serve."""

    code = "unsupported"


class AuthenticationFailed(ServingError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ServingError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ServingError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
        )
        self.model = model


class MethodNotAllowed(ServingError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ServingError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(ServingError):
    """The client did not send its body within the edge's time (a slow or stalled upload)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(ServingError):
    """Too many request headers, or too many bytes of them."""

    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RateLimited(ServingError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(RateLimited):
    """Load shedding: the model's replicas and queue are full (Serve's back-pressure)."""


class EngineError(ServingError):
    """The engine failed while generating; the message is for the log only."""

    status = 500
    type = "server_error"
    code = "engine_error"
    client_safe = False


class ModelUnavailable(ServingError):
    """The model exists but cannot take requests now (starting, failed, overloaded)."""

    status = 503
    type = "server_error"
    code = "model_unavailable"


class StoreUnavailable(ServingError):
    """The database behind the stateful APIs cannot be reached; the stateless ones carry on."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class DeadlineExceeded(ServingError):
    """Our own generation deadline passed; 504 so SDKs do not resubmit (unlike 408)."""

    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"

    def __init__(self, deadline_s: float) -> None:
        super().__init__(
            f"The generation did not finish within the server's deadline of {deadline_s:g} s.",
            headers={"x-should-retry": "false"},
        )


class ClientDisconnected(ServingError):
    """The client went away before the reply; the work was cancelled. Nobody reads this."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"
