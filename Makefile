# All set-up goes through this file: a project-local venv, pinned by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: install install-redux test test-fast demo bench clean

# traiNNer-redux runs from a clone (it is not on PyPI). When one is found here (CI: the snapshot in
# ../shared), `make install` adds the redux extra (its dependencies, pinned) so its tests run;
# without one they skip. `make install-redux` adds the extra in any case.
REDUX_ROOT ?= ../shared/thirdparty/traiNNer-redux
comma := ,
EXTRAS := all$(if $(wildcard $(REDUX_ROOT)/train.py),$(comma)redux,)

install: $(STAMP)

# torch is installed first so basicsr's sdist (which imports torch in setup.py) can build
# without build isolation: faster and offline-safe (docs/getting-started.md#why-torch-first). Each step retries once without
# pip's cache, which a concurrently killed pip can leave half-written.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt setuptools torch torchvision numpy \
	  || $(PIP) install -q --no-cache-dir -c constraints.txt setuptools torch torchvision numpy
	$(PIP) install -q -c constraints.txt --no-build-isolation -e ".[$(EXTRAS)]" \
	  || $(PIP) install -q --no-cache-dir -c constraints.txt --no-build-isolation -e ".[$(EXTRAS)]"
	# Real-ESRGAN's training code (registrations for the BasicSR-based-project tests); --no-deps:
	# its facexlib/gfpgan are for face enhancement at inference only (docs/getting-started.md)
	$(PIP) install -q --no-deps -c constraints.txt realesrgan \
	  || $(PIP) install -q --no-deps --no-cache-dir -c constraints.txt realesrgan
	touch $(STAMP)

install-redux: $(STAMP)
	$(PIP) install -q -c constraints.txt --no-build-isolation -e ".[all,redux]" \
	  || $(PIP) install -q --no-cache-dir -c constraints.txt --no-build-isolation -e ".[all,redux]"

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/coreset-sr demo $(if $(DATA),--data $(DATA),)

bench: $(STAMP)
	$(PY) -m benchmarks.bench_selection

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
