"""The request routers of this process, rendered on the ingress's ``/metrics``.

A router registers itself here when Serve builds it inside the ingress (one per model handle).
This module is imported by reference from the routers' module, which Serve pickles by value, so
the set below is the one process-wide set both sides see.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# The replica's routing-stats keys (``record_routing_stats``) shown per replica.
ENGINE_COUNTERS = ("prefix_cache_queries", "prefix_cache_hits")

_ROUTERS: weakref.WeakSet[Any] = weakref.WeakSet()


def register(router: Any) -> None:
    """Show ``router``'s figures on ``/metrics`` for as long as it lives."""
    _ROUTERS.add(router)


class RoutingCollector(Collector):
    """``/metrics`` families for every router in this process (the ingress's handles)."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["deployment", "replica"]
        routed = CounterMetricFamily("llm_router_requests", "Generations routed to each replica.", labels=labels)
        prompt = CounterMetricFamily(
            "llm_router_prompt_tokens", "Prompt tokens routed (the router's estimate).", labels=labels
        )
        predicted = CounterMetricFamily(
            "llm_router_predicted_prefix_hit_tokens",
            "Prompt tokens the router expected the replica's prefix cache to hold.",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "llm_router_in_flight_requests", "Requests this router has in flight per replica.", labels=labels
        )
        index = GaugeMetricFamily(
            "llm_router_index_blocks", "Prefix blocks the router believes each replica holds.", labels=labels
        )
        engine = {
            name: CounterMetricFamily(
                f"llm_engine_{name}_tokens",
                f"The replica engine's own prefix cache {name.rsplit('_', 1)[1]} (tokens), as last reported.",
                labels=labels,
            )
            for name in ENGINE_COUNTERS
        }
        for router in list(_ROUTERS):
            deployment = router.deployment  # type: ignore[attr-defined]
            for replica, count in dict(router.routed_requests).items():  # type: ignore[attr-defined]
                routed.add_metric([deployment, replica], count)
                prompt.add_metric([deployment, replica], router.prompt_tokens.get(replica, 0.0))  # type: ignore[attr-defined]
                predicted.add_metric([deployment, replica], router.predicted_hit_tokens.get(replica, 0.0))  # type: ignore[attr-defined]
            for replica, count in router.in_flight_by_replica().items():  # type: ignore[attr-defined]
                in_flight.add_metric([deployment, replica], count)
            for replica, blocks in router.index_blocks_by_replica().items():  # type: ignore[attr-defined]
                index.add_metric([deployment, replica], blocks)
            for replica, stats in router.replica_routing_stats().items():  # type: ignore[attr-defined]
                for name, family in engine.items():
                    if isinstance(stats.get(name), int | float):
                        family.add_metric([deployment, replica], stats[name])
        yield from (routed, prompt, predicted, in_flight, index, *engine.values())
