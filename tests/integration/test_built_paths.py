"""Every path the deployed function's environment names exists in the artifacts `sam build` makes
(issue 9, item 4): in Lambda a layer is unpacked under /opt and the function under /var/task, so
/opt/... must be in DepsLayer's artifact and /var/task/... in RelayFunction's.

The layer's makefile requires the RDS CA bundle for OUTBOX_DB_TLS=verify: OUTBOX_RDS_CA_BUNDLE (a
PEM file), else layers/deps/certs/rds-global-bundle.pem (make fetch-rds-ca).  These tests build it
with a throwaway self-signed certificate; the layer build pip-installs the wheels (tens of seconds).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LAYER_DIR = ROOT / "layers" / "deps"
FUNCTION_DIR = ROOT / "functions" / "relay"
REPO_BUNDLE = LAYER_DIR / "certs" / "rds-global-bundle.pem"
# Where Lambda mounts each artifact, and which template resource builds it.
MOUNTS = {"/opt/": "DepsLayer", "/var/task/": "RelayFunction"}


def _strings(node: Any) -> Iterator[str]:
    """Every string in a template value: both branches of !If, the pieces of !Join and !Sub..."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)


def environment_paths() -> dict[str, set[str]]:
    """Absolute paths named by RelayFunction's environment (any branch), by variable."""
    template = yaml_parse((ROOT / "template.yaml").read_text())
    variables = {
        **template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}),
        **template["Resources"]["RelayFunction"]["Properties"].get("Environment", {}).get("Variables", {}),
    }
    paths: dict[str, set[str]] = {}
    for name, value in variables.items():
        for text in _strings(value):
            if text.startswith("/"):
                paths.setdefault(name, set()).add(text)
    return paths


def make_layer(
    artifacts: Path, env: dict[str, str], python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "make",
            "-C",
            str(LAYER_DIR),
            "build-DepsLayer",
            f"ARTIFACTS_DIR={artifacts}",
            f"PYTHON={python}",
            f"PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}",
            f"ARCH={platform.machine()}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _without_bundle_variable() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OUTBOX_RDS_CA_BUNDLE"}


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=outbox-relay test CA",
            "-keyout", str(directory / "key.pem"), "-out", str(directory / "ca.pem"),
        ],
        capture_output=True,
        check=True,
    )  # fmt: skip
    return directory / "ca.pem"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, test_ca: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sam-build")
    built = {"DepsLayer": root / "DepsLayer", "RelayFunction": root / "RelayFunction"}
    layer = make_layer(built["DepsLayer"], {**os.environ, "OUTBOX_RDS_CA_BUNDLE": str(test_ca)})
    assert layer.returncode == 0, layer.stdout + layer.stderr
    function = subprocess.run(
        ["make", "-C", str(FUNCTION_DIR), "build-RelayFunction", f"ARTIFACTS_DIR={built['RelayFunction']}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert function.returncode == 0, function.stdout + function.stderr
    return built


def test_the_environment_names_the_ca_bundle_in_the_layer() -> None:
    assert environment_paths() == {"OUTBOX_DB_SSL_CA": {"/opt/certs/rds-global-bundle.pem"}}


def test_every_path_the_environment_names_exists_in_its_artifact(artifacts: dict[str, Path]) -> None:
    problems = []
    for variable, paths in sorted(environment_paths().items()):
        for path in sorted(paths):
            mount = next((m for m in MOUNTS if path.startswith(m)), None)
            if mount is None:
                problems.append(f"{variable}={path}: not under {' or '.join(MOUNTS)}, no artifact ships it")
                continue
            local = artifacts[MOUNTS[mount]] / path.removeprefix(mount)
            if not local.is_file():
                problems.append(f"{variable}={path}: {MOUNTS[mount]}'s artifact has no {local}")
    assert not problems, "\n".join(problems)


def test_the_layer_ships_the_bundle_it_was_given(artifacts: dict[str, Path], test_ca: Path) -> None:
    shipped = artifacts["DepsLayer"] / "certs" / "rds-global-bundle.pem"
    assert shipped.is_file()
    assert shipped.read_bytes() == test_ca.read_bytes()
    assert b"-----BEGIN CERTIFICATE-----" in shipped.read_bytes()


def test_the_layer_build_fails_without_a_ca_bundle(tmp_path: Path) -> None:
    if REPO_BUNDLE.exists():
        pytest.skip(f"{REPO_BUNDLE.relative_to(ROOT)} exists (make fetch-rds-ca): it satisfies the build")
    # PYTHON=true: skip the pip install, only the bundle step matters here.
    result = make_layer(tmp_path / "layer", _without_bundle_variable(), python="true")
    assert result.returncode != 0, "the layer built without the RDS CA bundle"
    assert not (tmp_path / "layer" / "certs").exists()


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not-pem"])
def test_the_layer_build_fails_when_the_given_bundle_is_unusable(tmp_path: Path, content: str | None) -> None:
    bundle = tmp_path / "bundle.pem"
    if content is not None:
        bundle.write_text(content)
    env = {**_without_bundle_variable(), "OUTBOX_RDS_CA_BUNDLE": str(bundle)}
    result = make_layer(tmp_path / "layer", env, python="true")
    assert result.returncode != 0, f"the layer built with OUTBOX_RDS_CA_BUNDLE={content!r}"
    assert not (tmp_path / "layer" / "certs").exists()
