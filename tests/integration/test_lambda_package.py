"""`sam build` from a fresh clone (the pinned SAM CLI, BuildMethod makefile, no Docker): it ships
the RDS CA bundle where the function's environment points, or fails with one line naming the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

from tests import lambda_build, support

FIX = (
    "outbox-relay layer: no RDS CA bundle at layers/deps/certs/rds-global-bundle.pem:"
    " run 'make fetch-rds-ca' or set OUTBOX_RDS_CA_BUNDLE=/absolute/path/to/global-bundle.pem"
)


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


def environment_paths(template: Path) -> dict[str, set[str]]:
    """Absolute paths named by RelayFunction's environment (any branch; Globals merged under the
    function's own, as SAM does), by variable."""
    parsed = yaml_parse(template.read_text())
    function = parsed["Resources"]["RelayFunction"]["Properties"]
    shared = parsed.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    variables = {**shared, **function.get("Environment", {}).get("Variables", {})}
    paths: dict[str, set[str]] = {}
    for name, value in variables.items():
        for text in _strings(value):
            if text.startswith("/"):
                paths.setdefault(name, set()).add(text)
    return paths


def test_a_clean_clone_without_the_ca_bundle_fails_the_build_with_one_line(tmp_path: Path) -> None:
    repo = lambda_build.clean_copy(tmp_path / "clone")
    assert not (repo / "layers" / "deps" / "certs").exists()

    result = lambda_build.sam_build(repo, ca_bundle=None)

    assert result.returncode != 0 and "Build Failed" in result.stdout, result.stdout[-2000:]
    output = result.stdout + result.stderr
    assert output.count(FIX) == 1, output[-2000:]
    assert not (repo / ".aws-sam" / "build" / "template.yaml").exists(), "no built template to deploy"


TRUNCATED = "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIUQ\n"


@pytest.mark.parametrize("content", ["", "<html>Access Denied</html>\n", TRUNCATED])
def test_a_bundle_that_holds_no_certificate_fails_the_build_too(tmp_path: Path, content: str) -> None:
    repo = lambda_build.clean_copy(tmp_path / "clone")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(content)
    result = lambda_build.sam_build(repo, ca_bundle=str(bundle))
    assert result.returncode != 0
    assert f"outbox-relay layer: {bundle} is not a PEM CA bundle" in result.stdout + result.stderr


def test_every_path_the_environment_names_exists_in_the_built_artifacts(built_repo: Path) -> None:
    build = built_repo / ".aws-sam" / "build"
    paths = environment_paths(build / "template.yaml")
    assert paths == {"OUTBOX_DB_SSL_CA": {"/opt/certs/rds-global-bundle.pem"}}, "a new path: check it ships"
    for variable, named in sorted(paths.items()):
        for path in sorted(named):
            mount = next(m for m in MOUNTS if path.startswith(m))
            shipped = build / MOUNTS[mount] / path.removeprefix(mount)
            assert shipped.is_file(), f"{variable}={path}: {MOUNTS[mount]} has no {shipped}"
    # The bundle it was given (the local stack's CA here), byte for byte.
    ca = build / "DepsLayer" / "certs" / "rds-global-bundle.pem"
    assert ca.read_bytes() == Path(support.DB_CA).read_bytes()


def test_sam_build_makes_the_function_and_a_python313_arm64_layer(built_repo: Path) -> None:
    build = built_repo / ".aws-sam" / "build"
    assert sorted(p.name for p in (build / "RelayFunction").iterdir()) == ["outbox_relay"]
    assert (build / "RelayFunction" / "outbox_relay" / "handler.py").is_file()
    assert not list((build / "RelayFunction").rglob("__pycache__"))
    site = build / "DepsLayer" / "python"
    for module in ("kafka", "pymysql", "aws_lambda_powertools", "aws_msk_iam_sasl_signer", "crc32c"):
        assert (site / module).is_dir(), module
    binaries = [p.name for p in site.rglob("*.so")]
    assert binaries and all("cpython-313-aarch64-linux-gnu" in name for name in binaries), binaries
    built = (build / "template.yaml").read_text()
    assert "CodeUri: RelayFunction" in built and "ContentUri: DepsLayer" in built
