"""The repository builds one wheel, `secure-webhooks`, as a new user would (issue 11 #1).

It ships what components/ holds: the component `secure_webhooks` (with its sub-packages), the
operator command and the Python verifier, and nothing the repository only
needs for itself: no tests, bench/, devtools/, local_supabase/ or verifiers/.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from package_support import build_wheel, fresh_tree
from packaging.requirements import Requirement

from devtools.pulumi_cli import REPO

SHIPPED = {"secure_webhooks", "webhook_deliveries", "webhook_verifier"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(fresh_tree(tmp_path_factory.mktemp("clone")), tmp_path_factory.mktemp("dist"))


def test_the_wheel_ships_the_component_under_its_own_name_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == SHIPPED
    shipped_modules = {name for name in names if name.endswith(".py")}
    repo_modules = {
        path.relative_to(REPO / "components").as_posix()
        for package in SHIPPED
        for path in (REPO / "components" / package).rglob("*.py")
    }
    assert shipped_modules == repo_modules, "every module under components/<package>/ ships, sub-packages too"
    assert not [name for name in names if name.startswith(("tests/", "bench/", "devtools/", "local_supabase/"))]


def test_the_wheel_declares_what_it_imports(wheel):
    archive = zipfile.ZipFile(wheel)
    (metadata_name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(archive.read(metadata_name))
    required = {Requirement(entry).name.lower() for entry in metadata.get_all("Requires-Dist")}
    assert required == {"pulumi", "pulumi-postgresql", "psycopg", "pyjwt", "prometheus-client"}
    (entry_points,) = [name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")]
    assert "webhook-deliveries = webhook_deliveries.__main__:main" in archive.read(entry_points).decode()


def test_the_installed_wheel_imports_without_the_repository(wheel, tmp_path):
    """Installed elsewhere, the package stands alone: nothing imports components/ or the repo's folders."""
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-t", str(target), wheel],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = (
        "import sys, secure_webhooks, webhook_deliveries.__main__, webhook_verifier\n"
        "from secure_webhooks import SecureWebhooks, SecureWebhooksArgs, parse_settings, read_stack_config\n"
        "assert secure_webhooks.__file__.startswith(sys.argv[1]), secure_webhooks.__file__\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('components', 'devtools', 'local_supabase')]\n"
        "settings = parse_settings({'orchestratorUrl': 'https://api.example.com', 'webhooks': "
        "[{'name': 'w', 'table': 'resumes', 'path': '/ingest/x'}]})\n"
        "print(settings.webhooks[0].url)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(target)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "https://api.example.com/ingest/x"
