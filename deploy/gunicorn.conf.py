"""gunicorn for the clinic CRM: `gunicorn -c deploy/gunicorn.conf.py clinic_crm.wsgi`.

Behind a TLS proxy (deploy/nginx.conf) on the same host. Every value can be overridden from the
environment with GUNICORN_CMD_ARGS, e.g. GUNICORN_CMD_ARGS="--workers 5".
"""

import multiprocessing
import os
import shutil

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Pages are database-bound and short; two per core plus one is gunicorn's own advice.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
# An import upload or an export of a long list may take a while; webhooks answer in well under 1 s.
timeout = 120
graceful_timeout = 30
# Recycle workers now and then so a slow leak never grows into an outage.
max_requests = 2000
max_requests_jitter = 200
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = "-"
# No query strings in the access log: a search for a patient's name or phone is in one.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'
errorlog = "-"

# /metrics adds up the counters of every worker process (clinic_crm/health.py): they keep them
# in PROMETHEUS_MULTIPROC_DIR, which must be empty when gunicorn starts.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def on_starting(server):
    if _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
        os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server, worker):
    if _metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
