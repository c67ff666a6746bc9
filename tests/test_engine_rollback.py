"""Issue 10 #1 and #2 through the real engine: no refresh, re-create, lost state or killed CLI loses a rollback.

Every adopted object's record is in the database (secure_webhooks/adoption.py), so `pulumi
destroy` gives back the legacy webhooks, the seed's function and the Vault secret's description
exactly, whatever happened to the Pulumi state in between.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
from engine_support import JWT_SECRET
from test_engine_stacks import TRIGGERS

from local_supabase.bootstrap import install_legacy_webhooks

STORE = "secure_webhooks_rollback.adopted"
SEED_FUNCTION = """
CREATE FUNCTION public.notify_orchestrator_secure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1;  -- the seed's hand-made version
  RETURN NULL;
END;
$$"""
FUNCTION = """
SELECT pg_get_functiondef(p.oid), obj_description(p.oid, 'pg_proc'),
       (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(p.proacl) a)
  FROM pg_proc p WHERE p.oid = to_regprocedure('public.notify_orchestrator_secure()')"""
VAULT = "SELECT decrypted_secret, description FROM vault.decrypted_secrets WHERE name = 'app_jwt_secret'"
WAITING_FOR_LOCK = """
SELECT count(*) FROM pg_stat_activity
 WHERE application_name = 'secure-webhooks (pulumi)' AND wait_event_type = 'Lock'"""


def records(conn: psycopg.Connection) -> list[tuple[str, list[str]]]:
    """(kind, object) of every adoption record; [] once the store is gone."""
    if conn.execute("SELECT to_regclass(%s)", (STORE,)).fetchone()[0] is None:
        return []
    return conn.execute(f"SELECT kind, object FROM {STORE} ORDER BY 1, 2").fetchall()


def snapshot(conn: psycopg.Connection) -> dict[str, Any]:
    """Triggers on public tables, the function (grants sorted) and the Vault secret, as the catalog shows them."""
    return {
        "triggers": conn.execute(TRIGGERS).fetchall(),
        "function": conn.execute(FUNCTION).fetchone(),
        "vault": conn.execute(VAULT).fetchall(),
    }


def dev_stack(engine, **config: Any):
    stack = engine.stack("dev", **config)
    stack.set_secret("secure-webhooks:jwtSecret", JWT_SECRET)  # the Vault's own value: adopted
    return stack


def test_drift_repair_and_a_lost_state_keep_every_rollback(engine):
    """Issue 10 #1: ours dropped out of band, `up --refresh` re-creates it, destroy restores the legacy one.

    The same for the seed's function and the Vault secret, then once more after the state is lost
    altogether (`stack rm --force` and a new stack of that name), and after a refresh alone.
    """
    with engine.connect() as conn:
        install_legacy_webhooks(conn, engine.orchestrator.url)
        conn.execute(SEED_FUNCTION)
        legacy = snapshot(conn)
    assert legacy["function"] is not None and legacy["vault"] == [(JWT_SECRET, "")]
    stack = dev_stack(engine)
    stack.up()
    adopted = [
        ("function", ["public", "notify_orchestrator_secure()"]),
        ("trigger", ["public", "resumes", "orchestrator-ingest-interns-individual"]),
        ("trigger", ["public", "zip_archives", "orchestrator-injest-resumes-batch"]),
        ("vault secret", ["app_jwt_secret"]),
    ]
    with engine.connect() as conn:
        assert records(conn) == adopted
        conn.execute('DROP TRIGGER "orchestrator-ingest-interns-individual" ON public.resumes')
        conn.execute("DROP FUNCTION public.notify_orchestrator_secure() CASCADE")  # and the other trigger
        conn.execute("DELETE FROM vault.secrets WHERE name = 'app_jwt_secret'")
        assert conn.execute(TRIGGERS).fetchall() == []

    repaired = stack.up("--refresh")
    assert "adopted existing" not in repaired.stdout  # nothing was there to adopt: the records were kept
    with engine.connect() as conn:
        assert records(conn) == adopted
        assert [row[1] for row in conn.execute(TRIGGERS).fetchall()] == [row[1] for row in legacy["triggers"]]
    state = json.dumps(stack.export())
    assert "static" not in state and JWT_SECRET not in state  # the state's copy is still a secret

    lost_instance = stack.outputs()["instance"]
    stack.remove()  # the state is lost; the objects stay, marked as this stack's
    stack = dev_stack(engine)
    refused = stack.up(check=False)  # a new instance of the stack: the claim names the lost one
    assert refused.returncode != 0 and f"secure-webhooks:replacesInstance {lost_instance}" in refused.stdout
    stack.set_config({"secure-webhooks:replacesInstance": lost_instance})  # as that message says
    stack.up()
    with engine.connect() as conn:
        assert records(conn) == adopted
        conn.execute('DROP TRIGGER "orchestrator-ingest-interns-individual" ON public.resumes')
    stack.refresh()  # and no `up`: the trigger stays in the state, so destroy still restores the legacy one
    assert "static" not in json.dumps(stack.export())

    stack.destroy()
    with engine.connect() as conn:
        assert snapshot(conn) == legacy
        assert records(conn) == []
        assert conn.execute("SELECT to_regnamespace('secure_webhooks_rollback')").fetchone()[0] is None


def session_processes(session: int) -> dict[int, str]:
    """{pid: command line} of the live processes in `session` (a killed CLI's children keep it)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session and fields[0] != "Z":
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_kill_9_while_waiting_for_a_lock_then_up_and_destroy_restore_the_legacy_webhooks(engine):
    """Issue 10 #2: SIGKILL of `pulumi up` while the provider waits for a table lock.

    The provider notices its engine is gone, cancels its statement and exits: nothing commits
    after the CLI died and no provider survives it. Then what the README tells the user to do
    (`pulumi cancel`, `pulumi refresh --clear-pending-creates`, `pulumi up`) and `pulumi destroy`
    give the legacy webhooks back exactly.
    """
    with engine.connect() as conn:
        install_legacy_webhooks(conn, engine.orchestrator.url)
        legacy = snapshot(conn)
    stack = engine.stack("dev")
    with psycopg.connect(engine.cluster.dsn("postgres")) as locker, engine.connect() as watcher:
        # Both tables: whichever trigger the engine creates first waits, and the other waits behind it.
        locker.execute("LOCK TABLE public.resumes, public.zip_archives IN ACCESS EXCLUSIVE MODE")
        cli = stack.start("up", "--yes", "--skip-preview", start_new_session=True)
        deadline = time.monotonic() + 120
        while watcher.execute(WAITING_FOR_LOCK).fetchone()[0] == 0:
            assert cli.poll() is None, cli.stdout.read()
            assert time.monotonic() < deadline, "the provider never waited for the lock"
            time.sleep(0.05)
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        locker.rollback()  # the lock is free again, well inside the provider's lock_timeout (5 s)
    cli.stdout.close()

    # The bound only ends a failure: on a busy machine the three take their time to notice.
    deadline = time.monotonic() + 60
    try:  # the provider, the language host and the program all notice their engine is gone
        while session_processes(cli.pid):
            assert time.monotonic() < deadline, f"processes outlived the killed CLI: {session_processes(cli.pid)}"
            time.sleep(0.2)
    finally:
        for pid in session_processes(cli.pid):  # a failure's leftovers
            os.kill(pid, signal.SIGKILL)
    with engine.connect() as conn:
        assert conn.execute(TRIGGERS).fetchall() == legacy["triggers"], "nothing committed after the CLI died"
        assert conn.execute(WAITING_FOR_LOCK).fetchone()[0] == 0

    stack.run("cancel", "--yes")  # the dead CLI's lock on the stack
    stack.refresh("--clear-pending-creates")
    stack.up()
    with engine.connect() as conn:
        assert len(records(conn)) == 2
    destroyed = stack.destroy()
    assert "pending operations" not in destroyed.stdout + destroyed.stderr
    with engine.connect() as conn:
        assert snapshot(conn) == legacy
        assert records(conn) == []
