"""`python -m local_supabase start|status|stop` as a developer runs it by hand, through the real CLI.

The engine test is the session the CLI's --help shows: start with the example tables and the
receiver, point a stack at it with the commands `start` printed, `pulumi up`, insert, see every
row arrive with a token the receiver verified, `pulumi destroy`, stop, and nothing left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from waiting import eventually

from devtools.pulumi_cli import REPO, Workspace, copy_project, toolchain_bin

ROWS_PER_TABLE = 25
#: Bounds on conditions (a failure, not a wait): a loaded machine only makes them take longer.
DEADLINE = 300.0
#: A line of the receiver's log for a request whose token it verified: the row's table and id.
ACCEPTED = re.compile(r" 200 accepted POST \S+ INSERT (\S+) id=(\d+) token ok: role=service_role ")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a developer runs it from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "local_supabase", *args], cwd=REPO, capture_output=True, text=True, timeout=DEADLINE
    )


def running(pid: int) -> bool:
    """A zombie (exited, not yet reaped by whoever adopted it) has stopped running."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def postmaster_pid(connection: dict) -> int:
    return int((Path(connection["data_dir"]) / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The session's directory; a session a failed test left running is stopped."""
    directory = tmp_path / "db"
    yield directory
    if (directory / "connection.json").exists():
        cli("stop", "--state-dir", str(directory))


def start(state_dir: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = cli("start", "--state-dir", str(state_dir), *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads((state_dir / "connection.json").read_text())


def assert_gone(state_dir: Path, connection: dict, pids: list[int]) -> None:
    """No process of the session runs, the cluster's directory and the state directory are deleted."""
    assert [pid for pid in pids if running(pid)] == []
    assert not Path(connection["base_dir"]).exists()
    assert not state_dir.exists()


def test_start_twice_refuses_and_status_and_stop_say_what_they_find(state_dir: Path) -> None:
    _, connection = start(state_dir)
    pids = [int((state_dir / "session.pid").read_text()), postmaster_pid(connection)]

    status = cli("status", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "cluster:         up (PostgreSQL 15" in status.stdout
    assert "pg_net worker:   running, connected" in status.stdout
    assert "job:             secure_webhooks_reconciler not scheduled (yet)" in status.stdout

    again = cli("start", "--state-dir", str(state_dir))
    assert again.returncode == 1
    assert "already holds a local Supabase" in again.stderr and "Traceback" not in again.stderr
    assert cli("status", "--state-dir", str(state_dir)).returncode == 0  # the first session is untouched

    failed_sql = cli("sql", "--state-dir", str(state_dir), "SELECT * FROM no_such_table")
    assert failed_sql.returncode == 1
    assert 'relation "no_such_table" does not exist' in failed_sql.stderr and "Traceback" not in failed_sql.stderr

    stopped = cli("stop", "--state-dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert_gone(state_dir, connection, pids)
    for command in ("status", "stop"):
        result = cli(command, "--state-dir", str(state_dir))
        assert result.returncode == 1
        assert "no local Supabase" in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_stop_after_the_background_process_was_killed_still_stops_the_cluster(state_dir: Path) -> None:
    _, connection = start(state_dir)
    background = int((state_dir / "session.pid").read_text())
    postmaster = postmaster_pid(connection)
    os.kill(background, signal.SIGKILL)
    eventually(lambda: not running(background), "the background process ends", DEADLINE)

    status = cli("status", "--state-dir", str(state_dir))
    assert status.returncode == 1
    assert "cluster:         up" in status.stdout
    assert "pg_net worker:   NOT RUNNING: the background process is gone" in status.stdout

    stopped = cli("stop", "--state-dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert "the background process had already exited" in stopped.stdout
    assert "stopped the cluster" in stopped.stdout
    assert_gone(state_dir, connection, [background, postmaster])


def test_a_busy_receiver_port_fails_start_clearly_and_leaves_no_cluster(state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = cli("start", "--state-dir", str(state_dir), "--receiver", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert "Address already in use" in result.stderr and "Traceback" not in result.stderr
    assert not (state_dir / "connection.json").exists() and not (state_dir / "session.pid").exists()


def accepted_rows(state_dir: Path) -> Counter[tuple[str, int]]:
    """(table, row id) of every request the receiver accepted: its verifier checked the token."""
    log = state_dir / "receiver.log"
    lines = log.read_text().splitlines() if log.exists() else []
    assert [line for line in lines if " rejected " in line] == []
    found = (ACCEPTED.search(line) for line in lines)
    return Counter((match[1], int(match[2])) for match in found if match)


def test_a_session_by_hand_delivers_every_row_and_stops_clean(state_dir: Path, tmp_path: Path) -> None:
    began = time.monotonic()
    started, connection = start(state_dir, "--example-tables", "--receiver", "0")
    start_seconds = time.monotonic() - began
    workspace = Workspace(
        copy_project(REPO, tmp_path / "project"), tmp_path / "pulumi", passphrase="session", bin_dir=toolchain_bin()
    )
    stack = workspace.stack("local").init()
    printed = [line.strip() for line in started.stdout.splitlines() if line.strip().startswith("pulumi config set")]
    assert len(printed) == 3
    for command in printed:  # as the developer pastes them, in the project directory
        subprocess.run(command, shell=True, check=True, cwd=workspace.project_dir, env=workspace.env())

    began = time.monotonic()
    stack.up()
    up_seconds = time.monotonic() - began
    status = cli("status", "--state-dir", str(state_dir)).stdout
    assert "job:             secure_webhooks_reconciler scheduled" in status

    inserted = Counter()
    one = cli(
        "sql",
        "--state-dir",
        str(state_dir),
        "INSERT INTO public.resumes (name, storage_path) VALUES ('cv-0.pdf', 'resumes/') RETURNING id",
    )
    assert one.returncode == 0, one.stderr
    inserted[("public.resumes", int(one.stdout.split()[-1]))] += 1
    began = time.monotonic()
    with psycopg.connect(connection["dsn"]["postgres"], autocommit=True) as conn:
        conn.execute("SET ROLE authenticated")
        for index in range(1, ROWS_PER_TABLE):
            for table, name in (("resumes", f"cv-{index}.pdf"), ("zip_archives", f"batch-{index}.zip")):
                row = conn.execute(
                    f"INSERT INTO public.{table} (name, storage_path) VALUES (%s, 'files/') RETURNING id", (name,)
                ).fetchone()
                inserted[(f"public.{table}", row[0])] += 1
    started = time.monotonic()
    eventually(lambda: set(accepted_rows(state_dir)) == set(inserted), "every row delivered", DEADLINE)
    deliver_seconds = time.monotonic() - started
    delivered = accepted_rows(state_dir)
    print(
        f"\nsession: start {start_seconds:.1f} s, up {up_seconds:.1f} s; {sum(inserted.values())} rows inserted, "
        f"{len(delivered)} delivered with verified tokens ({sum(delivered.values())} requests) "
        f"{deliver_seconds:.1f} s after the last insert"
    )
    assert set(delivered) == set(inserted)
    # The background process counts a request once it has logged it: status may trail the log by a moment.
    counted = f"{sum(delivered.values())} accepted, 0 rejected"

    def counted_status() -> str:
        out = cli("status", "--state-dir", str(state_dir)).stdout
        return out if counted in out else ""

    status = eventually(counted_status, "status counts every delivery", DEADLINE)
    assert counted in status

    with psycopg.connect(connection["dsn"]["postgres"], autocommit=True) as conn:
        waiting = "SELECT count(*) FROM secure_webhooks.deliveries WHERE status <> 'delivered'"
        eventually(lambda: conn.execute(waiting).fetchone()[0] == 0, "the outbox records every delivery", DEADLINE)
    began = time.monotonic()
    stack.destroy()
    destroy_seconds = time.monotonic() - began
    stack.remove()

    pids = [int((state_dir / "session.pid").read_text()), postmaster_pid(connection)]
    began = time.monotonic()
    stopped = cli("stop", "--state-dir", str(state_dir))
    print(f"session: destroy {destroy_seconds:.1f} s, stop {time.monotonic() - began:.1f} s")
    assert stopped.returncode == 0, stopped.stderr
    assert_gone(state_dir, connection, pids)
