"""Keep-alive rules and the autoscaling policy that honours them, without a cluster."""

from __future__ import annotations

import math
import time

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.config import KEEP_ALIVE_POLICY, ConfigError, parse_app_config
from deployments.keep_alive import NEVER, KeepAlive
from deployments.keep_alive_policy import KEEP_ALIVE_METRIC, keep_alive_policy


def test_keep_alive_defaults_caps_and_forever() -> None:
    capped = KeepAlive(default_s=300, max_s=3600)
    assert capped.seconds(None) == 300
    assert capped.seconds(0) == 0
    assert capped.seconds(7200) == 3600
    assert capped.seconds(-1) == 3600  # "forever" within the config's limit
    forever = KeepAlive(default_s=300, max_s=None)
    assert math.isinf(forever.seconds(-1))
    assert forever.until(100.0, -1) == NEVER
    assert forever.until(100.0, 60) == 160.0


def _context(replicas: int, requests: float, deadlines: list[float] | None) -> AutoscalingContext:
    deployment = DeploymentID(name="llm-cold", app_name="llm")
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=deployment) for i in range(replicas)]
    raw = None
    if deadlines is not None:
        raw = {KEEP_ALIVE_METRIC: {rid: [TimeStampedValue(time.time(), d)] for rid, d in zip(ids, deadlines, strict=True)}}
    return AutoscalingContext(
        deployment_id=deployment, deployment_name="llm-cold", app_name="llm",
        current_num_replicas=replicas, target_num_replicas=replicas, running_replicas=ids,
        total_num_requests=requests, total_queued_requests=0, aggregated_metrics={}, raw_metrics=raw,
        capacity_adjusted_min_replicas=0, capacity_adjusted_max_replicas=2, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=time.time(),
        config=AutoscalingConfig(min_replicas=0, max_replicas=2, target_ongoing_requests=4),
    )


def test_the_policy_holds_an_idle_model_until_its_latest_deadline() -> None:
    now = time.time()
    assert keep_alive_policy(_context(1, 0, [now + 60]))[0] == 1
    assert keep_alive_policy(_context(2, 0, [now - 5, now + 60]))[0] >= 1
    assert keep_alive_policy(_context(1, 0, [now - 1]))[0] == 0
    assert keep_alive_policy(_context(1, 0, None))[0] == 1  # just loaded: no report yet


def test_load_and_cold_start_are_serves_own_decisions() -> None:
    now = time.time()
    assert keep_alive_policy(_context(1, 8, [now - 1]))[0] == 2  # busy: Serve's queue-length rule
    assert keep_alive_policy(_context(0, 3, None))[0] == 1  # a request for an unloaded model loads it
    assert keep_alive_policy(_context(0, 0, None))[0] == 0


def test_scale_to_zero_settings_need_min_replicas_zero_and_install_the_policy() -> None:
    def config(min_replicas: int) -> dict[str, object]:
        return {"models": [{"name": "m", "engine": "fake", "scale_to_zero": {"keep_alive_s": 5},
                            "deployment": {"autoscaling_config": {"min_replicas": min_replicas, "max_replicas": 1}}}]}

    with pytest.raises(ConfigError, match="min_replicas: 0"):
        parse_app_config(config(1))
    options = parse_app_config(config(0)).models[0].serve_options(1.0)["autoscaling_config"]
    assert options["policy"] == {"policy_function": KEEP_ALIVE_POLICY}
    assert options["downscale_to_zero_delay_s"] == 0.0
