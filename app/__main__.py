"""``hydra-serve``: read the command line and the settings (app/cli.py), set up logging (and
multiprocess metrics), run uvicorn (with the bounded HTTP parser of app/http_server.py)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence

from app.cli import settings_from

logger = logging.getLogger("app")


def main(argv: Sequence[str] | None = None) -> None:
    # Flags, unknown HYDRA_* variables and invalid values are refused here, before the server
    # code is imported. The flags are now in the HYDRA_* variables, which workers read.
    settings = settings_from(argv)

    import uvicorn

    from app.http_server import uvicorn_options
    from app.monitoring.live_gauges import clear_stale_files
    from app.monitoring.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # uvicorn with its httptools parser, the request head bounded (app/http_server.py).
    common = uvicorn_options(settings)
    if settings.workers == 1:
        from app.main import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    # Several workers: every process writes its metrics to one directory, which /metrics
    # merges. It must exist (and be empty) before any worker imports prometheus_client.
    owned = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        owned = tempfile.mkdtemp(prefix="hydra-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = owned
    else:
        # A directory given by the environment may hold a previous run's live gauges, whose
        # pids the new workers could reuse. Workers that die while this run goes on are
        # cleaned up by the survivors (app/monitoring/live_gauges.py: mark_process_dead).
        clear_stale_files(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    logger.info(
        "starting %d workers; metrics merged from %s",
        settings.workers, os.environ["PROMETHEUS_MULTIPROC_DIR"],
    )
    try:
        # The workers read the environment (app.main:create_app_from_env): the HYDRA_*
        # variables this process checked, the flags written into them.
        uvicorn.run(
            "app.main:create_app_from_env", factory=True, workers=settings.workers, **common  # type: ignore[arg-type]
        )
    finally:
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)


if __name__ == "__main__":
    main()
