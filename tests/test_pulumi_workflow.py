"""The standard Pulumi workflow from a fresh clone (issue 16 #1), against the local Supabase stand-in.

A Pulumi user makes the program's virtualenv from requirements.txt, with `pulumi install` or with the
README's `python3 -m venv venv && venv/bin/pip install -r requirements.txt`, then previews, deploys
and destroys. Only the engine comes from scripts/setup.sh (the bin directory it builds); there is no
virtualenv of the repository's on PATH, and pip installs from the package index (or its cache).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from engine_support import PASSPHRASE
from package_support import fresh_tree

from devtools.pulumi_cli import REPO, Workspace

SECURE = "secure-webhooks:index:SecureWebhooks$pulumi-python:dynamic/secure-webhooks"
TRIGGERS = """
SELECT count(*) FROM pg_trigger
 WHERE tgrelid IN ('public.resumes'::regclass, 'public.zip_archives'::regclass) AND NOT tgisinternal"""
FUNCTION = "SELECT to_regprocedure('public.notify_orchestrator_secure()') IS NOT NULL"
CRON_JOB = "SELECT count(*) FROM cron.job WHERE jobname = 'secure_webhooks_reconciler'"
# What the program imports comes from the clone's own virtualenv; the dev tools are not in it.
PROBE = """
import importlib.util, sys
import secure_webhooks
print(secure_webhooks.__file__)
print(sorted(name for name in ("pytest", "ruff", "standardwebhooks") if importlib.util.find_spec(name)))
"""


@pytest.fixture(autouse=True)
def no_repository_virtualenv(monkeypatch):
    """The shell of a user who has not activated any virtualenv: `python3` is the system's."""
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    venv_bin = str(REPO / "venv" / "bin")
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin))


def workspace_for(project: Path, tmp_path: Path, bin_dir: Path) -> Workspace:
    return Workspace(project, tmp_path / "clone-pulumi", passphrase=PASSPHRASE, bin_dir=bin_dir)


def probe(project: Path) -> tuple[str, str]:
    """(secure_webhooks' file, dev tools found) in the clone's virtualenv, run from outside the clone so that
    the import cannot come from the current directory."""
    python = project / "venv" / "bin" / "python"
    ran = subprocess.run([str(python), "-c", PROBE], cwd=project.parent, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    module_file, dev_tools = ran.stdout.splitlines()
    return module_file, dev_tools


def configured_stack(engine, workspace: Workspace):
    return engine.database_stack(
        workspace,
        "dev",
        {"secure-webhooks:orchestratorUrl": engine.orchestrator.url, "secure-webhooks:manageExtensions": "false"},
    )


def test_pulumi_install_then_preview_up_destroy_from_a_fresh_clone(engine, tmp_path):
    project = fresh_tree(tmp_path / "clone")
    assert not (project / "venv").exists()
    workspace = workspace_for(project, tmp_path, engine.workspace.bin_dir)

    started = time.monotonic()
    installed = workspace.run("install")
    print(f"pulumi install (virtualenv and requirements.txt): {time.monotonic() - started:.1f} s")
    printed = installed.stdout + installed.stderr
    assert "Creating virtual environment" in printed and "Finished installing dependencies" in printed
    module_file, dev_tools = probe(project)
    assert Path(module_file).is_relative_to(project / "components"), "the clone's package, editable"
    assert dev_tools == "[]", "requirements.txt holds what the program needs, not the dev tools"

    stack = configured_stack(engine, workspace)
    planned = set(stack.preview_steps())
    assert ("create", "secure-webhooks:index:SecureWebhooks::secure-webhooks") in planned
    assert ("create", f"{SECURE}:Installation::secure-webhooks-installation") in planned
    assert len([step for step in planned if step[1].startswith(f"{SECURE}:WebhookTrigger::")]) == 2

    stack.up()
    resources = stack.export()["deployment"]["resources"]
    print(f"resources after up: {len(resources)}")
    assert len(resources) >= len(planned)
    with engine.connect() as conn:
        assert conn.execute(TRIGGERS).fetchone() == (2,)
        assert conn.execute(FUNCTION).fetchone() == (True,)
        assert conn.execute(CRON_JOB).fetchone() == (1,)
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('fresh-clone.pdf', 'r/')")
    # Bounds for a loaded machine, not expectations: each wait returns as soon as its condition holds.
    first = engine.orchestrator.wait_for(1, timeout=60)[0]
    assert first.status == 200 and first.body["record"]["name"] == "fresh-clone.pdf"
    engine.wait_until_delivered(timeout=60)  # destroy refuses while an event waits

    stack.destroy()
    assert stack.export()["deployment"].get("resources", []) == []
    with engine.connect() as conn:
        assert conn.execute(TRIGGERS).fetchone() == (0,)
        assert conn.execute(FUNCTION).fetchone() == (False,)
        assert conn.execute(CRON_JOB).fetchone() == (0,)


def test_the_readme_virtualenv_commands_make_a_program_pulumi_previews(engine, tmp_path):
    """README: `python3 -m venv venv && venv/bin/pip install -r requirements.txt`, then `pulumi preview`."""
    project = fresh_tree(tmp_path / "clone")
    started = time.monotonic()
    for command in (["python3", "-m", "venv", "venv"], ["venv/bin/pip", "install", "-q", "-r", "requirements.txt"]):
        ran = subprocess.run(command, cwd=project, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    print(f"python3 -m venv venv && venv/bin/pip install -r requirements.txt: {time.monotonic() - started:.1f} s")
    module_file, _ = probe(project)
    assert Path(module_file).is_relative_to(project / "components")

    stack = configured_stack(engine, workspace_for(project, tmp_path, engine.workspace.bin_dir))
    planned = stack.preview_steps()
    assert ("create", "secure-webhooks:index:SecureWebhooks::secure-webhooks") in planned
    assert len([step for step in planned if step[1].startswith(f"{SECURE}:WebhookTrigger::")]) == 2


def test_a_first_preview_without_a_virtualenv_makes_it_from_requirements_txt(engine, tmp_path):
    """As upstream's host does: `pulumi preview` in a clone whose virtualenv is missing creates and fills it."""
    project = fresh_tree(tmp_path / "clone")
    stack = configured_stack(engine, workspace_for(project, tmp_path, engine.workspace.bin_dir))
    started = time.monotonic()
    previewed = stack.preview()
    print(f"first pulumi preview, virtualenv included: {time.monotonic() - started:.1f} s")
    assert "Creating virtual environment" in previewed.stdout + previewed.stderr
    module_file, dev_tools = probe(project)
    assert Path(module_file).is_relative_to(project / "components") and dev_tools == "[]"
    planned = stack.preview_steps()
    assert ("create", "secure-webhooks:index:SecureWebhooks::secure-webhooks") in planned
    assert len([step for step in planned if step[1].startswith(f"{SECURE}:WebhookTrigger::")]) == 2
