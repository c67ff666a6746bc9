"""Issue 15 #8 through the real engine: an EXECUTE grant to any role and a re-pointed pg_cron job are drift.

`UPDATE cron.job SET nodeport = 1` stopped every delivery while `pulumi preview --refresh`
reported nothing; a grant of EXECUTE on the SECURITY DEFINER function to any role but PUBLIC
and the API roles went unnoticed. Both now fail `preview --refresh --expect-no-changes`, and
`up --refresh` repairs them: a new insert is delivered again.
"""

from __future__ import annotations

from test_engine_stacks import insert

SECURE = "secure-webhooks:index:SecureWebhooks$pulumi-python:dynamic:Resource"


def test_a_job_pointed_elsewhere_and_a_function_granted_to_a_role_are_drift_that_up_repairs(engine):
    stack = engine.stack("dev")
    stack.up()
    with engine.connect("supabase_admin") as admin:
        admin.execute("CREATE ROLE reporting NOLOGIN")
    with engine.connect() as conn:
        before = conn.execute("SELECT nodename, nodeport, database FROM cron.job").fetchone()
        conn.execute("UPDATE cron.job SET nodeport = 1 WHERE jobname = 'secure_webhooks_reconciler'")
        conn.execute("GRANT EXECUTE ON FUNCTION public.notify_orchestrator_secure() TO reporting")

    assert stack.preview("--refresh", "--expect-no-changes", check=False).returncode != 0
    changes = {(op, name.rsplit("::", 1)[-1]) for op, name in stack.preview_steps("--refresh")}
    changes -= {(op, name) for op, name in changes if op in ("same", "refresh")}
    print(f"\ndrift seen: {sorted(changes)}")
    assert changes == {("update", "secure-webhooks-reconciler-schedule"), ("update", "secure-webhooks-function")}

    stack.up("--refresh")
    stack.preview("--refresh", "--expect-no-changes")
    with engine.connect() as conn:
        assert conn.execute("SELECT nodename, nodeport, database FROM cron.job").fetchone() == before
        granted = "SELECT has_function_privilege('reporting', 'public.notify_orchestrator_secure()', 'EXECUTE')"
        assert conn.execute(granted).fetchone() == (False,)
        insert(conn, "resumes", "after-repair.pdf")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.body["record"]["name"] == "after-repair.pdf"
    engine.wait_until_delivered()
    stack.destroy()
