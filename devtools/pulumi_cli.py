"""The real Pulumi CLI, run offline against a project directory.

Everything Pulumi keeps is local: a file backend and PULUMI_HOME under one
directory, passphrase-encrypted secrets, no update checks and no plugin
downloads. The demo and the engine tests share this so they drive Pulumi
exactly as a user would from a shell.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("Pulumi.yaml", "__main__.py", "components")


class PulumiError(RuntimeError):
    """A pulumi command failed; `output` holds what it printed (stdout and stderr)."""

    def __init__(self, args: list[str], returncode: int, output: str) -> None:
        super().__init__(f"`pulumi {' '.join(args)}` exited with {returncode}:\n{output}")
        self.returncode = returncode
        self.output = output


def toolchain_bin() -> Path:
    """The directory holding `pulumi` and its plugins, built and cached by scripts/pulumi-toolchain.sh."""
    result = subprocess.run([str(REPO / "scripts" / "pulumi-toolchain.sh")], check=True, capture_output=True, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def copy_project(source: Path, target: Path) -> Path:
    """The program's files in `target`, sharing the repo's virtualenv: stack files land there, not in the repo."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source / name, target / name)
    (target / "venv").symlink_to(REPO / "venv")
    return target


@dataclass(frozen=True)
class Workspace:
    project_dir: Path
    state_dir: Path
    passphrase: str
    bin_dir: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PULUMI_HOME": str(self.state_dir / "home"),
            "PULUMI_BACKEND_URL": (self.state_dir / "backend").as_uri(),
            "PULUMI_CONFIG_PASSPHRASE": self.passphrase,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_ENABLE_LEGACY_DIFF": "false",
            "NO_COLOR": "1",
        }

    def argv(self, *args: str) -> list[str]:
        """The command line of `pulumi *args` in this workspace (its backend directory created)."""
        (self.state_dir / "backend").mkdir(parents=True, exist_ok=True)
        return ["pulumi", *args, "--non-interactive", "--color", "never", "--cwd", str(self.project_dir)]

    def run(self, *args: str, check: bool = True, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run `pulumi *args`; `stdin` is what the command reads (e.g. a secret value), never an argument."""
        argv = self.argv(*args)
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True, input=stdin)
        if check and result.returncode != 0:
            raise PulumiError(list(args), result.returncode, result.stdout + result.stderr)
        return result

    def stack(self, name: str) -> Stack:
        return Stack(self, name)


@dataclass(frozen=True)
class Stack:
    workspace: Workspace
    name: str

    @property
    def config_file(self) -> Path:
        return self.workspace.project_dir / f"Pulumi.{self.name}.yaml"

    def run(self, *args: str, check: bool = True, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return self.workspace.run(*args, "--stack", self.name, check=check, stdin=stdin)

    def start(self, *args: str, **popen: Any) -> subprocess.Popen[str]:
        """`pulumi *args` in the background, as a second terminal runs it (or a CLI a test kills);
        stdout and stderr on one text pipe."""
        argv = self.workspace.argv(*args, "--stack", self.name)
        return subprocess.Popen(
            argv, env=self.workspace.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
        )

    def init(self) -> Stack:
        self.workspace.run("stack", "init", self.name)
        return self

    def set_config(self, values: dict[str, Any]) -> None:
        """Write plain (non-secret) values, structured ones included, into Pulumi.<stack>.yaml."""
        document = yaml.safe_load(self.config_file.read_text()) if self.config_file.exists() else None
        document = document or {}
        config = document.setdefault("config", {})
        for key, value in values.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value if isinstance(value, (list, dict)) else str(value)
        self.config_file.write_text(yaml.safe_dump(document, sort_keys=True))

    def set_secret(self, key: str, value: str) -> None:
        """On stdin (which `pulumi config set` reads when it is not a terminal), not as an argument:
        a value starting with '-' would parse as a flag, and arguments show in `ps` and in errors."""
        self.run("config", "set", "--secret", key, stdin=value)

    def preview(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("preview", *flags, check=check)

    def preview_steps(self, *flags: str) -> list[tuple[str, str]]:
        """(operation, resource type and name) for every step the preview plans."""
        result = json.loads(self.preview("--json", *flags).stdout)
        return [(step["op"], step["urn"].split("::", 2)[-1]) for step in result.get("steps", [])]

    def up(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("up", "--yes", "--skip-preview", *flags, check=check)

    def refresh(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("refresh", "--yes", "--skip-preview", *flags, check=check)

    def destroy(self, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("destroy", "--yes", "--skip-preview", *flags, check=check)

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.run("stack", "output", "--json").stdout)

    def export(self) -> dict[str, Any]:
        return json.loads(self.run("stack", "export").stdout)

    def remove(self) -> None:
        self.run("stack", "rm", "--yes", "--force")
