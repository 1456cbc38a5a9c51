"""The per-request limits every API shares, checked on the internal request before the backend.

One place for all of them, whatever the wire format named the field (OpenAI's ``stop``,
Anthropic's ``stop_sequences``, Ollama's ``options.stop``): a request over a limit is a 400
naming the field in OpenAI's vocabulary, decided before any engine sees it. The OpenAPI
document states the same maxima, read from the same object.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.errors import InvalidRequest
from serve_app.core.internal_types import EmbeddingRequest, GenerationRequest


class RequestLimits(BaseModel):
    """Limits on one request (the body size limit is the edge's ``max_body_bytes``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_n: int = Field(default=8, ge=1, description="Choices per request (`n`).")
    max_embedding_inputs: int = Field(default=2048, ge=1, description="Inputs in one embedding request.")
    max_completion_prompts: int = Field(default=64, ge=1, description="Prompts in one `/v1/completions` batch.")
    max_stop_sequences: int = Field(default=16, ge=0, description="Stop strings per request.")
    max_top_logprobs: int = Field(
        default=20, ge=0, description="`top_logprobs` (vLLM's own default ceiling is 20)."
    )
    max_images: int = Field(default=16, ge=0, description="Images in one request, over all messages.")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Size of one decoded image.")
    max_prompt_chars: int = Field(
        default=2_000_000,
        ge=1,
        description="Characters of text in one request (messages, prompt, tool specs are not "
        "counted); the model's context length is checked by the engine as well.",
    )

    def check_generation(self, request: GenerationRequest) -> None:
        """Refuse a generation over any limit, naming the field."""
        sampling = request.sampling
        if sampling.n > self.max_n:
            raise InvalidRequest(f"'n' must be at most {self.max_n} on this server.", param="n")
        if len(sampling.stop) > self.max_stop_sequences:
            raise InvalidRequest(
                f"At most {self.max_stop_sequences} stop sequences are accepted on this server.", param="stop"
            )
        if (sampling.top_logprobs or 0) > self.max_top_logprobs:
            raise InvalidRequest(
                f"'top_logprobs' must be at most {self.max_top_logprobs} on this server.", param="top_logprobs"
            )
        self._check_text(request)
        self._check_images(request)

    def _check_text(self, request: GenerationRequest) -> None:
        chars = sum(len(m.text()) for m in request.messages)
        if isinstance(request.prompt, str):
            chars += len(request.prompt)
        chars += len(request.suffix or "")
        if chars > self.max_prompt_chars:
            param = "prompt" if request.kind == "completion" else "messages"
            raise InvalidRequest(
                f"The request has {chars} characters of text; this server accepts at most "
                f"{self.max_prompt_chars}.",
                param=param,
            )

    def _check_images(self, request: GenerationRequest) -> None:
        count = 0
        for i, message in enumerate(request.messages):
            for image in message.images():
                count += 1
                if count > self.max_images:
                    raise InvalidRequest(
                        f"At most {self.max_images} images per request are accepted on this server.",
                        param=f"messages[{i}].content",
                    )
                # Decoded size from the base64 length, without decoding.
                size = len(image.data_base64) * 3 // 4
                if size > self.max_image_bytes:
                    raise InvalidRequest(
                        f"An image of about {size} bytes is larger than this server's limit of "
                        f"{self.max_image_bytes} bytes.",
                        param=f"messages[{i}].content",
                    )

    def check_prompt_batch(self, count: int) -> None:
        """Refuse a ``/v1/completions`` batch of more prompts than the limit."""
        if count > self.max_completion_prompts:
            raise InvalidRequest(
                f"At most {self.max_completion_prompts} prompts per request are accepted on this server.",
                param="prompt",
            )

    def check_embedding(self, request: EmbeddingRequest) -> None:
        """Refuse an embedding request over the input-count or text limits."""
        if len(request.inputs) > self.max_embedding_inputs:
            raise InvalidRequest(
                f"At most {self.max_embedding_inputs} inputs per request are accepted on this server.",
                param="input",
            )
        chars = sum(len(item) for item in request.inputs if isinstance(item, str))
        if chars > self.max_prompt_chars:
            raise InvalidRequest(
                f"The inputs have {chars} characters of text; this server accepts at most {self.max_prompt_chars}.",
                param="input",
            )
