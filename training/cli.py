"""``hydra-train``: one subcommand per stage, and ``run`` for the whole pipeline.

Stages checkpoint into ``runs/<name>/``, so ``distill`` after ``ensemble`` reuses the members,
and any command rerun after a crash resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from training.config import ConfigError, load_config
from training.data import DataError

log = logging.getLogger("training")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hydra-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"ensemble": "train (or resume) the ensemble members",
             "distill": "ensemble, then two-phase Hydra distillation (KD student kept)",
             "evaluate": "everything up to the report, written to runs/<name>/report/",
             "export": "everything, then calibrate, export and publish a new model version",
             "run": "the whole pipeline from a config file (same as export)"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, help="TOML config file (defaults when omitted)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set distill.temperature=2.0")
        p.add_argument("--repository", type=Path, default=Path("models"),
                       help="model repository to publish into (default: models)")
        p.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else (logging.INFO if rank == 0 else logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("onnxscript", "onnx_ir", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The exporter warns about absent torchvision ops and a deprecated pytree alias: not ours.
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"hydra-train: config error: {exc}", file=sys.stderr)
        return 2
    from training.pipeline import run_pipeline  # torch loads only after the config is sound

    stage = {"run": "export"}.get(args.command, args.command)
    from training.export import ExportError

    try:
        result = run_pipeline(config, args.repository, stop_after=stage)
    except (DataError, ConfigError) as exc:  # the user's data or settings: fix and rerun
        print(f"hydra-train: {exc}", file=sys.stderr)
        return 2
    except (FloatingPointError, ExportError) as exc:  # training diverged, or export refused itself
        print(f"hydra-train: {exc}; nothing was published", file=sys.stderr)
        return 1
    if result is not None and rank == 0:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
