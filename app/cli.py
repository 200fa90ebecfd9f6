"""``hydra-serve``'s command line: flags for the settings one most often changes at start,
each overriding its ``HYDRA_*`` environment variable, and the check that refuses unknown
``HYDRA_*`` variables. Light on imports: ``--help`` and ``--version`` load no server code.

The flags reach the settings through the environment: the parsed values are written to their
``HYDRA_*`` variables, which the settings (and, with several workers, every worker process,
app.main:create_app_from_env) then read."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from pydantic import ValidationError

from app.settings import ENV_PREFIX, Settings, setting_variables, unknown_variables

PROG = "hydra-serve"

# Exit status of a refused command line or environment (argparse's own for bad flags).
USAGE_ERROR = 2


def server_version() -> str:
    """The installed package's version (as app/api/v2.py's SERVER_VERSION)."""
    try:
        return package_version("hydra-serving")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0"


@dataclass(frozen=True)
class Flag:
    field: str  # the Settings field
    option: str
    metavar: str
    help: str

    @property
    def variable(self) -> str:
        return f"{ENV_PREFIX}{self.field.upper()}"


FLAGS = (
    Flag("repository", "--repository", "DIR",
         "model repository: one folder per model, one numbered folder per version in it"),
    Flag("host", "--host", "HOST", "address to listen on (0.0.0.0: every interface)"),
    Flag("port", "--http-port", "PORT", "HTTP port to listen on"),
    Flag("grpc_port", "--grpc-port", "PORT",
         "gRPC port (Open Inference Protocol) to listen on; 0: no gRPC server"),
    Flag("metrics_port", "--metrics-port", "PORT",
         "serve /metrics on this port only, apart from inference; 0: on the HTTP port"),
    Flag("model_name", "--model-name", "NAME",
         "serve the repository root itself as this one model (KServe's /mnt/models layout)"),
    Flag("workers", "--workers", "N",
         "server processes (1 to 32); with more than one, /metrics merges theirs"),
    Flag("log_level", "--log-level", "LEVEL", "DEBUG, INFO, WARNING or ERROR (any case)"),
)


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _default(field: str) -> str:
    return _shown(Settings.model_fields[field].get_default(call_default_factory=True))


def _checker(field: str) -> Any:
    """argparse ``type=`` for one field: the value as the settings validate it (without the
    environment), or the validation's message."""

    def check(text: str) -> Any:
        try:
            return getattr(Settings.model_validate({field: text}), field)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(
                "; ".join(f"{text!r}: {error['msg']}" for error in exc.errors())
            ) from None

    check.__name__ = field  # argparse names the type in some messages
    return check


def build_parser() -> argparse.ArgumentParser:
    flagged = {flag.field for flag in FLAGS}
    others = "\n".join(
        f"  {name:<32} default: {_default(field)}"
        for name, field in setting_variables().items()
        if field not in flagged
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Serve the models of a model repository over HTTP (KServe v2 and v1 protocols)\n"
            "and gRPC (Open Inference Protocol).\n"
            "Each flag overrides its HYDRA_* environment variable; an unknown HYDRA_*\n"
            "variable (a misspelt setting) stops the start."
        ),
        epilog=f"settings read from the environment only:\n{others}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {server_version()}")
    parser.add_argument(
        "repository_arg", nargs="?", metavar="REPOSITORY", type=_checker("repository"),
        help="the model repository, as --repository",
    )
    log_levels = typing.get_args(Settings.model_fields["log_level"].annotation)
    for flag in FLAGS:
        extra: dict[str, Any] = {}
        if flag.field == "log_level":
            extra = {"type": str.upper, "choices": log_levels}
        else:
            extra = {"type": _checker(flag.field)}
        parser.add_argument(
            flag.option, dest=flag.field, metavar=flag.metavar, default=None,
            help=f"{flag.help} (env {flag.variable}; default: {_default(flag.field)})",
            **extra,
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flags given, by Settings field (absent ones left out). ``--help``, ``--version``
    and bad flags exit here (0, 0 and 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {flag.field: getattr(args, flag.field) for flag in FLAGS}
    if args.repository_arg is not None:
        if given["repository"] is not None and given["repository"] != args.repository_arg:
            parser.error("the repository is given twice (REPOSITORY and --repository)")
        given["repository"] = args.repository_arg
    return {field: value for field, value in given.items() if value is not None}


def check_environment(environ: MutableMapping[str, str]) -> None:
    """Exit with status 2 naming every unknown ``HYDRA_*`` variable and its nearest setting."""
    unknown = unknown_variables(environ)
    if not unknown:
        return
    lines = [f"{PROG}: unknown environment variable{'s' if len(unknown) > 1 else ''}:"]
    for name, nearest in unknown:
        hint = f"did you mean {nearest}?" if nearest else "no setting has a similar name"
        lines.append(f"  {name}: not a {PROG} setting; {hint}")
    lines.append(f"The HYDRA_* variables {PROG} reads are listed by '{PROG} --help'.")
    print("\n".join(lines), file=sys.stderr)
    sys.exit(USAGE_ERROR)


def apply_flags(given: dict[str, Any], environ: MutableMapping[str, str]) -> None:
    """Write the flags to their variables, replacing the environment's values (in any case:
    the settings read names without case) so that this process and the workers agree."""
    for field, value in given.items():
        variable = f"{ENV_PREFIX}{field.upper()}"
        for name in [n for n in environ if n.upper() == variable]:
            del environ[name]
        environ[variable] = str(value)


def settings_from(argv: Sequence[str] | None = None) -> Settings:
    """The command line and the environment, checked, as the settings: exits on --help,
    --version, bad flags, unknown HYDRA_* variables (2) and invalid values (1)."""
    given = parse_args(argv)
    check_environment(os.environ)
    if any(name.upper() == "HYDRA_HTTP_PORT" for name in os.environ):
        # Named like --http-port, but docker-compose.yml's host port: say it is not read.
        print(f"{PROG}: note: HYDRA_HTTP_PORT (docker compose's published host port) is not "
              f"read here; the port to listen on is HYDRA_PORT or --http-port", file=sys.stderr)
    apply_flags(given, os.environ)
    try:
        return Settings()
    except ValidationError as exc:
        sys.exit(f"{PROG}: invalid settings (HYDRA_* environment variables):\n{exc}")
