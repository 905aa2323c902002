# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv in the repo root when missing, so .venv/bin/hgltr exists afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# torch builds that lie on these machines' disk (pip takes them offline); any torch >= 2.4 works elsewhere.
ifeq ($(ARCH),x86_64)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
else
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
endif
# Debian packages: WordNet 3.0 (offline hierarchies) and Fashion-MNIST (offline quickstart data).
APT_PACKAGES := wordnet-base wordnet-sense-index dataset-fashion-mnist

.PHONY: setup system-deps demo test test-fast clean

$(BIN)/.hgltr-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(BIN)/.hgltr-installed system-deps

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: Debian packages$$missing are missing (needs root + apt-get); WordNet/Fashion-MNIST features will ask for them"; fi; \
	fi

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
