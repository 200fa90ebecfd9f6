"""``hydra-serve``'s command line (app/cli.py, app/__main__.py), run as the command people
run: --help and --version, flags overriding their HYDRA_* variables (in the one process and in
the worker processes), bad flags and unknown HYDRA_* variables refused with status 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import httpx
import pytest
from servekit import free_port, wait_for

from app.cli import FLAGS, apply_flags
from app.settings import NOT_SETTINGS, Settings, setting_variables, unknown_variables

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "hydra-serve"
MODULE = [sys.executable, "-m", "app"]

# The console script where it is installed (the venv), else what it runs.
COMMANDS = {"script": [str(SCRIPT)] if SCRIPT.exists() else MODULE, "module": MODULE}


def clean_env(**hydra: str) -> dict[str, str]:
    """This process's environment without any HYDRA_* variable (nor a metrics directory),
    plus ``hydra``; the CPU provider only, HTTP only."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HYDRA_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["HYDRA_PROVIDERS"] = "CPUExecutionProvider"
    if "grpc_port" in Settings.model_fields:  # no second listener on a fixed port
        env["HYDRA_GRPC_PORT"] = "0"
    return {**env, **hydra}


def kill_group(process: subprocess.Popen[Any]) -> None:
    """What is left of a process started in its own session (workers a broken check let
    start included)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(args: list[str], env: dict[str, str], command: str = "module",
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen([*COMMANDS[command], *args], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
        process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# -- --help and --version ----------------------------------------------------------------------


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_every_flag_with_its_variable_and_default(command: str) -> None:
    proc = run(["--help"], clean_env(), command)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # argparse wraps lines
    assert out.startswith("usage: hydra-serve ")
    assert "REPOSITORY" in out and "--version" in out
    for flag in FLAGS:
        default = Settings.model_fields[flag.field].default
        default = "unset" if default is None else default
        assert f"{flag.option} {flag.metavar}" in out, flag
        assert f"(env {flag.variable}; default: {default})" in out, flag
    assert "--http-port PORT" in out and "(env HYDRA_PORT; default: 8000)" in out
    # The settings without a flag are listed too: --help names every variable read.
    for variable in setting_variables():
        assert variable in out


def test_help_and_version_load_no_server_code() -> None:
    code = (
        "import sys\n"
        "from app.__main__ import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "heavy = ('uvicorn', 'fastapi', 'onnxruntime', 'numpy', 'app.main', 'app.http_server')\n"
        "print('loaded:', [m for m in heavy if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "loaded: []"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_version_prints_the_package_version(command: str) -> None:
    proc = run(["--version"], clean_env(), command)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"hydra-serve {package_version('hydra-serving')}\n"


# -- refused before anything starts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http-port", "70000"],
         "argument --http-port: '70000': Input should be less than or equal to 65535"),
        (["--http-port", "0"], "argument --http-port: '0'"),
        (["--http-port", "http"], "argument --http-port: 'http': Input should be a valid integer"),
        (["--workers", "0"], "argument --workers: '0': Input should be greater than or equal to 1"),
        (["--workers", "33"], "argument --workers: '33': Input should be less than or equal to 32"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
        (["--http-port"], "argument --http-port: expected one argument"),
        (["--model-repository", "/models"], "unrecognized arguments: --model-repository"),
        (["/a", "--repository", "/b"], "the repository is given twice"),
        (["/a", "/b"], "unrecognized arguments: /b"),
    ],
    ids=["port-high", "port-zero", "port-text", "workers-zero", "workers-high", "log-level",
         "missing-value", "unknown-flag", "repository-twice", "two-repositories"],
)
def test_bad_flags_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    # HYDRA_PORT is a free port: had anything started, it would listen there, not exit.
    proc = run(args, clean_env(HYDRA_PORT=str(free_port()), HYDRA_REPOSITORY=str(tmp_path)),
               timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("usage: hydra-serve"), proc.stderr
    assert f"hydra-serve: error: {message}" in proc.stderr


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [
        ("HYDRA_REPOSITRY", "HYDRA_REPOSITORY"),
        ("HYDRA_WORKER", "HYDRA_WORKERS"),
        ("HYDRA_MAX_BATCHSIZE", "HYDRA_MAX_BATCH_SIZE"),
        ("hydra_log_levle", "HYDRA_LOG_LEVEL"),  # settings are read without case; so is this
    ],
)
def test_an_unknown_variable_stops_the_start(variable: str, nearest: str, tmp_path: Path) -> None:
    # Valid flags and a start that would otherwise succeed, with several workers.
    env = clean_env(**{variable: "4"})
    proc = run([str(tmp_path), "--http-port", str(free_port()), "--workers", "2"], env, "script",
               timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"{variable}: not a hydra-serve setting; did you mean {nearest}?" in proc.stderr
    # Refused before logging is set up or anything starts.
    assert proc.stdout == ""
    assert "starting" not in proc.stderr and "uvicorn" not in proc.stderr


def test_every_unknown_variable_is_named() -> None:
    proc = run(["--http-port", str(free_port())],
               clean_env(HYDRA_REPOSITRY="/models", HYDRA_NOTHING_LIKE_IT="1"))
    assert proc.returncode == 2
    assert ("HYDRA_REPOSITRY: not a hydra-serve setting; did you mean HYDRA_REPOSITORY?"
            in proc.stderr)
    assert ("HYDRA_NOTHING_LIKE_IT: not a hydra-serve setting; no setting has a similar name"
            in proc.stderr)


def test_unknown_variables_spares_settings_and_the_projects_other_hydra_names() -> None:
    environ = {name: "1" for name in setting_variables()}
    environ |= {name: "1" for name in NOT_SETTINGS}
    environ |= {"hydra_port": "1", "PATH": "/bin", "XHYDRA_PORTS": "1"}
    assert unknown_variables(environ) == []
    # The names the project uses besides the settings (Dockerfile, compose, CI), exactly.
    assert set(NOT_SETTINGS) == {"HYDRA_REQUIRE_PROMETHEUS", "HYDRA_UID", "HYDRA_IMAGE_TAG",
                                 "HYDRA_HTTP_PORT", "HYDRA_TRAIN_CONFIG"}
    assert not set(NOT_SETTINGS) & set(setting_variables())
    assert unknown_variables({"HYDRA_PORTS": "1", "HYDRA_": "1"}) == [
        ("HYDRA_", None), ("HYDRA_PORTS", "HYDRA_PORT")
    ]


def test_flags_replace_their_variables_in_any_case() -> None:
    environ = {"hydra_port": "1", "Hydra_Port": "2", "HYDRA_HOST": "::", "HYDRA_WORKERS": "3"}
    apply_flags({"port": 8001, "repository": Path("/srv/models")}, environ)
    assert environ == {"HYDRA_PORT": "8001", "HYDRA_REPOSITORY": "/srv/models",
                       "HYDRA_HOST": "::", "HYDRA_WORKERS": "3"}


def test_invalid_environment_values_still_exit_1() -> None:
    proc = run([], clean_env(HYDRA_MAX_BATCH_SIZE="-1"), timeout=30)
    assert proc.returncode == 1
    assert "invalid settings (HYDRA_* environment variables)" in proc.stderr


# -- flags override the environment, in the workers too -------------------------------------------


@contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen([*COMMANDS["script"], *args], env=env, cwd=REPO_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        process.terminate()  # uvicorn stops its workers
        try:
            process.wait(20)
        finally:
            kill_group(process)
            process.wait()


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_flags_override_the_environment(workers: int, tmp_path: Path) -> None:
    """Every flag against a different value of its variable: the port, the repository and the
    log level the flags give are the ones the server (each worker) uses."""
    flag_repo, env_repo = tmp_path / "flag-models", tmp_path / "env-models"
    flag_repo.mkdir()
    env_repo.mkdir()
    flag_port, env_port = free_port(), free_port()
    env = clean_env(
        HYDRA_REPOSITORY=str(env_repo), HYDRA_PORT=str(env_port), HYDRA_HOST="::1",
        HYDRA_WORKERS="3", HYDRA_LOG_LEVEL="ERROR", HYDRA_LOG_FORMAT="text",
        HYDRA_POLL_INTERVAL_S="0.2",
        # The project's HYDRA_ names that are not settings do not stop the start.
        HYDRA_REQUIRE_PROMETHEUS="1", HYDRA_HTTP_PORT=str(env_port),
    )
    args = ["--workers", str(workers), str(flag_repo), "--http-port", str(flag_port),
            "--host", "127.0.0.1", "--log-level", "info"]
    log = tmp_path / "server.log"
    with started(args, env, log) as process:

        def listening() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return answers(flag_port)

        wait_for(listening, timeout=90, what="hydra-serve answering on the flag's port")
        assert not answers(env_port)
        # Each process that serves reads the repository the flag names, logging at the
        # level the flag gives (HYDRA_LOG_LEVEL=ERROR would hide this warning).
        empty = f"WARNING app.repository: no model found under {flag_repo}/"
        wait_for(lambda: log.read_text().count(empty) >= workers, timeout=60,
                 what=f"{workers} repository scans")
        text = log.read_text()
        assert str(env_repo) not in text
        assert "HYDRA_HTTP_PORT (docker compose's published host port) is not read" in text
        if workers > 1:
            assert f"starting {workers} workers" in text
