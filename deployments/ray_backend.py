"""The :class:`serve_app.core.backend.Backend` of the ingress deployment: Ray Serve handles.

Maps Serve's own failures to our errors: back-pressure to 429 with ``Retry-After``, an
unavailable deployment to 503, a replica dying mid-stream to an in-band engine error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle

from deployments.cold_start import ColdStartGate
from serve_app.core.errors import EngineError, ModelNotFound, ModelUnavailable, Overloaded, ServingError
from serve_app.core.internal_types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
    ModelState,
    ModelStatus,
)

logger = logging.getLogger("ray.serve")

T = TypeVar("T")

_REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)


def _state_of(deployment_status: Any, on_demand: bool = False) -> tuple[ModelState, int, str | None]:
    """Our (state, running replicas, message) from Serve's DeploymentStatusOverview."""
    # After a controller restart Serve reports the replicas it re-attaches as RECOVERING: they
    # are alive and serving (requests never stopped), not starting.
    running = int(deployment_status.replica_states.get("RUNNING", 0)) + int(
        deployment_status.replica_states.get("RECOVERING", 0)
    )
    status = str(getattr(deployment_status.status, "value", deployment_status.status))
    message = deployment_status.message or None
    if running > 0:
        return "ready", running, None
    if status in ("DEPLOY_FAILED", "UNHEALTHY"):
        return "failed", 0, message
    if on_demand and not any(deployment_status.replica_states.values()):
        return "unloaded", 0, None  # scaled to zero: the next request loads it
    return "starting", 0, message


# One embedding call across the handle hop carries at most this many inputs, and a reply of
# about this many bytes (see RayBackend._embedding_batch).
EMBED_BATCH_MAX_INPUTS = 256
# How long a request waits for the Serve controller's view of the models before it is served
# from the last one known (see RayBackend.list_models).
STATUS_WAIT_S = 2.0
# Streaming handles tagged with an adapter id kept for reuse (adapters from a folder are many).
_MAX_ADAPTER_HANDLES = 1024
EMBED_REPLY_BUDGET_BYTES = 1024 * 1024


