# One venv for everything; on machines without CUDA the CPU torch goes in first so
# the package's torch range is already satisfied and pip never pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0

.PHONY: setup test demo bench clean

# The search page's browser test drives Debian's Chromium through Playwright (no browser download).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

setup: $(VENV)/.installed $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q "torch>=2.4,<3"; \
	else \
		$(PY) -m pip install -q "$(TORCH_CPU)" || $(PY) -m pip install -q "$(TORCH_CPU)" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) training/demo.py --output_dir outputs/demo

bench: setup
	$(PY) benchmarks/benchmark_speed.py

clean:
	rm -rf $(VENV) outputs
