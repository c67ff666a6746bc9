"""The alert URL through the real Pulumi engine (issue 17 part 3): a plaintext one is refused at preview,
a secret one reaches Vault and the reconciler posts to it, and it is in no state, output, stack file or
function source in plain text; destroy takes it and the alert tables away."""

from __future__ import annotations

import json

from waiting import eventually

from local_supabase.scripted_server import Reply, ScriptedServer
from secure_webhooks.delivery.alerts import ALERT_URL_SECRET

#: A Slack incoming-webhook URL's credential is its path.
TOKEN = "engineAlertToken7c6b5a"
SLACK_PATH = f"/services/T0ENGINE/B0ENGINE/{TOKEN}"
KEY = "secure-webhooks:delivery.alertUrl"


def test_the_alert_url_is_a_secret_from_config_to_vault(engine):
    with ScriptedServer(Reply(200, body=b"ok")) as slack:
        url = slack.url + SLACK_PATH
        stack = engine.stack("dev", delivery={"alertIntervalSeconds": 30})
        stack.run("config", "set", "--path", KEY, stdin=url)
        refused = stack.preview(check=False)
        assert refused.returncode != 0
        assert f"{KEY}: must be set as a secret" in refused.stdout + refused.stderr
        assert TOKEN not in refused.stdout + refused.stderr

        stack.run("config", "set", "--secret", "--path", KEY, stdin=url)
        assert TOKEN not in stack.config_file.read_text()
        stack.up()
        assert TOKEN not in json.dumps(stack.export()) and TOKEN not in json.dumps(stack.outputs())
        assert stack.outputs()["delivery"]["alerts"] == {
            "channel": "secure_webhooks_alerts",
            "url": f"in Vault ({ALERT_URL_SECRET})",
            "intervalSeconds": 30,
        }
        with engine.connect() as conn:
            (sources,) = conn.execute("SELECT string_agg(prosrc, ' ') FROM pg_proc").fetchone()
            assert TOKEN not in sources
            (kept,) = conn.execute(
                "SELECT decrypted_secret = %s FROM vault.decrypted_secrets WHERE name = %s", (url, ALERT_URL_SECRET)
            ).fetchone()
            assert kept
            conn.execute(
                "INSERT INTO secure_webhooks.endpoints (endpoint, state, paused_since, consecutive_failures)"
                " VALUES ('https://orchestrator.example.com', 'paused', now(), 5)"
            )
            eventually(lambda: slack.received, "the paused alert, posted by the pg_cron job", timeout=120)
            (posted,) = slack.received
            assert posted.path == SLACK_PATH and json.loads(posted.body)["type"] == "endpoint.paused"

        stack.destroy()
        with engine.connect() as conn:
            left = conn.execute(
                "SELECT (SELECT count(*) FROM vault.secrets WHERE name = %s), to_regclass('secure_webhooks.alerts')",
                (ALERT_URL_SECRET,),
            ).fetchone()
            assert left == (0, None)
