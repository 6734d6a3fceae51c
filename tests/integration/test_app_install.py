"""Application-side install: `pip install outbox-relay` (no extras) is enough for the writer and
consumer helpers and brings none of the relay's Lambda dependencies (issue 9, item 6).

Builds the package from a copy of the source tree (so no build/ or *.egg-info lands in the repo)
into a fresh, empty venv, then checks it with that venv's own interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
import venv
from pathlib import Path

import pytest

from tests import support

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Distributions of the `relay` extra (and what they pull in) that the base install must not have.
RELAY_DISTRIBUTIONS = frozenset(
    {
        "aws-lambda-powertools",
        "aws-msk-iam-sasl-signer-python",
        "aws-xray-sdk",
        "boto3",
        "botocore",
        "crc32c",
        "kafka-python",
    }
)
RELAY_MODULES = ("aws_lambda_powertools", "aws_msk_iam_sasl_signer", "boto3", "botocore", "kafka")
HINT = "pip install 'outbox-relay[relay]'"


def _env() -> dict[str, str]:
    """The test's environment (proxies, pip's find-links and certificates) minus anything that
    would let the dev venv or the source tree leak into the new venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, check=False, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def app_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with `pip install outbox-relay` (no extras) from this source tree; its bin dir."""
    base = tmp_path_factory.mktemp("app-install")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "functions" / "relay" / "outbox_relay",
        src / "functions" / "relay" / "outbox_relay",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(src)], cwd=base)
    return bin_dir


def _python(bin_dir: Path, code: str) -> str:
    """Run ``code`` isolated (-I: no cwd, no PYTHON* variables, no user site) in the venv."""
    return _run([str(bin_dir / "python"), "-I", "-c", textwrap.dedent(code)], cwd=bin_dir.parent).stdout


def test_base_install_is_pymysql_only(app_venv: Path) -> None:
    out = _python(
        app_venv,
        """
        import json, re
        from importlib import metadata
        names = {d.metadata["Name"]: d.version for d in metadata.distributions()}
        print(json.dumps({re.sub(r"[-_.]+", "-", n).lower(): v for n, v in names.items()}))
        """,
    )
    installed: dict[str, str] = json.loads(out)
    assert installed.get("outbox-relay") == "0.1.0"
    assert installed.get("pymysql") == "1.2.4"
    assert sorted(RELAY_DISTRIBUTIONS & set(installed)) == []


def test_writer_and_consumer_helpers_work_without_relay_deps(app_venv: Path) -> None:
    out = _python(
        app_venv,
        """
        import json, sys
        import pymysql
        import outbox_relay.writer, outbox_relay.consumer
        from outbox_relay.consumer import IdempotentConsumer
        from outbox_relay.writer import OutboxWriteError, add_event

        class Cursor:
            def __init__(self, conn): self.conn = conn
            def __enter__(self): return self
            def __exit__(self, *exc): return False
            def execute(self, sql, params=None):
                self.conn.executed.append((sql, params))
                if sql.startswith("INSERT INTO `processed_events`"):  # keyed on (scope, id)
                    if params[:2] in self.conn.claimed:
                        raise pymysql.err.IntegrityError(1062, "Duplicate entry")
                    self.conn.claimed.add(params[:2])
                return 1

        class Conn:  # enough of a PyMySQL connection for the two helpers, no database
            charset = "utf8mb4"
            def __init__(self, autocommit=False):
                self._autocommit, self.executed, self.claimed, self.commits = autocommit, [], set(), 0
            def get_autocommit(self): return self._autocommit
            def autocommit(self, value): self._autocommit = value
            def cursor(self): return Cursor(self)
            def begin(self): pass
            def commit(self): self.commits += 1
            def rollback(self): pass

        conn = Conn()
        event_id = add_event(conn, "order", "o-1", "OrderPaid", {"orderId": "o-1", "paidCents": 1200},
                             headers={"traceparent": "00-abc"}, seq=3)
        [(insert, params)] = conn.executed
        errors = []
        for kwargs in ({"headers": {"id": "x"}}, {"topic": "bad topic"}, {"seq": -1}):
            try:
                add_event(Conn(), "order", "o-1", "OrderPaid", {}, **kwargs)
            except OutboxWriteError as exc:
                errors.append(str(exc))
        try:
            add_event(Conn(autocommit=True), "order", "o-1", "OrderPaid", {})
        except OutboxWriteError as exc:
            errors.append(str(exc))

        class Record:
            topic, partition, offset = "outbox.event.order", 0, 7
            headers = [("id", event_id.encode()), ("event_type", b"OrderPaid")]

        consumer = IdempotentConsumer(lambda: Conn())
        applied = []
        first = consumer.process(Record(), lambda c, r: applied.append(r.offset))
        again = consumer.process(Record(), lambda c, r: applied.append(r.offset))

        loaded = sorted({m.partition(".")[0] for m in sys.modules})
        params = [p.decode() if isinstance(p, bytes) else p for p in params]
        print(json.dumps({
            "file": outbox_relay.writer.__file__, "insert": insert, "params": params, "errors": errors,
            "first": first, "again": again, "applied": applied, "modules": loaded,
        }))
        """,
    )
    got = json.loads(out)
    # The installed copy in the venv, not the source tree.
    assert Path(got["file"]).is_relative_to(app_venv.parent)
    assert got["insert"].startswith("INSERT INTO `outbox`")
    assert got["params"][1:] == [
        "order",
        "o-1",
        "OrderPaid",
        '{"orderId":"o-1","paidCents":1200}',
        None,
        '{"traceparent":"00-abc"}',
        3,
    ]
    assert len(got["errors"]) == 4
    assert "reserved" in got["errors"][0]
    assert "autocommit" in got["errors"][3]
    assert (got["first"], got["again"], got["applied"]) == (True, False, [7])
    assert sorted(set(RELAY_MODULES) & set(got["modules"])) == []


@pytest.mark.parametrize("argv", [["status"], ["invoke"], ["topics", "read", "t"]])
def test_relay_commands_without_the_extra_say_how_to_get_it(app_venv: Path, argv: list[str]) -> None:
    done = _run([str(app_venv / "outbox-relay"), *argv], cwd=app_venv.parent, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"outbox-relay {argv[0]}: needs the relay's dependencies")
    assert lines[0].endswith(HINT)


def test_cli_help_works_without_the_extra(app_venv: Path) -> None:
    done = _run([str(app_venv / "outbox-relay"), "--help"], cwd=app_venv.parent)
    assert "migrate" in done.stdout


def test_migrate_works_without_the_extra_and_a_secret_asks_for_it(app_venv: Path, local_stack: None) -> None:
    name = f"t_app_{uuid.uuid4().hex[:10]}"
    with support.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    env = {
        **_env(),
        "OUTBOX_DB_HOST": support.DB_HOST,
        "OUTBOX_DB_PORT": str(support.DB_PORT),
        "OUTBOX_DB_NAME": name,
        "OUTBOX_DB_USER": support.DB_USER,
    }
    command = [str(app_venv / "outbox-relay"), "migrate", "--dir", str(support.MIGRATIONS)]
    try:
        done = subprocess.run(
            command,
            check=False,
            env={**env, "OUTBOX_DB_PASSWORD": support.DB_PASSWORD},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert support.Database(name).status_counts() == {}  # the outbox table exists, empty
        # The password in Secrets Manager: that takes boto3, from the extra.
        secret = subprocess.run(
            command,
            check=False,
            env={**env, "OUTBOX_DB_SECRET_ARN": "outbox-relay/local/db"},
            capture_output=True,
            text=True,
        )
        assert secret.returncode == 2 and secret.stderr.strip().endswith(HINT), secret.stderr
        assert "Traceback" not in secret.stderr
    finally:
        with support.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
