"""Request routers for a model's replicas, on Ray Serve's request-router API.

A model's ``routing:`` in config.yaml picks one (``deployments.config.RoutingConfig``):

- ``cache_aware`` (:class:`CacheAwareRouter`): prefix affinity and load scored together for every
  request (``deployments.prefix_index``). The index is learned from the router's own decisions, in
  this process, bounded by the KV capacity each replica reports in its routing stats; load is
  the requests this router has in flight on each replica, counted when it sends one. Routing
  makes no remote call of its own: Serve's queue-length cache and the replicas' routing stats
  (pushed by the controller) are all it reads.
- ``ray_prefix_affinity`` (``deployments.ray_prefix_router``): Ray's own
  ``PrefixCacheAffinityRouter``, taught to read our request type, so the two compare on equal terms.
- ``serve_default`` (:class:`CountingPowerOfTwoRouter`): Serve's power-of-two-choices router,
  unchanged but for counting what it routes, so ``/metrics`` compares the three.

Every router registers with ``deployments.routing_metrics``, which the ingress renders on
``/metrics`` (routed requests, the router's predicted prefix hits, and the engines' own
prefix-cache counters per replica).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import MultiplexMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments import routing_metrics
from deployments.prefix_index import (
    ReplicaIndex,
    ReplicaLoad,
    Weights,
    block_hashes,
    capacity_blocks,
    prompt_key_text,
    rank_replicas,
)
from serve_app.core.internal_types import GenerationRequest

logger = logging.getLogger("ray.serve")

CACHE_AWARE_ROUTER = "deployments.request_routers.CacheAwareRouter"
SERVE_DEFAULT_ROUTER = "deployments.request_routers.CountingPowerOfTwoRouter"
RAY_PREFIX_ROUTER = "deployments.ray_prefix_router.RayPrefixAffinityRouter"
# The replica's routing stats (``record_routing_stats``) that the routers read.
KV_CAPACITY_KEY = "kv_capacity_tokens"

_MAX_REMEMBERED = 4096
_RESERVATION_TTL_S = 10.0


def generation_request(pending: PendingRequest | None) -> GenerationRequest | None:
    if pending is None or pending.metadata.call_method != "generate" or not pending.args:
        return None
    request = pending.args[0]
    return request if isinstance(request, GenerationRequest) else None


class ReplicaStatsMixin:
    """What both prefix routers report for ``/metrics``: routed requests, replicas' engine stats."""

    _replicas: dict[ReplicaID, RunningReplica]
    _deployment_id: Any

    def _init_stats(self) -> None:
        self.routed_requests: dict[str, int] = {}
        self.predicted_hit_tokens: dict[str, float] = {}
        self.prompt_tokens: dict[str, float] = {}
        # Through the module: Serve pickles this module by value, so a global of its own would
        # be a copy, not the set the ingress's /metrics reads.
        routing_metrics.register(self)

    @property
    def deployment(self) -> str:
        return self._deployment_id.name if self._deployment_id else ""

    def _count_routed(self, replica: str, prompt_tokens: float, hit_tokens: float) -> None:
        self.routed_requests[replica] = self.routed_requests.get(replica, 0) + 1
        self.prompt_tokens[replica] = self.prompt_tokens.get(replica, 0.0) + prompt_tokens
        self.predicted_hit_tokens[replica] = self.predicted_hit_tokens.get(replica, 0.0) + hit_tokens

    def replica_routing_stats(self) -> dict[str, dict[str, Any]]:
        """Each live replica's last routing stats (its engine's counters), by replica id."""
        return {rid.unique_id: dict(r.routing_stats or {}) for rid, r in list(self._replicas.items())}

    def in_flight_by_replica(self) -> dict[str, int]:
        return {}

    def index_blocks_by_replica(self) -> dict[str, int]:
        return {}


