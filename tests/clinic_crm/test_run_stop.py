"""`make run` on the port asked for, and Ctrl-C stopping the web server and the worker cleanly.

The second test drives the Makefile itself, as a person at a terminal would: `make run PORT=…`
in a process group of its own on a scratch SQLite database, waits for the port to answer, sends
SIGINT to the whole group (what Ctrl-C does) and then looks in /proc for anything it left.
"""

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90  # a ceiling: ~20 s on an idle 2-core box (five Django start-ups), more when busy
STOP_TIMEOUT = 60  # a ceiling: a few seconds when idle; the worker first ends the task it runs


def test_demo_admin_prints_the_addresses_of_the_host_and_port_asked_for(db, settings):
    # given a development box
    settings.DEBUG = True
    out = io.StringIO()

    # when make run passes the port, and a host on every interface
    call_command("demo_admin", host="0.0.0.0", port=8001, stdout=out)  # noqa: S104

    # then each address printed is one a browser here opens on that port
    printed = out.getvalue()
    assert "http://127.0.0.1:8001/desk/" in printed
    assert "http://127.0.0.1:8001/admin/" in printed
    assert ":8000" not in printed


def test_demo_admin_brackets_an_ipv6_host(db, settings):
    settings.DEBUG = True
    out = io.StringIO()

    call_command("demo_admin", host="::1", port=8002, stdout=out)

    assert "http://[::1]:8002/desk/" in out.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live process: pid -> (parent pid, session id, start time); zombies left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        # The command name (field 2) is in parentheses and may itself hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid, _pgrp, session = fields[0], int(fields[1]), fields[2], int(fields[3])
        if state != "Z":
            found[int(entry.name)] = (ppid, session, fields[19])
    return found


def _descendants(root: int) -> dict[int, tuple[int, int, str]]:
    table = _processes()
    family, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, row in table.items():
            if row[0] == parent and pid not in family:
                family[pid] = row
                frontier.append(pid)
    return family


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists() or shutil.which("make") is None,
    reason="needs Linux /proc and make",
)
def test_ctrl_c_stops_make_run_web_server_and_worker_without_traceback_or_leftovers(tmp_path):
    # given `make run` on a free port and a scratch database, as from a terminal
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "DEMO_ADMIN_PASSWORD"}
    }
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}", "DEBUG": "1"}
    log = (tmp_path / "make-run.log").open("w+")
    # -o: the virtualenv and the compiled messages are make test's own first steps; rebuilding
    # them here would only slow the test down.
    command = ["make", "-o", ".venv/.deps-installed", "-o", "messages", "run", f"PORT={port}"]
    make = subprocess.Popen(  # noqa: S603 - a fixed command
        command,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_as_at_a_terminal,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            assert make.poll() is None, _tail(log)
            assert time.monotonic() < deadline, "nothing answered on the port\n" + _tail(log)
            time.sleep(0.3)
        # The worker is up too: its cluster announces itself before it takes work.
        while "running." not in _text(log) and time.monotonic() < deadline:
            time.sleep(0.3)
        started = _descendants(make.pid)
        assert any("runserver" in _cmdline(pid) for pid in started), _tail(log)
        assert any("qcluster" in _cmdline(pid) for pid in started), _tail(log)

        # when Ctrl-C reaches the terminal's process group
        os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("still running after Ctrl-C:\n" + _still_running(make.pid) + _tail(log))
    finally:
        if make.poll() is None:
            # The worker has a session of its own: a failed test must not leave it running.
            for session in {row[1] for row in _descendants(make.pid).values()}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(session, signal.SIGKILL)
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()

    # then everything make started has ended, the worker's own session included
    output = _text(log)
    # Same pid and same start time: the same process, wherever it has been reparented to.
    alive = _processes()
    leftovers = [pid for pid in started if pid in alive and alive[pid][2] == started[pid][2]]
    assert leftovers == [], [_cmdline(pid) for pid in leftovers]
    assert "Traceback" not in output, output
    assert "has stopped" in output, output  # the worker stopped itself, it was not killed
    assert not _answers(port)
    # and the addresses printed were those of the port asked for
    assert f"http://127.0.0.1:{port}/desk/" in output
    assert ":8000/" not in output


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _as_at_a_terminal() -> None:
    # A terminal's Ctrl-C: whatever this test process was left with by what ran in it before
    # (an ignored SIGINT is inherited across exec), make starts with the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _still_running(root: int) -> str:
    """Each process under `root`: its command, state and ignored-signal mask, for a failure."""
    lines = []
    for pid in [root, *_descendants(root)]:
        try:
            status = (Path("/proc") / str(pid) / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        state, ignored = fields.get("State", "").strip(), fields.get("SigIgn", "").strip()
        lines.append(f"{pid} [{state}] SigIgn={ignored} {_cmdline(pid)}")
    return "\n".join(lines) + "\n"


def _text(log) -> str:
    log.flush()
    return Path(log.name).read_text(errors="replace")


def _tail(log) -> str:
    return _text(log)[-3000:]
