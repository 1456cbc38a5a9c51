"""vLLM's outputs as ours: one ``CompletionOutput`` delta of a choice as a :class:`GenerationChunk`
(:func:`output_chunk`), with the choice's stream state (:class:`ChoiceState`: its reasoning /
tool-call parser, the tool calls accumulated so far, its token count), per-token logprobs and the
finish reason.

Reasoning and tool calls are split out of the text by vLLM's ``ParserManager`` parser of the
request (``reasoning_parser`` / ``tool_call_parser`` of the engine config). No vLLM import here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from deployments.engines.vllm_requests import Prepared
from serve_app.core.errors import EngineError
from serve_app.core.internal_types import FinishReason, GenerationChunk, TokenLogprob, ToolCallDelta, Usage


@dataclass
class _ToolCallAccumulator:
    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class ChoiceState:
    """One choice's stream state across the outputs of a request."""

    parser: Any = None
    completion_tokens: int = 0
    done: bool = False
    echoed: bool = False
    tool_calls: dict[int, _ToolCallAccumulator] = field(default_factory=dict)


def _map_finish(reason: str | None, has_tool_calls: bool) -> FinishReason:
    if reason == "length":
        return "length"
    if has_tool_calls:
        return "tool_calls"
    return "stop"


def _logprobs(token_ids: list[int], entries: Any, top_n: int) -> list[TokenLogprob] | None:
    """vLLM's per-token ``{token_id: Logprob}`` dicts as our :class:`TokenLogprob` list."""
    if entries is None:
        return None
    result: list[TokenLogprob] = []
    for token_id, candidates in zip(token_ids, entries, strict=False):
        if candidates is None:
            continue
        chosen = candidates.get(token_id)
        ranked = sorted(candidates.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30))
        top = [
            TokenLogprob(token=lp.decoded_token or "", logprob=max(lp.logprob, -9999.0),
                         bytes=list((lp.decoded_token or "").encode()))
            for _, lp in ranked[:top_n]
        ]
        text = (chosen.decoded_token if chosen is not None else "") or ""
        logprob = chosen.logprob if chosen is not None else float("-inf")
        result.append(TokenLogprob(token=text, logprob=max(logprob, -9999.0), bytes=list(text.encode()), top_logprobs=top))
    return result


def output_chunk(
    out: Any,
    state: ChoiceState,
    prepared: Prepared,
    prompt_token_ids: Any,
    prompt_tokens: int,
    top_n: int,
    cached_tokens: int = 0,
) -> GenerationChunk | None:
    """One vLLM ``CompletionOutput`` delta as our chunk; ``None`` when it carries nothing yet."""
    if out.finish_reason == "error":
        raise EngineError(f"vLLM reported an error for choice {out.index}")
    token_ids = list(out.token_ids)
    state.completion_tokens += len(token_ids)
    done = out.finish_reason is not None
    text, reasoning = out.text, ""
    if state.parser is not None:
        delta = state.parser.parse_delta(
            delta_text=out.text,
            delta_token_ids=token_ids,
            request=prepared.vllm_request,
            prompt_token_ids=list(prompt_token_ids) if prompt_token_ids is not None else None,
            finished=done,
        )
        text = (delta.content or "") if delta is not None else ""
        reasoning = (delta.reasoning or "") if delta is not None else ""
        for call in (delta.tool_calls if delta is not None else None) or []:
            acc = state.tool_calls.setdefault(call.index, _ToolCallAccumulator())
            if call.id and not acc.id:
                acc.id = call.id
            if call.function is not None:
                if call.function.name:
                    acc.name += call.function.name
                if call.function.arguments:
                    acc.arguments += call.function.arguments
    if prepared.echo_text is not None and not state.echoed:
        state.echoed = True
        text = prepared.echo_text + text
    logprobs = _logprobs(token_ids, out.logprobs, top_n) if out.logprobs is not None else None
    if not done:
        if not text and not reasoning and not logprobs:
            return None
        return GenerationChunk(out.index, text=text, reasoning=reasoning, logprobs=logprobs)
    state.done = True
    calls = [
        ToolCallDelta(i, acc.id or f"call_{uuid.uuid4().hex[:24]}", acc.name, acc.arguments or "{}")
        for i, acc in sorted(state.tool_calls.items())
        if acc.name
    ]
    finish = _map_finish(out.finish_reason, bool(calls))
    # vLLM names the stop string that matched in ``stop_reason`` (a stop token's id is an int).
    matched = out.stop_reason if finish == "stop" and isinstance(out.stop_reason, str) else None
    return GenerationChunk(
        out.index,
        text=text,
        reasoning=reasoning,
        tool_calls=calls or None,
        logprobs=logprobs,
        finish_reason=finish,
        stop_sequence=matched,
        usage=Usage(prompt_tokens, state.completion_tokens, cached_tokens),
    )
