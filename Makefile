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
# The web pages and the django-q2 worker side by side: `make run [HOST=0.0.0.0] [PORT=8001]`.
# Ctrl-C stops both. The worker runs in its own session, out of the terminal's reach, and the
# shell stops it with exactly one SIGTERM once the web server has ended: django-q2 takes a
# signal at any moment of its start-up quietly, but a second one while it stops re-enters its
# handler (deadlock, or a screenful of RecursionError: the old `kill 0`).
HOST ?= 127.0.0.1
PORT ?= 8000
RUN_ADDR = $(if $(findstring :,$(HOST)),[$(HOST)],$(HOST))
# Tracked links in the demo's messages lead to this server.
run: export PUBLIC_BASE_URL ?= http://$(RUN_ADDR):$(PORT)
run: $(DEPS) messages
	$(MANAGE) migrate --verbosity 0
	$(MANAGE) seed_demo --patients 500 --if-empty
	$(MANAGE) setup_schedules
	$(MANAGE) demo_admin --host '$(HOST)' --port '$(PORT)'
	@case '$(HOST)' in 0.0.0.0|::) here="$$(hostname -I 2>/dev/null | tr -s ' ' ,)";; \
	  *) here='$(RUN_ADDR)';; esac; \
	export ALLOWED_HOSTS="$${ALLOWED_HOSTS:-127.0.0.1,localhost,$$here}"; \
	setsid $(MANAGE) qcluster & worker=$$!; \
	stop() { trap '' INT TERM HUP; kill -TERM $$worker 2>/dev/null; wait $$worker; }; \
	trap 'stop; exit 0' INT TERM HUP; \
	$(MANAGE) runserver '$(RUN_ADDR):$(PORT)'; \
	stop

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
# drops and recreates its own *_bench database on the local PostgreSQL (a few minutes in all);
# then the front desk's pages, timed on the database seed_demo.py has just filled; then the
# manager's dashboard and the week ahead over 1,000,000 outbox rows (its own database).
bench: $(DEPS)
	$(PY) bench/seed_demo.py
	$(PY) bench/planner.py
	$(PY) bench/planner.py --patients 1000000 --runs 3
	$(PY) bench/dispatch.py
	$(PY) bench/desk_pages.py
	$(PY) bench/search.py
	$(PY) bench/import_records.py
	$(PY) bench/dashboard_pages.py
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
