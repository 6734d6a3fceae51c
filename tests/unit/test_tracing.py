"""X-Ray traces the AWS SDK calls, not every SQL statement: in Lambda, importing the handler
patches botocore and leaves PyMySQL (and the rest of the SDK's supported modules) alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json
from aws_xray_sdk.core import patcher
import outbox_relay.handler
print(json.dumps(sorted(patcher._PATCHED_MODULES)))
"""


def patched_modules(**env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    patched: list[str] = json.loads(done.stdout.splitlines()[-1])
    return patched


def test_in_lambda_only_botocore_is_patched() -> None:
    # What Lambda sets; Powertools traces only there (and not under `sam local`).
    lambda_env = {"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}
    assert patched_modules(**lambda_env) == ["botocore"]


def test_outside_lambda_nothing_is_patched() -> None:
    assert patched_modules(POWERTOOLS_TRACE_DISABLED="true") == []
