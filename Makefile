# runtimeguard: build, test, package.
#
#   make demo    build what is needed, trace the host while a small workload runs, then guard a command
#   make test    the test suite (real kernel, needs root)
#   make wheel   dist/runtimeguard-*.whl, with libbpf, libelf and zlib linked in
#   make bench   the benchmarks

PYTHON ?= python3
APT_PACKAGES := clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev pkg-config make gcc bzip2 util-linux
PY_RUNTIME := "cffi>=1.16,<3" "msgspec>=0.18.5,<0.23" "pyyaml>=6,<7" "pyelftools>=0.29,<0.34" "dnspython>=2.4,<3"
PY_EXTRAS := "opentelemetry-sdk>=1.25,<2" "opentelemetry-exporter-otlp-proto-http>=1.25,<2" "prometheus-client>=0.20,<1"
PY_TEST := "pytest>=7,<10" "hypothesis>=6.80,<7" "jsonschema>=4,<5" "numpy>=1.22,<3" "opentelemetry-proto>=1.25,<2"

.PHONY: deps py-deps build demo test wheel bench clean

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
	@$(PYTHON) -c "import cffi, msgspec, yaml, elftools, dns, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.proto, prometheus_client, pytest, hypothesis, jsonschema, numpy, wheel, setuptools" 2>/dev/null || \
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

wheel: deps py-deps
	$(PYTHON) -m pip wheel --no-deps --no-build-isolation -w dist .

bench: build
	$(PYTHON) bench/run.py

clean:
	rm -rf build dist *.egg-info runtimeguard/_native*.so runtimeguard/__pycache__
