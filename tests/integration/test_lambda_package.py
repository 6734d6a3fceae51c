"""`sam build` from a fresh clone (the pinned SAM CLI, BuildMethod makefile, no Docker): it ships
the RDS CA bundle where the function's environment points, or fails with one line naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from samtranslator.yaml_helper import yaml_parse

from tests import lambda_build, support

FIX = (
    "outbox-relay layer: no RDS CA bundle (layers/deps/certs/rds-global-bundle.pem or OUTBOX_RDS_CA_BUNDLE):"
    " run 'make fetch-rds-ca' or set OUTBOX_RDS_CA_BUNDLE=/absolute/path/to/global-bundle.pem"
)


def ca_path_in_the_environment(template: Path) -> str:
    """The CA path the template's function environment names (the DbTlsMode=verify branch)."""
    env = yaml_parse(template.read_text())["Resources"]["RelayFunction"]["Properties"]["Environment"]
    condition, when_verify, otherwise = env["Variables"]["OUTBOX_DB_SSL_CA"]["Fn::If"]
    assert condition == "VerifiesDbTls" and otherwise == ""
    assert isinstance(when_verify, str) and when_verify.startswith("/opt/")
    return when_verify


def test_a_clean_clone_without_the_ca_bundle_fails_the_build_with_one_line(tmp_path: Path) -> None:
    repo = lambda_build.clean_copy(tmp_path / "clone")
    assert not (repo / "layers" / "deps" / "certs").exists()

    result = lambda_build.sam_build(repo, ca_bundle=None)

    assert result.returncode != 0 and "Build Failed" in result.stdout, result.stdout[-2000:]
    output = result.stdout + result.stderr
    assert output.count(FIX) == 1, output[-2000:]
    assert not (repo / ".aws-sam" / "build" / "template.yaml").exists(), "no built template to deploy"


@pytest.mark.parametrize("content", ["", "<html>Access Denied</html>\n"])
def test_a_bundle_that_holds_no_certificate_fails_the_build_too(tmp_path: Path, content: str) -> None:
    repo = lambda_build.clean_copy(tmp_path / "clone")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(content)
    result = lambda_build.sam_build(repo, ca_bundle=str(bundle))
    assert result.returncode != 0
    assert f"outbox-relay layer: {bundle} holds no PEM certificate" in result.stdout + result.stderr


def test_the_built_layer_holds_the_bundle_where_the_environment_points(built_repo: Path) -> None:
    build = built_repo / ".aws-sam" / "build"
    path = ca_path_in_the_environment(build / "template.yaml")
    shipped = build / "DepsLayer" / path.removeprefix("/opt/")
    assert shipped.is_file(), f"{path} is not in the layer"
    assert shipped.read_bytes() == Path(support.DB_CA).read_bytes()


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