class CacheAwareRouter(ReplicaStatsMixin, MultiplexMixin, RequestRouter):
    """Prefix affinity and load scored together (see ``deployments.prefix_index``)."""

    def initialize_state(
        self,
        block_chars: int = 64,
        chars_per_token: float = 4.0,
        load_weight_tokens: float = 128.0,
        max_load_ratio: float = 1.5,
        load_slack_requests: int = 2,
        default_capacity_tokens: int = 65536,
        **_: Any,
    ) -> None:
        self._weights = Weights(
            block_chars=block_chars,
            chars_per_token=chars_per_token,
            load_weight_tokens=load_weight_tokens,
            max_load_ratio=max_load_ratio,
            load_slack_requests=load_slack_requests,
        )
        self._default_capacity = capacity_blocks(default_capacity_tokens, self._weights)
        self._loads: dict[ReplicaID, ReplicaLoad] = {}
        # Hashes of a request between choosing and routing it (a retry reuses them).
        self._hashes: dict[str, list[int]] = {}
        # Requests counted as load, until they complete: internal request id -> replica; and
        # requests scored but not yet handed a replica, counted on their best one meanwhile.
        self._picked: dict[str, ReplicaID] = {}
        self._reserved: dict[str, tuple[ReplicaID, float]] = {}
        self._init_stats()

    # -- replica set -----------------------------------------------------------------------

    def _capacity_of(self, replica: RunningReplica) -> int:
        reported = (replica.routing_stats or {}).get(KV_CAPACITY_KEY)
        if isinstance(reported, int | float) and reported > 0:
            return capacity_blocks(int(reported), self._weights)
        return self._default_capacity

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Serve's running replicas changed: new ones get an empty index, gone ones lose theirs."""
        super().update_replicas(replicas)
        live = {r.replica_id: r for r in replicas}
        for gone in set(self._loads) - set(live):
            del self._loads[gone]
        for rid, replica in live.items():
            load = self._loads.get(rid)
            capacity = self._capacity_of(replica)
            if load is None:
                self._loads[rid] = ReplicaLoad(rid.unique_id, ReplicaIndex(capacity))
            elif load.index.capacity_blocks != capacity:
                load.index.resize(capacity)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._loads.pop(replica_id, None)

    # -- routing ---------------------------------------------------------------------------

    def _request_hashes(self, pending: PendingRequest | None) -> list[int]:
        request = generation_request(pending)
        if request is None or pending is None:
            return []
        key = pending.metadata.internal_request_id
        hashes = self._hashes.get(key)
        if hashes is None:
            if len(self._hashes) >= _MAX_REMEMBERED:  # requests cancelled before being sent
                self._hashes.pop(next(iter(self._hashes)))
            hashes = self._hashes[key] = block_hashes(prompt_key_text(request), self._weights.block_chars)
        return hashes

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Every candidate, one per rank, best first: Serve tries them in this order.

        A request for a LoRA adapter (Serve's multiplexed model id) is ranked among the
        replicas Serve's multiplex rules offer: those holding the adapter first, then those
        holding the fewest, then all.
        """
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            holders = self.apply_multiplex_routing(pending_request)
            candidate_replicas = [r for r in candidate_replicas if r.replica_id in holders] or candidate_replicas
        hashes = self._request_hashes(pending_request)
        loads = []
        by_id = {}
        for replica in candidate_replicas:
            load = self._loads.get(replica.replica_id)
            if load is None:  # routed to before update_replicas saw it
                load = self._loads[replica.replica_id] = ReplicaLoad(
                    replica.replica_id.unique_id, ReplicaIndex(self._capacity_of(replica))
                )
            loads.append(load)
            by_id[load.replica] = replica
        key = pending_request.metadata.internal_request_id if pending_request is not None else None
        self._release(key)
        choice = rank_replicas(loads, hashes, self._weights)
        if key is not None and choice.ranked:
            # Count the request on its best replica now: Serve may wait (probing a replica's
            # queue length) before it hands the replica over, and requests scored meanwhile
            # must see this one.
            best = choice.ranked[0]
            best.in_flight += 1
            self._reserved[key] = (by_id[best.replica].replica_id, time.monotonic())
        return [[by_id[load.replica]] for load in choice.ranked]

    def _release(self, key: str | None) -> None:
        """Undo a reservation made when ``key`` was scored, and any older than a routing takes."""
        now = time.monotonic()
        stale = [k for k, (_, at) in self._reserved.items() if now - at > _RESERVATION_TTL_S]
        for k in ([key] if key is not None else []) + stale:
            reserved = self._reserved.pop(k, None)
            load = self._loads.get(reserved[0]) if reserved is not None else None
            if load is not None and load.in_flight > 0:
                load.in_flight -= 1

    def _fulfill_next_pending_request(self, replica: RunningReplica, request_metadata: Any = None) -> None:
        """Serve hands ``replica`` to the request: it counts as load from this moment.

        Counting here, not when the request is sent or accepted, matters when requests arrive
        together: Serve scores all of them before it sends the first, and each must see the
        picks made before it. (Serve's own hook for this moment is not public: this is the
        one private method the router overrides.)
        """
        key = getattr(request_metadata, "internal_request_id", None)
        pending = self._pending_requests_by_id.get(key) if key is not None else None
        super()._fulfill_next_pending_request(replica, request_metadata)
        self._release(key)
        if pending is not None and pending.future.done() and not pending.future.cancelled():
            load = self._loads.get(replica.replica_id)
            if load is not None and key not in self._picked:
                load.in_flight += 1
                self._picked[key] = replica.replica_id

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        self._hashes.pop(internal_request_id, None)
        picked = self._picked.pop(internal_request_id, None)
        load = self._loads.get(picked) if picked is not None else None
        if load is not None and load.in_flight > 0:
            load.in_flight -= 1

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        """The replica accepted the request: it will hold the request's prefix blocks."""
        hashes = self._request_hashes(pending_request)  # computed when it was scored
        self._hashes.pop(pending_request.metadata.internal_request_id, None)
        load = self._loads.get(replica_id)
        if load is None:
            return
        load.routed += 1
        if generation_request(pending_request) is None:
            return
        tokens_per_block = self._weights.block_chars / self._weights.chars_per_token
        matched = load.index.matched_blocks(hashes)
        self._count_routed(load.replica, len(hashes) * tokens_per_block, matched * tokens_per_block)
        load.index.insert(hashes)

    def in_flight_by_replica(self) -> dict[str, int]:
        return {load.replica: load.in_flight for load in list(self._loads.values())}

    def index_blocks_by_replica(self) -> dict[str, int]:
        return {load.replica: len(load.index) for load in list(self._loads.values())}


class CountingPowerOfTwoRouter(ReplicaStatsMixin, PowerOfTwoChoicesRequestRouter):
    """Serve's default router, choosing exactly as Serve does; it only counts for ``/metrics``."""

    def initialize_state(self, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        self._init_stats()

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        super().on_request_routed(pending_request, replica_id, result)
        if generation_request(pending_request) is not None:
            self._count_routed(replica_id.unique_id, 0.0, 0.0)
