# The index of what one can do here. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MANAGE := $(PY) manage.py
DEPS   := $(VENV)/.deps-installed

.PHONY: run test lint bench worker messages clean

$(DEPS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

messages: $(DEPS)
	$(MANAGE) compilemessages --ignore=.venv --verbosity 0
# The web admin and the django-q2 worker side by side; Ctrl-C stops both.
run: $(DEPS) messages
	$(MANAGE) migrate --verbosity 0
	$(MANAGE) seed_demo --patients 500 --if-empty
	$(MANAGE) setup_schedules
	$(MANAGE) demo_admin
	trap 'kill 0' INT TERM EXIT; $(MANAGE) qcluster & $(MANAGE) runserver 127.0.0.1:8000

worker: $(DEPS)
	$(MANAGE) qcluster

test: $(DEPS) messages
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: $(DEPS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MANAGE) makemigrations --check --dry-run --verbosity 0

# Seeding, one planning pass against hand-written SQL, dispatch through a fake Twilio: each
# drops and recreates its own *_bench database on the local PostgreSQL (a few minutes in all).
bench: $(DEPS)
	$(PY) bench/seed_demo.py
	$(PY) bench/planner.py
	$(PY) bench/dispatch.py

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
