"""The offline Pulumi workspace helpers the engine tests, demo and bench rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.pulumi_cli import REPO, PulumiError, Workspace, copy_project, toolchain_bin


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(copy_project(REPO, tmp_path / "project"), tmp_path / "pulumi", passphrase="cli-tests",
                     bin_dir=toolchain_bin())  # fmt: skip


@pytest.mark.parametrize("value", ["-fMQ30PJlr6EIqxu2lPeKZG97zahAqdH", "--stack", "has spaces and 'quotes'"])
def test_a_secret_is_set_verbatim_and_never_on_the_command_line(workspace: Workspace, value: str) -> None:
    """token_urlsafe() passwords start with '-' one time in 64: as an argument pulumi read them as flags."""
    stack = workspace.stack("dev").init()
    stack.set_secret("postgresql:password", value)
    assert stack.run("config", "get", "postgresql:password").stdout.strip() == value
    assert value not in stack.config_file.read_text()


def test_a_failed_command_names_it_without_the_secret(workspace: Workspace) -> None:
    stack = workspace.stack("dev").init()
    with pytest.raises(PulumiError, match=r"pulumi config set --secret not:a:key") as failure:
        stack.set_secret("not:a:key", "s3cret-value")
    assert "s3cret-value" not in str(failure.value)
