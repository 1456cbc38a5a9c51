"""``VLLMEngineConfig``: the ``engine_args`` of a ``kind: vllm`` model and the vLLM engine arguments
built from them.

Plain pydantic, no vLLM import: config validation imports this module without vLLM installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.model_sources import ModelSource

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # deployments/


def looks_like_path(template: str) -> bool:
    """Whether a ``chat_template`` value names a file rather than holding Jinja itself."""
    return "{" not in template and "\n" not in template


def resolve_template_path(template: str) -> Path | None:
    """A template file: absolute, relative to the working directory, or to ``deployments/``."""
    path = Path(template).expanduser()
    for candidate in (path, PACKAGE_DIR / path) if not path.is_absolute() else (path,):
        if candidate.is_file():
            return candidate.resolve()
    return None


class VLLMEngineConfig(BaseModel):
    """``engine_args`` of a ``kind: vllm`` model: what :class:`VLLMEngine` hands to vLLM.

    On CPU set ``dtype: float32`` and ``enforce_eager: true`` (bfloat16 answered garbage and
    compiling took minutes there); the CPU KV cache is sized by the ``VLLM_CPU_KVCACHE_SPACE``
    environment variable (GiB) of the replica, not by ``gpu_memory_utilization``.
    """

    model_config = ConfigDict(extra="forbid")

    source: ModelSource  # a ModelSource mapping or "package:...", "hub:...", "local:...", a path
    served_model_name: str | None = None  # defaults to the model card's name
    dtype: str = "auto"  # "float32" on CPU
    enforce_eager: bool = False  # true on CPU
    max_model_len: int | None = None  # default: the model's own limit
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    tool_call_parser: str | None = None  # a vLLM tool parser name ("hermes", "llama3_json", ...)
    # How far tool calls are constrained by structured output (vLLM's --tool-strict-level):
    # "auto" only pins forced calls (tool_choice required / named) to the call envelope,
    # "function" does so for every request with tools, "parameter" also pins the arguments to
    # each tool's JSON schema (as if every tool were `strict: true`).
    tool_strict_level: Literal["auto", "function", "parameter"] = "auto"
    reasoning_parser: str | None = None  # a vLLM reasoning parser name ("deepseek_r1", "qwen3", ...)
    # A Jinja template, or a path to one (a relative path is looked up in deployments/, where
    # chat_templates/ ships with the project); default: the model's own.
    chat_template: str | None = None
    default_chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    enable_prefix_caching: bool | None = None
    seed: int | None = None
    trust_remote_code: bool = False
    log_stats: bool = True  # vLLM's periodic throughput log lines
    model_cache_dir: str | None = None  # where GGUF sources are imported; default $LLM_MODEL_CACHE
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # any other AsyncEngineArgs field

    @field_validator("chat_template")
    @classmethod
    def _template_exists(cls, value: str | None) -> str | None:
        if value is not None and looks_like_path(value) and resolve_template_path(value) is None:
            raise ValueError(f"chat template file {value} not found (relative paths are looked up in {PACKAGE_DIR})")
        return value

    def chat_template_text(self) -> str | None:
        """The chat template itself (read from its file when a path was given), or ``None``."""
        if self.chat_template is None or not looks_like_path(self.chat_template):
            return self.chat_template
        path = resolve_template_path(self.chat_template)
        assert path is not None  # checked when the config was validated
        return path.read_text()

    def engine_args(self, model: str, served_name: str, *, runner: Literal["generate", "pooling"]) -> dict[str, Any]:
        """Keyword arguments for ``vllm.engine.arg_utils.AsyncEngineArgs``."""
        args: dict[str, Any] = {
            "model": model,
            "served_model_name": served_name,
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
            "trust_remote_code": self.trust_remote_code,
            "disable_log_stats": not self.log_stats,
            "runner": runner,
        }
        optional = {
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "enable_prefix_caching": self.enable_prefix_caching,
            "seed": self.seed,
        }
        args.update({k: v for k, v in optional.items() if v is not None})
        if self.reasoning_parser and runner == "generate":
            # The engine core needs it too: structured output starts after the reasoning ends.
            args["reasoning_parser"] = self.reasoning_parser
        clash = set(self.engine_kwargs) & set(args)
        if clash:
            raise ValueError(f"engine_kwargs repeats fields set elsewhere in the config: {sorted(clash)}")
        args.update(self.engine_kwargs)
        return args
