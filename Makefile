# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test venv chromium clean

# The stamp is rebuilt when the dependency list changes. torch is installed first and
# exactly at 2.13.0: this machine's CPU build; any other spec pulls GBs of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/metareg demo --out demo-output --overwrite

# The browser tests drive Debian's Chromium (never a browser downloaded by `playwright install`).
chromium:
	@test -x $(CHROMIUM) || command -v chromium >/dev/null || \
		{ echo "Installing Debian's chromium for the browser tests"; \
		  $$(command -v sudo) apt-get install -y -q chromium >/dev/null || \
		  { $$(command -v sudo) apt-get update -q >/dev/null && $$(command -v sudo) apt-get install -y -q chromium >/dev/null; }; }

test: venv chromium
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output
