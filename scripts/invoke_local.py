"""`sam local invoke` without Docker: the sam-built function under the real Lambda runtime.

What `sam local invoke` runs inside its container is the AWS Lambda Runtime Interface Emulator
(RIE) starting the Python runtime client (`awslambdaric`), which imports the handler from the
function's code with the layer on the path, builds the real LambdaContext from the deadline the
emulator sets, and posts the result or the error back.  This runs the same two programs as plain
processes on 127.0.0.1:

- the function artifact of `sam build` (.aws-sam/build/<Function>) as LAMBDA_TASK_ROOT;
- a layer built by the same layers/deps/Makefile for this machine's Python (the sam-built layer
  holds python3.13 / arm64 wheels, which cannot load here);
- the environment resolved by SAM CLI's own classes (LocalLambdaRunner + EnvironmentVariables):
  only variables the template declares, env.json's function block over its Parameters block over
  the shell over the template, plus the AWS_* variables SAM adds; the timeout and memory from the
  template and --parameter-overrides.

Paths under /opt/ and /var/task/ in that environment are mapped to the layer and the function
directories, as the container's mounts would make them.  Prints the handler's JSON result on
stdout and the runtime's logs on stderr.  Exit 0: the handler returned; 1: the function errored
or timed out (the emulator's answer is printed as it came); 2: this tool could not run it.

Runs with the SAM CLI's interpreter (.venv-sam/bin/python); `make invoke-local` does it all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError
from samcli.cli.types import CfnParameterOverridesType
from samcli.commands.exceptions import UserException
from samcli.commands.local.lib.exceptions import OverridesNotWellDefinedError
from samcli.commands.local.lib.local_lambda import LocalLambdaRunner
from samcli.lib.providers.exceptions import InvalidLayerReference
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

INVOKE_PATH = "/2015-03-31/functions/function/invocations"


class Failure(Exception):
    """This tool cannot run the function; ``str()`` is one line."""


def resolve_function(
    template: Path, function_id: str, env_vars_file: Path | None, parameter_overrides: Mapping[str, str]
) -> tuple[dict[str, str], Path, str, int]:
    """The environment, code directory, handler and timeout SAM CLI would give the container."""
    if not template.is_file():
        raise Failure(f"{template} does not exist: run `make build` (sam build) first")
    env_values: dict[str, Any] = {}
    if env_vars_file is not None:
        try:
            env_values = json.loads(env_vars_file.read_text())
        except (OSError, ValueError) as exc:
            raise Failure(f"--env-vars {env_vars_file}: {exc}") from exc
        if not isinstance(env_values, dict):
            raise Failure(f"--env-vars {env_vars_file}: expected a JSON object of function blocks")
    try:
        stacks, _ = SamLocalStackProvider.get_stacks(
            str(template), parameter_overrides=dict(parameter_overrides)
        )
        provider = SamFunctionProvider(stacks)
    except (InvalidLayerReference, UserException) as exc:  # SAM's own "your input is wrong"
        raise Failure(f"{template}: {' '.join(str(exc).split())}") from exc
    function = provider.get(function_id)
    if function is None:
        names = ", ".join(f.full_path for f in provider.get_all())
        raise Failure(f"function {function_id!r} is not in {template} (it has: {names})")
    runner = LocalLambdaRunner(
        local_runtime=None,  # only the configuration is used, never a container
        function_provider=provider,
        cwd=str(template.parent),
        real_path=str(template.parent),
        env_vars_values=env_values,
    )
    try:
        config = runner.get_invoke_config(function)
        env = config.env_vars.resolve()
    except OverridesNotWellDefinedError as exc:
        raise Failure(f"--env-vars {env_vars_file}: {exc}") from exc
    except (UserException, BotoCoreError) as exc:  # e.g. a parameter override of the wrong type, a profile
        raise Failure(" ".join(str(exc).split())) from exc
    return dict(env), Path(config.code_abs_path), str(config.handler), int(config.timeout)


def mount(env: Mapping[str, str], task_root: Path, layer: Path) -> dict[str, str]:
    """Map /var/task and /opt paths in values to the directories standing in for those mounts."""
    mounts = {"/var/task": task_root, "/opt": layer}
    out = {}
    for name, value in env.items():
        out[name] = value
        for point, directory in mounts.items():
            if value == point or value.startswith(point + "/"):
                out[name] = str(directory) + value[len(point) :]
                break
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def emulator(
    rie: Path,
    python: str,
    runtime_dir: Path,
    layer: Path,
    task_root: Path,
    handler: str,
    env: Mapping[str, str],
) -> Iterator[str]:
    """The RIE on loopback ports of its own, running awslambdaric; yields the invoke URL."""
    port, api_port = free_port(), free_port()
    process_env = {
        **mount(env, task_root, layer),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(runtime_dir),
        "_HANDLER": handler,
        # As the python runtime orders it: the function, the layer, then the runtime client.
        "PYTHONPATH": os.pathsep.join([str(task_root), str(layer / "python"), str(runtime_dir)]),
        "PYTHONUNBUFFERED": "1",
        # /var/task is read-only in Lambda: never write bytecode into the artifact `sam deploy` ships.
        "PYTHONDONTWRITEBYTECODE": "1",
        # No shared AWS config or credentials files in a Lambda sandbox: only the environment.
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    command = [
        str(rie),
        "--runtime-interface-emulator-address",
        f"127.0.0.1:{port}",
        "--runtime-api-address",
        f"127.0.0.1:{api_port}",
        # -S: no site-packages, so every import comes from the function, the layer or the runtime.
        python,
        "-S",
        "-m",
        "awslambdaric",
        handler,
    ]
    process = subprocess.Popen(command, env=process_env, cwd=task_root, stdout=sys.stderr, stderr=sys.stderr)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"the emulator did not start (exit {process.poll()}); its log is above")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}{INVOKE_PATH}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def invoke(url: str, event: bytes, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=event, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def ran(status: int, body: bytes) -> bool:
    """Did the handler return?  The emulator answers 200 with a plain-text body on a timeout and
    with ``{"errorType": ...}`` when the function raised."""
    if status != 200:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return not (isinstance(answer, dict) and "errorType" in answer and "errorMessage" in answer)


def parse_overrides(text: str) -> dict[str, str]:
    if not text:
        return {}
    try:
        parsed: dict[str, str] = CfnParameterOverridesType().convert(text, None, None)
    except Exception as exc:  # click.BadParameter and friends: one line
        raise Failure(f"--parameter-overrides: {exc}") from exc
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("event", type=Path, help="the event file (JSON), as `sam local invoke -e`")
    parser.add_argument("--template", type=Path, default=Path(".aws-sam/build/template.yaml"))
    parser.add_argument("--function", default="RelayFunction")
    parser.add_argument("--env-vars", type=Path, default=Path("env.json"))
    parser.add_argument("--parameter-overrides", default="", help="as `sam local invoke`: 'Key=Value ...'")
    parser.add_argument("--layer", type=Path, required=True, help="the layer built for this machine")
    parser.add_argument("--runtime-dir", type=Path, required=True, help="where awslambdaric is installed")
    parser.add_argument("--rie", type=Path, required=True, help="the aws-lambda-rie binary")
    parser.add_argument("--python", default="python3", help="the interpreter that runs the function")
    args = parser.parse_args(argv)
    try:
        try:
            event = args.event.read_bytes()
        except OSError as exc:
            raise Failure(f"event {args.event}: {exc.strerror}") from exc
        overrides = parse_overrides(args.parameter_overrides)
        env, task_root, handler, timeout = resolve_function(
            args.template.resolve(), args.function, args.env_vars, overrides
        )
        needed = (
            (args.rie, "the emulator (make rie)"),
            (args.layer / "python", "the host layer (make host-runtime)"),
            (args.runtime_dir / "awslambdaric", "the runtime client (make host-runtime)"),
        )
        if shutil.which(args.python) is None:
            raise Failure(f"--python {args.python}: no such interpreter")
        for path, what in needed:
            if not path.exists():
                raise Failure(f"{path} is missing: {what}")
        layer, runtime_dir = args.layer.resolve(), args.runtime_dir.resolve()
        with emulator(args.rie.resolve(), args.python, runtime_dir, layer, task_root, handler, env) as url:
            # The emulator enforces the function's timeout; wait a little longer for its answer.
            status, body = invoke(url, event, timeout + 15)
    except Failure as exc:
        sys.stderr.write(f"invoke-local: {exc}\n")
        return 2
    except Exception as exc:  # anything else this tool did not foresee: still one line, exit 2
        sys.stderr.write(f"invoke-local: {type(exc).__name__}: {' '.join(str(exc).split())}\n")
        return 2
    sys.stdout.write(body.decode("utf-8", "replace") + "\n")
    return 0 if ran(status, body) else 1


if __name__ == "__main__":
    sys.exit(main())
