"""Running a run: one generation over the thread, its events, and every state change in the store.

The same code drives a streamed run (its events go to the client as they happen) and a
background one (the events are dropped; the store is the only record). Either way the run's row
says where it is, the replica heartbeats it while generating, a cancel through any replica is
seen at the next heartbeat (or at once on this one), and a run whose replica died is closed by
the sweep. A finished generation ends the run (``completed`` / ``incomplete``), asks for tool
outputs (``requires_action``, continued by ``submit_tool_outputs``), or fails it with
``last_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from serve_app.core.errors import ServingError
from serve_app.core.gateway import Gateway
from serve_app.core.internal_types import ToolCallDelta, Usage
from serve_app.state.assistants import objects
from serve_app.state.assistants.store import AssistantsStore, Cursor, StoredRun
from serve_app.state.config import StateSettings
from serve_app.state.responses.background import worker_name
from serve_app.state.store import Json

logger = logging.getLogger(__name__)

Event = tuple[str, Json]
STALE_RUN_ERROR: Json = {"code": "server_error", "message": "The replica running this run stopped before it finished."}


@dataclass
class RunJob:
    """One stretch of a run: from ``queued`` to ``requires_action`` or a final status."""

    owner: str
    run: StoredRun
    request_id: str
    # Background runs charge their tokens to the key's limits themselves (a streamed run's
    # request is charged by the edge, like any request).
    charge: Callable[[int], Awaitable[None]] | None = None


@dataclass
class _Progress:
    """What the generation has produced so far."""

    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish: str | None = None
    usage: Usage | None = None
    message: Json | None = None  # the assistant message, once the first text came
    step: Json | None = None  # its message_creation step
    cancelled: bool = False  # a heartbeat found the run cancelled (or closed) elsewhere


def _error_code(error: ServingError) -> str:
    if error.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if error.status < 500 else "server_error"


def _add_usage(run: Json, usage: Usage | None) -> None:
    if usage is None:
        return
    before = run.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    prompt = before["prompt_tokens"] + usage.prompt_tokens
    completion = before["completion_tokens"] + usage.completion_tokens
    run["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class RunExecutor:
    """Runs this replica's runs (streamed and background) and keeps their rows up to date."""

    def __init__(self, gateway: Gateway, store: AssistantsStore, settings: StateSettings,
                 worker: str | None = None) -> None:
        self.gateway = gateway
        self.store = store
        self.settings = settings
        self.worker = worker or worker_name()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Future[Any]] = set()
        self._shutting_down = False

    # -- entry points ----------------------------------------------------------------------

    def submit(self, job: RunJob) -> None:
        """Run in the background (a fresh context: the request's accounting ends with its reply)."""

        async def drive() -> None:
            async for _ in self.events(job):
                pass

        task = asyncio.create_task(drive(), context=contextvars.Context())
        self._tasks[job.run.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.run.id, None))

    def cancel_local(self, run_id: str) -> None:
        """Stop the run now if this replica runs it in the background."""
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Stop this replica's runs; their rows are closed by the sweep (``failed``)."""
        self._shutting_down = True
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._closing, return_exceptions=True)

    # -- the run ---------------------------------------------------------------------------

    async def events(self, job: RunJob) -> AsyncIterator[list[Event]]:
        """The run's events in order, each batch once its state is stored."""
        run = job.run
        progress = _Progress()
        ended = False
        try:
            if not await self._set_status(run, "in_progress", started_at=objects.now_s()):
                final = await self._end_cancelled(job, progress)  # cancelled while queued
            else:
                yield [("thread.run.in_progress", run.body)]
                failure = None
                try:
                    async with contextlib.aclosing(self._generate(job, progress)) as batches:
                        async for batch in batches:
                            yield batch
                except ServingError as error:
                    failure = error
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded as the run's last_error
                    logger.exception("run %s failed", run.id, exc_info=exc)
                    failure = ServingError(f"generation failed: {type(exc).__name__}")
                if failure is not None:
                    final = await self._end_failed(job, progress, failure)
                elif progress.cancelled:
                    final = await self._end_cancelled(job, progress)
                else:
                    final = await self._end_generation(job, progress)
            # Stored: the run has ended whether or not the client reads the last events.
            ended = True
            yield final
        except (asyncio.CancelledError, GeneratorExit):
            # This replica's cancel, or the client of a streamed run gone: the run is cancelled.
            # At shutdown it is left to the sweep, which closes it as failed.
            if not ended and not self._shutting_down:
                await self._shielded(self._end_cancelled(job, progress))
            raise

    async def abandon(self, job: RunJob) -> None:
        """A streamed run whose client left before it started: cancelled, not left queued."""
        run = job.run
        body = {**run.body, "status": "cancelled", "cancelled_at": objects.now_s()}
        cancelled = dataclasses.replace(run, status="cancelled", body=body)
        await self._shielded(self.store.update_run(cancelled, expect=("queued",), honour_cancel=False))

    async def _shielded(self, work: Awaitable[Any]) -> None:
        """Finish ``work`` even while this task is being cancelled (a run's last write)."""
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        with contextlib.suppress(BaseException):
            await asyncio.shield(task)

    async def _generate(self, job: RunJob, progress: _Progress) -> AsyncIterator[list[Event]]:
        run = job.run
        page = await self.store.list_objects(
            "message", job.owner, Cursor(limit=self.settings.max_input_items, order="desc"), thread_id=run.thread_id
        )
        card = self.gateway.card(run.body["model"])
        internal = objects.run_request(run.body, list(reversed(page.items)), run.transcript, card.name,
                                       job.request_id)
        self.gateway.check_generation_supported(card, internal)
        stream = self.gateway.start_generation(internal)
        pending = asyncio.ensure_future(anext(stream))
        last_beat = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=self.settings.heartbeat_s)
                if time.monotonic() - last_beat >= self.settings.heartbeat_s:
                    last_beat = time.monotonic()
                    if not await self.store.heartbeat_run(job.owner, run.id, self.worker):
                        progress.cancelled = True  # cancelled (or closed) through another replica
                        return
                if not done:
                    continue
                try:
                    batch = pending.result()
                except StopAsyncIteration:
                    return
                yield await self._take(run, progress, batch)
                pending = asyncio.ensure_future(anext(stream))
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await stream.aclose()  # type: ignore[attr-defined]

    async def _take(self, run: StoredRun, progress: _Progress, batch: list[Any]) -> list[Event]:
        events: list[Event] = []
        text = ""
        for chunk in batch:
            text += chunk.text
            if chunk.tool_calls:
                progress.tool_calls.extend(chunk.tool_calls)
            if chunk.finish_reason is not None:
                progress.finish = chunk.finish_reason
            if chunk.usage is not None:
                progress.usage = chunk.usage
        if text:
            if progress.message is None:
                events += await self._open_message(run, progress)
            progress.text += text
            assert progress.message is not None
            events.append(("thread.message.delta", objects.text_delta_event(progress.message["id"], text)))
        return events

    async def _open_message(self, run: StoredRun, progress: _Progress) -> list[Event]:
        message = objects.assistant_message(run.body)
        step = objects.step_object(run.body, "message_creation", {"message_id": message["id"]})
        progress.message, progress.step = message, step
        await self.store.put_object("step", run.owner, step, thread_id=run.thread_id, run_id=run.id)
        await self.store.put_object("message", run.owner, message, thread_id=run.thread_id, run_id=run.id)
        return [("thread.run.step.created", step), ("thread.run.step.in_progress", step),
                ("thread.message.created", message), ("thread.message.in_progress", message)]

    async def _close_message(self, run: StoredRun, progress: _Progress, outcome: str) -> list[Event]:
        """Close the answer's message and step (once): ``completed``, or cut short by the output
        limit (``incomplete``), a cancel or a failure."""
        message, step = progress.message, progress.step
        if message is None or step is None:
            return []
        progress.message = progress.step = None
        now = objects.now_s()
        content = [{"type": "text", "text": {"value": progress.text, "annotations": []}}]
        if outcome == "completed":
            message.update(status="completed", completed_at=now, content=content)
            step_status = "completed"
        else:
            reason = {"incomplete": "max_tokens", "cancelled": "run_cancelled", "failed": "run_failed"}[outcome]
            message.update(status="incomplete", incomplete_at=now, incomplete_details={"reason": reason},
                           content=content)
            step_status = {"incomplete": "completed", "cancelled": "cancelled", "failed": "failed"}[outcome]
        step.update(status=step_status)
        step[f"{step_status}_at"] = now
        await self.store.put_object("message", run.owner, message, thread_id=run.thread_id, run_id=run.id)
        await self.store.put_object("step", run.owner, step, thread_id=run.thread_id, run_id=run.id)
        message_event = "thread.message.completed" if outcome == "completed" else "thread.message.incomplete"
        return [(message_event, message), (f"thread.run.step.{step_status}", step)]

    async def _end_generation(self, job: RunJob, progress: _Progress) -> list[Event]:
        run = job.run
        _add_usage(run.body, progress.usage)
        await self._charge(job, progress)
        if progress.tool_calls and progress.finish != "length":
            events = await self._close_message(run, progress, "completed")
            calls = objects.tool_calls_json(progress.tool_calls)
            step = objects.step_object(run.body, "tool_calls", [
                {**c, "function": {**c["function"], "output": None}} for c in calls
            ])
            await self.store.put_object("step", run.owner, step, thread_id=run.thread_id, run_id=run.id)
            # The calls arrive in the delta (the SDK adds deltas to the step it was created with).
            opened = {**step, "step_details": {"type": "tool_calls", "tool_calls": []}}
            events += [("thread.run.step.created", opened), ("thread.run.step.in_progress", opened),
                       ("thread.run.step.delta", objects.tool_step_delta_event(step["id"], calls))]
            run.transcript = [*run.transcript, {"role": "assistant", "tool_calls": calls}]
            required = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}}
            if not await self._set_status(run, "requires_action", required_action=required):
                return events + await self._end_cancelled(job, progress)
            return [*events, ("thread.run.requires_action", run.body)]
        cut = progress.finish == "length"
        # Even an empty answer is a message: clients read the run's last message.
        events = await self._open_message(run, progress) if progress.message is None else []
        events += await self._close_message(run, progress, "incomplete" if cut else "completed")
        if cut:
            reason = "max_completion_tokens" if run.body.get("max_completion_tokens") else "max_prompt_tokens"
            ok = await self._set_status(run, "incomplete", incomplete_details={"reason": reason})
        else:
            ok = await self._set_status(run, "completed", completed_at=objects.now_s())
        if not ok:
            return events + await self._end_cancelled(job, progress)
        return [*events, (f"thread.run.{run.status}", run.body)]

    async def _end_failed(self, job: RunJob, progress: _Progress, error: ServingError) -> list[Event]:
        run = job.run
        _add_usage(run.body, progress.usage)
        await self._charge(job, progress)
        events = await self._close_message(run, progress, "failed")
        last_error = {"code": _error_code(error), "message": error.client_message()}
        if not await self._set_status(run, "failed", failed_at=objects.now_s(), last_error=last_error):
            return events + await self._end_cancelled(job, progress)
        return [*events, ("thread.run.failed", run.body)]

    async def _end_cancelled(self, job: RunJob, progress: _Progress) -> list[Event]:
        run = job.run
        events = await self._close_message(run, progress, "cancelled")
        run.status = "cancelled"
        run.body = {**run.body, "status": "cancelled", "cancelled_at": objects.now_s(), "required_action": None}
        run.heartbeat_at = time.time()
        # Whatever the cancel flag says (this is the cancel), but never over a run that ended.
        await self.store.update_run(run, honour_cancel=False)
        return [*events, ("thread.run.cancelled", run.body)]

    async def _set_status(self, run: StoredRun, status: str, **fields: Any) -> bool:
        """Store the run's new status unless it was cancelled meanwhile (False then)."""
        run.status = status
        run.body = {**run.body, "status": status, **fields}
        if status != "requires_action":
            run.body["required_action"] = fields.get("required_action")
        run.worker, run.heartbeat_at = self.worker, time.time()
        return await self.store.update_run(run)

    async def _charge(self, job: RunJob, progress: _Progress) -> None:
        if job.charge is not None and progress.usage is not None:
            try:
                await job.charge(progress.usage.total_tokens)
            except Exception:  # noqa: BLE001 - a limiter outage must not fail the run
                logger.exception("could not charge run %s to its key", job.run.id)
