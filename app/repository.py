"""The model repository: ``<root>/<name>/<version>/model.onnx``, watched for new versions.

Every valid version found is loaded, checked against the contract and warmed up in a thread,
then published by replacing the whole table (one reference assignment), so a request sees
either the old table or the new one, never a half-built one. The newest loaded version is a
model's default; older ones stay addressable. A broken file is refused with a log line and
``hydra_model_load_failures_total``, remembered by size and mtime (retried only when the file
changes), and whatever was serving keeps serving. Request paths never reach the file system:
names are looked up in the table the scan built.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path


from app.batching import Batcher, BatchObserver
from app.contract import ContractError
from app.errors import ModelNotFound, ModelNotReady
from app.metrics import ServiceMetrics
from app.monitoring import DriftMonitor
from app.runtime import LoadedModel, Outputs, load_model
from app.settings import Settings

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FileStamp = tuple[int, int]  # (size, mtime_ns)


@dataclass(frozen=True)
class ServedModel:
    model: LoadedModel
    batcher: Batcher


def scan(root: Path) -> dict[tuple[str, int], tuple[Path, FileStamp]]:
    """Every ``<name>/<version>/model.onnx`` under root; ensemble files are not served."""
    found: dict[tuple[str, int], tuple[Path, FileStamp]] = {}
    if not root.is_dir():
        return found
    for model_dir in root.iterdir():
        if not model_dir.is_dir() or not NAME_PATTERN.match(model_dir.name):
            continue
        for version_dir in model_dir.iterdir():
            if not (version_dir.name.isascii() and version_dir.name.isdigit()):
                continue
            path = version_dir / MODEL_FILE
            try:
                st = path.stat()
            except OSError:
                continue
            found[(model_dir.name, int(version_dir.name))] = (path, (st.st_size, st.st_mtime_ns))
    return found


class _Observer(BatchObserver):
    """Feeds one served version's batches into the metrics and, for defaults, drift."""

    def __init__(self, repo: ModelRepository, model: LoadedModel) -> None:
        self._repo = repo
        self._model = model
        self._metrics = repo.metrics
        self._drift = DriftMonitor(
            model.meta.drift, repo.settings.drift_window, repo.settings.drift_min_samples
        )
        m, name = repo.metrics, model.name
        # Label lookups once, not per request (they take a lock and hash the labels).
        self._depth = m.queue_depth.labels(name)
        self._batch_size = m.batch_size.labels(name)
        self._duration = m.inference_duration.labels(name)
        self._wait = m.queue_wait.labels(name)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def batch_done(self, size: int, duration_s: float, waits_s: list[float], outputs: Outputs) -> None:
        m = self._metrics
        name = self._model.name
        self._batch_size.observe(size)
        self._duration.observe(duration_s)
        for w in waits_s:
            self._wait.observe(w)
        m.observe_predictions(self._model, outputs)
        # Drift is about the traffic of a model's default version, judged by its reference.
        if self._repo.default_version(name) == self._model.version:
            for component, psi in self._drift.observe(outputs).items():
                m.drift_psi.labels(name, component).set(psi)


class ModelRepository:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = settings.repository
        self._table: dict[str, dict[int, ServedModel]] = {}
        self._failed: dict[tuple[str, int], FileStamp] = {}
        self._scanned = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # -- lookups (event loop only; the table is replaced, never mutated) --------------------

    @property
    def ready(self) -> bool:
        """The first scan finished and at least one model passed its warm-up."""
        return self._scanned and bool(self._table)

    @property
    def scanned(self) -> bool:
        return self._scanned

    def names(self) -> list[str]:
        return sorted(self._table)

    def versions(self, name: str) -> list[int]:
        return sorted(self._table.get(name, {}))

    def default_version(self, name: str) -> int | None:
        versions = self._table.get(name)
        return max(versions) if versions else None

    def get(self, name: str, version: int | None = None) -> ServedModel:
        versions = self._table.get(name)
        if not versions:
            if not self._scanned:
                raise ModelNotReady(f"model {name!r} is not loaded yet: the repository is still loading")
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} not found; models served: {known}")
        if version is None:
            return versions[max(versions)]
        served = versions.get(version)
        if served is None:
            raise ModelNotFound(
                f"version {version} of model {name!r} not found; versions served: "
                f"{', '.join(str(v) for v in sorted(versions))}"
            )
        return served

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load in the background: the server answers (not ready) while models warm up."""
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="repository-watch")

    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the watcher must survive a bad scan (e.g. a vanishing folder)
                logger.exception("repository scan failed")
            self._scanned = True
            await asyncio.sleep(self.settings.poll_interval_s)

    async def refresh(self) -> None:
        """One scan: load what is new or changed, drop what disappeared."""
        async with self._lock:
            found = await asyncio.to_thread(scan, self.root)
            if not found and not self._table:
                logger.warning("no model found under %s/<name>/<version>/%s", self.root, MODEL_FILE)
            for key in sorted(found):
                path, stamp = found[key]
                served = self._table.get(key[0], {}).get(key[1])
                if served is not None or self._failed.get(key) == stamp:
                    continue
                await self._load(key[0], key[1], path, stamp)
            gone = [
                (name, v) for name, versions in self._table.items() for v in versions
                if (name, v) not in found
            ]
            for name, version in gone:
                await self._unload(name, version)

    async def _load(self, name: str, version: int, path: Path, stamp: FileStamp) -> None:
        try:
            model = await asyncio.to_thread(
                load_model, name, version, path,
                providers=list(self.settings.providers),
                intra_op_threads=self.settings.intra_op_threads,
            )
        except (ContractError, OSError) as exc:
            self._failed[(name, version)] = stamp
            self.metrics.load_failures.labels(name).inc()
            serving = self.default_version(name)
            logger.error(
                "refused model %s version %s: %s (still serving version %s)",
                name, version, exc, serving if serving is not None else "none",
                extra={"model": name, "version": version, "event": "model_refused"},
            )
            return
        self._failed.pop((name, version), None)
        s = self.settings
        batcher = Batcher(
            model.infer,
            max_batch_size=s.effective_batch_size,
            max_delay_s=s.max_batch_delay_ms / 1000.0 if s.batching else 0.0,
            queue_size=s.queue_size,
            label=f"{name}/{version}",
            observer=_Observer(self, model),
        )
        batcher.start()
        self.metrics.model_loaded(model)
        table = {n: dict(v) for n, v in self._table.items()}
        table.setdefault(name, {})[version] = ServedModel(model, batcher)
        self._table = table  # the swap: one assignment
        logger.info(
            "model %s version %s ready on %s (task %s, %d heads, sha256 %s)",
            name, version, model.provider, model.meta.task, model.meta.num_heads, model.sha256[:12],
            extra={"model": name, "version": version, "provider": model.provider, "event": "model_ready"},
        )

    async def _unload(self, name: str, version: int) -> None:
        table = {n: dict(v) for n, v in self._table.items()}
        served = table[name].pop(version)
        if not table[name]:
            del table[name]
        self._table = table
        await served.batcher.close()
        self.metrics.model_unloaded(served.model)
        logger.info("model %s version %s removed from the repository: unloaded", name, version)

    async def close(self) -> None:
        """Stop watching, then finish every queued request."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for versions in self._table.values():
            for served in versions.values():
                await served.batcher.close()
