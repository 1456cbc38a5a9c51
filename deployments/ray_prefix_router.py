"""Ray's own ``PrefixCacheAffinityRouter`` in our graph (``routing: ray_prefix_affinity``).

Imported from its defining module, not ``ray.serve.llm``, whose package imports vLLM into the
ingress process.
"""

from __future__ import annotations

from typing import Any

from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

from deployments.request_routers import ReplicaStatsMixin, generation_request


class RayPrefixAffinityRouter(ReplicaStatsMixin, PrefixCacheAffinityRouter):
    """Ray's ``PrefixCacheAffinityRouter``, reading our :class:`GenerationRequest`.

    Ray's router reads OpenAI-style dict messages and joins their contents, roles dropped; this
    gives it exactly that text from our request, and routes calls that are not generations
    (``load``, ``engine_stats``) as Serve's default would. Nothing else is changed.
    """

    def initialize_state(self, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        self._init_stats()

    def _extract_text_from_request(self, pending_request: PendingRequest) -> str:
        request = generation_request(pending_request)
        if request is None:
            return ""
        if request.kind == "completion":
            prompt = request.prompt
            return " ".join(map(str, prompt)) if isinstance(prompt, list) else (prompt or "")
        return "".join(m.text() for m in request.messages)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None and not self._extract_text_from_request(pending_request):
            # Ray's router divides by the text's length; an empty text has no prefix to match.
            return await PowerOfTwoChoicesRequestRouter.choose_replicas(self, candidate_replicas, pending_request)
        return await super().choose_replicas(candidate_replicas, pending_request)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        if self._extract_text_from_request(pending_request):
            super().on_request_routed(pending_request, replica_id, result)
            self._count_routed(replica_id.unique_id, 0.0, 0.0)
