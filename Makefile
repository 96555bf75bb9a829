# Agentry: `make run` starts the whole platform, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONPATH := $(CURDIR):$(CURDIR)/libs/protos
export BUF_CACHE_DIR := $(CURDIR)/.cache/buf
# gRPC's fork handlers crash a child between fork and exec (grpc/grpc#43055); we only ever
# fork to exec (servers, services, process pools), so they are off everywhere.
export GRPC_ENABLE_FORK_SUPPORT := false

PROTO_FILES := $(shell find protos -name '*.proto' | sort)
GEN_DIR := libs/protos

.PHONY: venv debs certs run test lint format protos check-protos bench k8s images clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	printf '%s\n' "$(CURDIR)" "$(CURDIR)/libs/protos" > \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/agentry-checkout.pth"
	touch $@

# Debian packages the suite drives (Chromium for the dashboard's browser tests, promtool for
# the alert rules), installed when missing; without root or sudo, the tests that need them
# say so and skip.
DEBIAN_PACKAGES := chromium prometheus
debs:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done | tr "\n" " "); \
	if [ -n "$$missing" ]; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian packages: $$missing"; \
		{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; } || echo "could not install $$missing" >&2; \
	fi

# The dev CA, a certificate per service, the token and data keys, in .dev/ (made again
# when missing or about to expire; `make run` does this too).
certs: venv
	$(PY) -m dev.secrets .dev

run: venv certs
	$(PY) -m dev.run

test: venv debs lint check-protos
	$(PY) -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/common services dev cli
	$(BIN)/buf lint protos
	$(BIN)/buf format --diff --exit-code protos

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/buf format -w protos

# Generated code lives in libs/protos only, written by this target and committed.
protos: venv
	rm -rf $(GEN_DIR)/agentry
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
		--mypy_out=$(GEN_DIR) --mypy_grpc_out=$(GEN_DIR) $(PROTO_FILES)

# Fails when the committed generated code differs from what the protos generate.
check-protos: venv
	rm -rf .cache/protos-check && mkdir -p .cache/protos-check
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=.cache/protos-check --grpc_python_out=.cache/protos-check \
		--mypy_out=.cache/protos-check --mypy_grpc_out=.cache/protos-check $(PROTO_FILES)
	diff -r .cache/protos-check/agentry $(GEN_DIR)/agentry || \
		(echo "libs/protos is stale: run 'make protos' and commit" >&2; exit 1)

bench: venv
	$(PY) -m bench.run
	$(PY) -m bench.workflows
	$(PY) -m bench.events_ws
	$(PY) -m bench.insights

# The images and Kubernetes manifests, checked offline: kustomize renders, schemas, hadolint,
# promtool (docs/kubernetes.md, "Validation").
k8s: venv
	$(PY) -m pytest -q tests/deploy

IMAGE_TAG ?= dev
images:
	for s in task-agent orchestrator analysis gateway; do \
		docker build -f deploy/docker/$$s.Dockerfile -t agentry/$$s:$(IMAGE_TAG) . || exit 1; \
	done

clean:
	rm -rf .cache .dev
