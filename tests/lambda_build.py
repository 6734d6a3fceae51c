"""Building the SAM application as a user does (a clean copy of the repository, the pinned SAM CLI,
no Docker) and running the built function under the Lambda Runtime Interface Emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import support

SAM = support.ROOT / ".venv-sam" / "bin" / "sam"
SAM_PYTHON = support.ROOT / ".venv-sam" / "bin" / "python"
INVOKE_LOCAL = support.ROOT / "scripts" / "invoke_local.py"
# What a user's checkout may hold that a fresh clone does not (and must not leak into the copy).
UNTRACKED_STATE = ("layers/deps/certs",)


def clean_copy(destination: Path) -> Path:
    """The files a fresh clone has (tracked, plus new files not yet committed and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=support.ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = support.ROOT / name
        if not source.is_file() or name.startswith(UNTRACKED_STATE):
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination


def sam_build(repo: Path, ca_bundle: str | None) -> subprocess.CompletedProcess[str]:
    """`sam build` in ``repo`` with the pinned SAM CLI; OUTBOX_RDS_CA_BUNDLE when given."""
    assert SAM.is_file(), "the SAM CLI is missing: run `make sam-cli` (`make test` does)"
    app_dir = repo / ".sam-app-dir"
    app_dir.mkdir(exist_ok=True)
    # No telemetry and no version check against PyPI: SAM reads its settings from this folder.
    (app_dir / "metadata.json").write_text(
        json.dumps({"telemetryEnabled": False, "lastVersionCheck": time.time()})
    )
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "__SAM_CLI_APP_DIR": str(app_dir)}
    env.pop("DOCKER_HOST", None)
    env.pop("OUTBOX_RDS_CA_BUNDLE", None)
    env.pop("OUTBOX_CA_ANY_ISSUER", None)
    env.pop("DB_TLS_MODE", None)
    if ca_bundle is not None:
        # The local stack's CA, not Amazon RDS's: accepted for this build only (a PEM check still).
        env["OUTBOX_RDS_CA_BUNDLE"] = ca_bundle
        env["OUTBOX_CA_ANY_ISSUER"] = "1"
    return subprocess.run(
        [str(SAM), "build", "--template-file", "template.yaml", "--build-dir", ".aws-sam/build"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def make(target: str, directory: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        ["make", "-s", "-C", str(directory), target, *extra],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def host_layer(repo: Path, artifacts: Path, ca_bundle: str) -> Path:
    """The layer from the same Makefile, for this machine's Python and architecture."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    make(
        "build-DepsLayer",
        repo / "layers" / "deps",
        f"ARTIFACTS_DIR={artifacts}",
        f"PYTHON={sys.executable}",
        f"PYTHON_VERSION={version}",
        f"ARCH={os.uname().machine}",
        env={"OUTBOX_RDS_CA_BUNDLE": ca_bundle, "OUTBOX_CA_ANY_ISSUER": "1"},
    )
    return artifacts


def runtime_client(target: Path) -> Path:
    """awslambdaric (the pin in the Makefile) installed apart, as /var/runtime is in Lambda."""
    version = next(
        line.split(":=")[1].strip()
        for line in (support.ROOT / "Makefile").read_text().splitlines()
        if line.startswith("AWSLAMBDARIC_VERSION")
    )
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-compile", "--only-binary=:all:", "--target", str(target), f"awslambdaric=={version}"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return target


def emulator_binary() -> Path:
    """The emulator `make rie` built (`make test` builds it first)."""
    path = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(support.ROOT), "rie-path"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    rie = Path(path)
    assert rie.is_file(), f"{rie} is missing: run `make rie` (`make test` does)"
    return rie


@dataclass
class Invocation:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def result(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class LocalFunction:
    """The sam-built function, invoked through scripts/invoke_local.py (what `make invoke-local` runs)."""

    template: Path
    layer: Path
    runtime_dir: Path
    rie: Path

    def invoke(
        self,
        event: Any,
        env_vars: dict[str, Any],
        tmp: Path,
        parameter_overrides: str = "",
        raw_event: bytes | None = None,
        template: Path | None = None,
        shell_env: dict[str, str] | None = None,
    ) -> Invocation:
        event_file, env_file = tmp / "event.json", tmp / "env.json"
        event_file.write_bytes(raw_event if raw_event is not None else json.dumps(event).encode())
        env_file.write_text(json.dumps(env_vars))
        started = time.monotonic()
        # Only what a user's shell would hold: nothing of the test's own environment leaks in.
        shell = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "KAFKA_", "DLQ_"))}
        shell.update(shell_env or {})
        result = subprocess.run(
            [
                *(str(SAM_PYTHON), str(INVOKE_LOCAL), str(event_file)),
                *("--template", str(template or self.template), "--env-vars", str(env_file)),
                *("--parameter-overrides", parameter_overrides, "--layer", str(self.layer)),
                *("--runtime-dir", str(self.runtime_dir), "--rie", str(self.rie), "--python", sys.executable),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
            env=shell,
        )
        return Invocation(result.returncode, result.stdout, result.stderr, time.monotonic() - started)
