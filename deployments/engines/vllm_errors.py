"""vLLM's exceptions as ours, and the OpenAI-style context-length error both paths raise.

vLLM is imported inside the functions only, never at module import.
"""

from __future__ import annotations

import logging

from serve_app.core.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ModelUnavailable,
    ServingError,
)

logger = logging.getLogger(__name__)


def context_error(limit: int, prompt_tokens: int, wanted: int, param: str, *, at_least: bool = False) -> ContextLengthExceeded:
    qualifier = "at least " if at_least else ""
    return ContextLengthExceeded(
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{qualifier}{prompt_tokens + wanted} tokens ({qualifier}{prompt_tokens} in the messages, {wanted} in "
        "the completion). Please reduce the length of the messages or completion.",
        param=param,
    )


def _is_unencodable_text(exc: BaseException) -> bool:
    """Whether ``exc`` is the tokenizer's (or UTF-8 codec's) refusal of a lone surrogate."""
    if isinstance(exc, UnicodeEncodeError):
        return True
    # The Rust tokenizer raises a TypeError naming its input type for a str it cannot take.
    return isinstance(exc, TypeError) and "TextEncodeInput" in str(exc)


def translate_vllm_error(exc: BaseException, *, limit: int, wanted: int, param: str) -> ServingError:
    """A vLLM exception as one of ours (client errors 400, overload 503, the rest 500)."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, VLLMValidationError):
        parameter = getattr(exc, "parameter", None)
        value = getattr(exc, "value", None)
        if parameter == "input_tokens" and isinstance(value, int):
            return context_error(limit, value, wanted, param, at_least=True)
        if parameter == "input_text" and isinstance(value, int):
            return ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{value} characters, more than {limit} tokens can hold. Please reduce the length of "
                "the messages or completion.",
                param=param,
            )
        return InvalidRequest(str(exc), param=parameter)
    if isinstance(exc, VLLMClientError):
        return InvalidRequest(str(exc))
    if isinstance(exc, GracefulHTTPError):
        return ModelUnavailable(str(exc) or "the engine is overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, EngineDeadError):
        return EngineError(f"the vLLM engine is dead: {exc}")
    cause = exc.__cause__ or exc
    if _is_unencodable_text(cause):
        # The edge refuses such text in request bodies; this catches text made from them
        # (tool arguments parsed from JSON strings, templates), and says the same.
        return InvalidRequest(
            "The request holds text that is not valid Unicode (a lone UTF-16 surrogate) and "
            "cannot be tokenized.",
            param=param,
            code="invalid_text",
        )
    # The detail is for this replica's log; clients read a fixed message and the request id.
    logger.error("vLLM failed: %s: %s", type(cause).__name__, cause, exc_info=exc)
    return EngineError(f"vLLM failed: {type(cause).__name__}: {cause}")