class RayBackend:
    """Generations and embeddings through one cached handle per model."""

    def __init__(
        self,
        handles: Mapping[str, DeploymentHandle],
        cards: list[ModelCard],
        deployment_names: Mapping[str, str],
        app_name: str,
        retry_after_s: float,
        status_ttl_s: float = 1.0,
        failure_check_s: float = 10.0,
        on_demand: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self._stream_handles = {name: h.options(stream=True) for name, h in handles.items()}
        self._handles = dict(handles)
        self._adapter_handles: dict[str, DeploymentHandle] = {}
        self._cards = {c.name: c for c in cards}
        self._deployment_names = dict(deployment_names)
        self._app_name = app_name
        self._retry_after = str(max(1, round(retry_after_s)))
        self._status_ttl_s = status_ttl_s
        self._failure_check_s = failure_check_s
        self._status_cache: tuple[float, list[ModelStatus]] | None = None
        # Models whose deployment gave up (DEPLOY_FAILED): refused at once. An UNHEALTHY one is
        # listed as failed too, but Serve is replacing its replica, so requests wait for it.
        self._deploy_failed: dict[str, str] = {}
        self._background: set[asyncio.Task[object]] = set()
        self._status_lock = asyncio.Lock()
        self._status_refresh: asyncio.Task[list[ModelStatus]] | None = None
        # Models that scale to zero: the bounded wait while one loads (deployments.cold_start).
        self._gates = {
            name: ColdStartGate(name, settings, self._retry_after) for name, settings in (on_demand or {}).items()
        }

    def _gate(self, model: str) -> ColdStartGate | None:
        """The model's gate while it may be loading; ``None`` when requests go straight through."""
        gate = self._gates.get(model)
        return gate if gate is not None and not gate.loaded() else None

    def _translate(self, exc: BaseException, model: str, started: bool) -> ServingError | None:
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, ServingError):
            return exc.cause
        if isinstance(exc, ServingError):
            return exc
        if isinstance(exc, BackPressureError):
            return Overloaded(
                f"model '{model}' is at capacity; retry after {self._retry_after} s",
                headers={"retry-after": self._retry_after},
            )
        if isinstance(exc, DeploymentUnavailableError):
            return ModelUnavailable(
                f"model '{model}' is unavailable", headers={"retry-after": self._retry_after}
            )
        if isinstance(exc, _REPLICA_LOST):
            if started:
                return EngineError(f"the replica serving '{model}' died during the generation")
            return ModelUnavailable(
                f"the replica serving '{model}' is unavailable", headers={"retry-after": self._retry_after}
            )
        if isinstance(exc, RequestCancelledError):
            return None
        return None

    async def _refuse_if_failed(self, model: str) -> None:
        """503 at once for a model whose deployment failed to start (Serve would queue it).

        Never waits for the controller on the request path: it reads the last known statuses
        and, when they are older than ``failure_check_s``, refreshes them in the background.
        Reading Serve's status costs the ingress about 25 ms of CPU, which would land on every
        request's time to first token if awaited, and at one read a second under load is a
        tenth of the ingress's whole CPU on a slow engine (benchmarks/README.md); a deployment
        gives up only after minutes of failed starts, so ten seconds more to notice is nothing.
        """
        if self._status_cache is None:
            with contextlib.suppress(ModelUnavailable):  # no word from the controller: go on
                await self.list_models()
        elif time.monotonic() - self._status_cache[0] >= self._failure_check_s and not self._status_lock.locked():
            task = asyncio.create_task(self.list_models())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if model in self._deploy_failed:
            raise ModelUnavailable(
                f"model '{model}' failed to start: {self._deploy_failed[model] or 'unknown error'}",
                headers={"retry-after": self._retry_after},
            )

    def _adapter_handle(self, handle: DeploymentHandle, adapter: str) -> DeploymentHandle:
        """The base's streaming handle tagged with ``adapter`` as Serve's multiplexed model id,
        so Serve routes it to a replica that already holds the adapter when one does."""
        tagged = self._adapter_handles.get(adapter)
        if tagged is None:
            if len(self._adapter_handles) >= _MAX_ADAPTER_HANDLES:
                self._adapter_handles.pop(next(iter(self._adapter_handles)))
            tagged = self._adapter_handles[adapter] = handle.options(multiplexed_model_id=adapter)
        return tagged

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        model = request.base_model or request.model
        handle = self._stream_handles.get(model)
        if handle is None:
            raise ModelNotFound(request.model)
        if request.base_model is not None:
            handle = self._adapter_handle(handle, request.model)
        await self._refuse_if_failed(model)
        responses = None
        started = finished = False
        gate = self._gate(model)
        try:
            if gate is not None:
                async with gate.admitted():
                    # Serve may reject at submission (back-pressure) as well as on the first read.
                    responses = handle.generate.remote(request)
                    first = await gate.first(anext(responses, None))
                gate.note_finished(request.keep_alive_s)
                if first is not None:
                    started = True
                    yield first
            else:
                responses = handle.generate.remote(request)
            async for batch in responses:
                started = True
                yield batch
            finished = True
        except Exception as exc:
            translated = self._translate(exc, request.model, started)
            if translated is None:
                raise
            raise translated from exc
        finally:
            if model in self._gates and started:
                self._gates[model].note_finished(request.keep_alive_s)
            if responses is not None and not finished:
                # The caller stopped reading (disconnect, deadline, error): cancel the replica's
                # generator, which aborts the request in the engine. Cancelling a request Serve
                # already rejected re-raises that rejection; it has been reported above.
                with contextlib.suppress(Exception):
                    responses.cancel()

    async def _call(self, model: str, call: Callable[[], Awaitable[T]]) -> T:
        """One unary call to ``model``'s replicas, through its load gate while it may be loading,
        with Serve's failures translated."""
        gate = self._gate(model)
        try:
            if gate is None:
                return await call()
            async with gate.admitted():
                return await gate.first(call())
        except Exception as exc:
            translated = self._translate(exc, model, started=False)
            if translated is None:
                raise
            raise translated from exc

    async def _request(
        self, model: str, keep_alive_s: float | None, method: str, request: Any, adapter: str | None = None
    ) -> Any:
        """One unary request to ``model``'s replicas (``method`` of its deployment), for
        ``adapter`` of it when given; for a model that scales to zero it restarts the idle
        clock, as a generation does."""
        handle = self._handles.get(model)
        if handle is None:
            raise ModelNotFound(adapter or model)
        if adapter is not None:
            handle = handle.options(multiplexed_model_id=adapter)
        await self._refuse_if_failed(model)
        result = await self._call(model, lambda: getattr(handle, method).remote(request))
        if model in self._gates:
            self._gates[model].note_finished(keep_alive_s)
        return result

    def _embedding_batch(self, request: EmbeddingRequest) -> int:
        """How many inputs one call across the handle hop may carry.

        Serve's throughput-optimised mode carries replies over gRPC with a 4 MiB message limit:
        2,048 vectors of 384 floats (7 MB pickled) fail there. Each batch's reply stays near
        1 MiB (about 9 bytes per pickled float).
        """
        card = self._cards.get(request.model)
        dims = request.dimensions or (card.embedding_dimensions if card else None) or 4096
        return max(1, min(EMBED_BATCH_MAX_INPUTS, EMBED_REPLY_BUDGET_BYTES // (dims * 9 + 64)))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """The request's vectors, fetched in batches each small enough for one handle reply
        (one after another, so one request never takes more than one slot of the model)."""
        size = self._embedding_batch(request)
        if len(request.inputs) <= size:
            return await self._request(request.model, request.keep_alive_s, "embed", request)  # type: ignore[no-any-return]
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(request.inputs), size):
            part = request.model_copy(update={"inputs": request.inputs[start : start + size]})
            result: EmbeddingResult = await self._request(request.model, request.keep_alive_s, "embed", part)
            vectors.extend(result.vectors)
            tokens += result.prompt_tokens
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The model's replica renders the prompt (a cold on-demand model loads for it, as for
        a generation)."""
        if request.base_model is None:
            return int(await self._request(request.model, request.keep_alive_s, "count_tokens", request))
        return int(
            await self._request(request.base_model, request.keep_alive_s, "count_tokens", request, adapter=request.model)
        )

    async def find_adapter(self, model: str, base: str) -> None:
        """Asks one of the base's replicas (one holding the adapter, if any does)."""
        await self._request(base, None, "find_adapter", model, adapter=model)

    async def load(self, model: str, keep_alive_s: float | None = None) -> float | None:
        """Load an on-demand model (through its gate) or, with ``keep_alive_s`` 0, let it unload.

        A model that never scales to zero is always loaded: nothing to do."""
        handle = self._handles.get(model)
        if handle is None:
            raise ModelNotFound(model)
        on_demand = self._gates.get(model)
        if on_demand is None:
            return None
        await self._refuse_if_failed(model)
        if keep_alive_s == 0 and not on_demand.loaded():
            status = next((s for s in await self.list_models() if s.card.name == model), None)
            if status is None or status.replicas == 0:
                return time.time()  # not loaded: nothing to unload (and no load for it)
        until = await self._call(model, lambda: handle.load.remote(keep_alive_s))
        on_demand.note_loaded(until)
        if keep_alive_s == 0:
            on_demand.note_unloaded()
        return until

    async def list_models(self) -> list[ModelStatus]:
        """Configured models with Serve's view of their replicas (cached for a second).

        Reading it asks the Serve controller, and a call to a controller that is restarting or
        hung waits until it answers (Ray retries it without end). So one read runs at a time,
        a caller waits for it at most ``STATUS_WAIT_S`` and otherwise gets the last statuses
        known, while the read goes on in the background.
        """
        cached = self._status_cache
        if cached is not None and time.monotonic() - cached[0] < self._status_ttl_s:
            return cached[1]
        refresh = self._status_refresh
        if refresh is None or refresh.done():
            refresh = self._status_refresh = asyncio.create_task(self._refresh_statuses())
        try:
            return await asyncio.wait_for(asyncio.shield(refresh), STATUS_WAIT_S)
        except TimeoutError:
            if cached is not None:
                logger.warning("Serve's status did not come within %.0f s; using the last one", STATUS_WAIT_S)
                return cached[1]
            raise ModelUnavailable(
                "the cluster's controller is not answering; retry shortly", headers={"retry-after": self._retry_after}
            ) from None

    async def _refresh_statuses(self) -> list[ModelStatus]:
        async with self._status_lock:
            statuses = await asyncio.to_thread(self._read_statuses)
            self._status_cache = (time.monotonic(), statuses)
            return statuses

    def _read_statuses(self) -> list[ModelStatus]:
        try:
            app = serve.status().applications.get(self._app_name)
            deployments = app.deployments if app is not None else {}
        except Exception:  # noqa: BLE001 - the controller being unreachable must not break listing
            logger.exception("could not read Serve status")
            deployments = {}
        statuses = []
        deploy_failed = {}
        for name, card in self._cards.items():
            if card.base_model is not None:
                continue  # an adapter: listed with its base's state by the gateway
            overview = deployments.get(self._deployment_names[name])
            if overview is None:
                statuses.append(ModelStatus(card=card, state="starting", replicas=0, on_demand=name in self._gates))
                continue
            gate = self._gates.get(name)
            state, replicas, message = _state_of(overview, on_demand=gate is not None)
            if state == "failed" and str(getattr(overview.status, "value", overview.status)) == "DEPLOY_FAILED":
                deploy_failed[name] = message or ""
            if gate is not None and replicas == 0:
                gate.note_unloaded()
            statuses.append(
                ModelStatus(
                    card=card,
                    state=state,
                    replicas=replicas,
                    message=message,
                    on_demand=gate is not None,
                    expires_at=gate.expires_at() if gate is not None and replicas > 0 else None,
                )
            )
        self._deploy_failed = deploy_failed
        return statuses
