"""The artifacts `sam build` makes (BuildMethod: makefile, no Docker) run the handler end to end.

The real `sam build` (the pinned SAM CLI from `make sam-cli`) builds the template for the deployed
runtime (python3.13 / arm64) without Docker.  The same makefiles also build the layer for this
machine's Python and architecture, to run it here the way `sam local invoke` would (the function
code plus the layer on the path, nothing else)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import support
from tests.conftest import make_topics

RUN_HANDLER = """
import json, sys
from outbox_relay.cli import LocalContext
from outbox_relay.handler import lambda_handler
event = json.load(open(sys.argv[1]))
print("SUMMARY " + json.dumps(lambda_handler(event, LocalContext(60))))
"""


def make(target: str, directory: Path, artifacts: Path, *extra: str) -> None:
    result = subprocess.run(
        ["make", "-C", str(directory), target, f"ARTIFACTS_DIR={artifacts}", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def host_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sam-build")
    function, layer = root / "RelayFunction", root / "DepsLayer"
    make("build-RelayFunction", support.ROOT / "functions" / "relay", function)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    make(
        "build-DepsLayer",
        support.ROOT / "layers" / "deps",
        layer,
        f"PYTHON={sys.executable}",
        f"PYTHON_VERSION={version}",
        f"ARCH={platform.machine()}",
    )
    return function, layer


def test_function_artifact_is_only_the_package(host_build: tuple[Path, Path]) -> None:
    function, _ = host_build
    assert sorted(p.name for p in function.iterdir()) == ["outbox_relay"]
    assert (function / "outbox_relay" / "handler.py").is_file()
    assert not list(function.rglob("__pycache__"))


def test_built_layer_and_function_run_the_handler_end_to_end(
    host_build: tuple[Path, Path],
    database: support.Database,
    topics: support.Topics,
    relay_env: dict[str, str],
    tmp_path: Path,
) -> None:
    function, layer = host_build
    database.insert(support.backlog(50, 5))
    make_topics(topics, "order")
    event = tmp_path / "scheduled.json"
    event.write_text((support.ROOT / "events" / "scheduled.json").read_text())
    # -S: no site-packages at all, so every import comes from the function or the layer,
    # as in Lambda (/var/task and /opt/python).
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{function}:{layer / 'python'}", **relay_env}
    result = subprocess.run(
        [sys.executable, "-S", "-c", RUN_HANDLER, str(event)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("SUMMARY ")]
    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary["ok"] and summary["published"] == 50, summary
    assert len(topics.read("order")) == 50


def test_layer_for_the_lambda_runtime_resolves_to_python313_arm64_wheels(tmp_path: Path) -> None:
    make("build-DepsLayer", support.ROOT / "layers" / "deps", tmp_path, f"PYTHON={sys.executable}")
    site = tmp_path / "python"
    for module in ("kafka", "pymysql", "aws_lambda_powertools", "aws_msk_iam_sasl_signer", "aws_xray_sdk"):
        assert (site / module).is_dir(), module
    binaries = [p.name for p in site.rglob("*.so")]
    assert binaries, "wrapt ships a compiled module"
    assert all("cpython-313-aarch64-linux-gnu" in name for name in binaries), binaries


def test_sam_build_without_docker_makes_the_function_and_a_python313_arm64_layer(tmp_path: Path) -> None:
    sam = support.ROOT / ".venv-sam" / "bin" / "sam"
    assert sam.is_file(), "the SAM CLI is missing: run `make sam-cli` (`make test` does)"
    # No telemetry and no version check against PyPI: SAM reads its settings from this folder.
    (tmp_path / "metadata.json").write_text(
        json.dumps({"telemetryEnabled": False, "lastVersionCheck": time.time()})
    )
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "__SAM_CLI_APP_DIR": str(tmp_path)}
    env.pop("DOCKER_HOST", None)
    build = tmp_path / "build"
    result = subprocess.run(
        [str(sam), "build", "--template-file", "template.yaml", "--build-dir", str(build)],
        cwd=support.ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Build Succeeded" in result.stdout
    assert sorted(p.name for p in (build / "RelayFunction").iterdir()) == ["outbox_relay"]
    site = build / "DepsLayer" / "python"
    for module in ("kafka", "pymysql", "aws_lambda_powertools", "crc32c"):
        assert (site / module).is_dir(), module
    binaries = [p.name for p in site.rglob("*.so")]
    assert binaries and all("cpython-313-aarch64-linux-gnu" in name for name in binaries), binaries
    built = (build / "template.yaml").read_text()
    assert "CodeUri: RelayFunction" in built and "ContentUri: DepsLayer" in built
