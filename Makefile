# imgtrain: `make demo` and `make test` are the whole quick start.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Both tiers run on every core (at most 4): tests that share a trained run are one group, on one
# worker (tests/conftest.py). PYTEST_JOBS=0 runs them in this process, as plain pytest does.
PYTEST_JOBS ?= auto
XDIST := $(if $(filter 0,$(PYTEST_JOBS)),,-n $(PYTEST_JOBS) --maxprocesses=4 --dist loadgroup)

.PHONY: install demo test test-fast lint image-test clean help

help:
	@echo "make install   create $(VENV) with imgtrain, its test tools and Horovod (built from source)"
	@echo "make demo      train, evaluate and report on scikit-learn's bundled digits"
	@echo "make test      run the whole test suite (slow multi-process tests included)"
	@echo "make test-fast skip the tests marked slow"
	@echo "make lint      ruff: lint rules and formatting (configured in pyproject.toml)"
	@echo "make image-test build the CPU image with podman on a local Debian base and run it (root)"

install: $(STAMP)

# Compiled at install (not --no-compile): with lazy compiling, the suite's first mlflow server
# compiled mlflow, SQLAlchemy and alembic under load and missed its 180 s start-up limit.
# TensorFlow first (the cpu extra's pin); then Horovod's wheel compiles against it
# (launch/install_horovod.sh --wheel, which writes nothing into the venv) while pip installs the
# rest, and is installed last, so two pips never write into the venv at once.
# (tomllib is Python 3.11's; on 3.10 the copy pip carries reads the file.)
define TENSORFLOW_PIN
try:
    import tomllib
except ImportError:
    from pip._vendor import tomli as tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["cpu"]
print(*(r for r in extra if r.startswith("tensorflow")), sep="\n")
endef
export TENSORFLOW_PIN

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "$$TENSORFLOW_PIN" > $(VENV)/tensorflow.txt
	$(PIP) install --quiet -r $(VENV)/tensorflow.txt
	rm -rf $(VENV)/horovod-wheel
	bash launch/install_horovod.sh $(PY) --wheel $(VENV)/horovod-wheel & build=$$!; \
	  $(PIP) install --quiet -e '.[cpu,test]' || { kill $$build; exit 1; }; \
	  wait $$build
	bash launch/install_horovod.sh $(PY) --wheel $(VENV)/horovod-wheel
	touch $(STAMP)

demo: install
	$(PY) -m imgtrain.demo

test: install lint
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

image-test: install
	$(PY) tests/image_check.py

clean:
	rm -rf $(VENV) runs data/digits .pytest_cache
