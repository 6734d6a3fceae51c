"""Fixtures for the built application: one clean copy of the repository, built once per session
by the real `sam build`, and its function run under the Lambda Runtime Interface Emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import lambda_build, support


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone's files, `sam build` with a CA bundle supplied (the local stack's CA, which
    also lets a run verify TLS to the local MariaDB through the layer's /opt/certs path)."""
    repo = lambda_build.clean_copy(tmp_path_factory.mktemp("clone"))
    result = lambda_build.sam_build(repo, support.DB_CA)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo


@pytest.fixture(scope="session")
def local_function(built_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> lambda_build.LocalFunction:
    host = tmp_path_factory.mktemp("host")
    return lambda_build.LocalFunction(
        template=built_repo / ".aws-sam" / "build" / "template.yaml",
        layer=lambda_build.host_layer(built_repo, host / "DepsLayer", support.DB_CA),
        runtime_dir=lambda_build.runtime_client(host / "runtime"),
        rie=lambda_build.emulator_binary(),
    )


@pytest.fixture
def slow_broker() -> Iterator[support.DelayProxy]:
    """The broker behind a proxy whose ``delay`` slows every answer (0 until a test sets it)."""
    proxy = support.DelayProxy()
    yield proxy
    proxy.close()
