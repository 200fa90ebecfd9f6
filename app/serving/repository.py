"""The model repository: ``<root>/<name>/<version>/model.onnx``, watched for new versions.

What is served, and when:

- A version is loaded only once its file is stable: the same (size, mtime, ctime, inode)
  seen on two consecutive scans, or not modified for a poll interval when first seen. A file
  still being copied is left alone until the copy ends; publishing by renaming a finished
  folder into place (what hydra-train does) is stable at once.
- Loading reads the file once, hashes those bytes (sha256), checks the graph and metadata
  against the contract, requires the OOD calibration and the drift references (a file cut
  short can parse without them), and warms the model up. The file is then hashed again: if
  it changed meanwhile, the load is discarded and retried when the file is stable.
- Any exception while loading one version refuses that version only (log line
  ``model_refused``, ``hydra_model_load_failures_total``); the scan goes on with the rest.
  A refused file is remembered by its stamp and retried only when it changes.
- A served version whose file changes is re-checked once the new file is stable: same
  sha256, nothing to do; new content, loaded through the same checks and swapped in, or, if
  refused, the version is no longer served (its old bytes are no longer what was published).
- New tables are published by replacing the whole table (one reference assignment), so a
  request sees either the old table or the new one. The newest loaded version is a model's
  default; older ones stay addressable. When the default changes, the drift window starts
  over. Request paths never reach the file system: names are looked up in the table.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from app.errors import ModelNotFound, ModelNotReady
from app.monitoring.live_drift import DriftMonitor
from app.monitoring.live_gauges import LiveStateExchange, VersionState, WorkerState
from app.monitoring.service_metrics import ServiceMetrics, multiprocess_enabled
from app.serving.batching import Batcher, BatchObserver
from app.serving.sessions import LoadedModel, OutputArrays, load_model
from app.settings import Settings
from contract.layout import MODEL_FILE, NAME_PATTERN, version_of
from contract.model import ContractError

logger = logging.getLogger("app.repository")  # the name log lines carry (their "logger" field)

PUBLISH_INTERVAL_S = 1.0  # multiprocess mode: how often a worker publishes its live gauges


@dataclass(frozen=True)
class FileStamp:
    """What the file system says about a file without reading it; any write changes it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def settled(self, now_ns: int, quiet_s: float) -> bool:
        """Not written for ``quiet_s`` (a clock ahead of ours counts as just written)."""
        return now_ns - max(self.mtime_ns, self.ctime_ns) >= quiet_s * 1e9


@dataclass(frozen=True)
class ServedModel:
    model: LoadedModel
    batcher: Batcher
    stamp: FileStamp | None = None
    observer: _Observer | None = None


class _FileChanged(Exception):
    """The file changed while it was being loaded: not a refusal, a retry later."""


def scan(root: Path) -> dict[tuple[str, int], tuple[Path, FileStamp]]:
    """Every ``<name>/<version>/model.onnx`` under root; ensemble files are not served.

    One unreadable or vanishing folder is skipped, never the whole scan."""
    found: dict[tuple[str, int], tuple[Path, FileStamp]] = {}
    if not root.is_dir():
        return found
    for model_dir in root.iterdir():
        try:
            if not model_dir.is_dir() or not NAME_PATTERN.match(model_dir.name):
                continue
            versions = list(model_dir.iterdir())
        except OSError:
            continue
        for version_dir in versions:
            version = version_of(version_dir.name)
            if version is None:
                continue
            path = version_dir / MODEL_FILE
            try:
                found[(model_dir.name, version)] = (path, FileStamp.of(path))
            except OSError:
                continue
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_complete(model: LoadedModel) -> None:
    """Metadata the contract parses as optional but a published version always has. A file
    cut short at a metadata entry parses without them, and would serve without OOD flags."""
    missing = []
    if model.meta.ood is None:
        missing.append("the OOD calibration (hydra.ood)")
    if not model.meta.drift:
        missing.append("the drift references (hydra.drift)")
    if missing:
        raise ContractError(
            f"the file lacks {' and '.join(missing)}: an incomplete copy or an export without "
            "calibration; the service serves no model without OOD flags and drift monitoring"
        )


class _Observer(BatchObserver):
    """Feeds one served version's batches into the metrics and, while it is its model's
    default version, into its drift window."""

    def __init__(self, repo: ModelRepository, model: LoadedModel) -> None:
        self._repo = repo
        self._model = model
        self._metrics = repo.metrics
        calibration = model.meta.ood
        self.drift = DriftMonitor(
            model.meta.drift, repo.settings.drift_window,
            None if calibration is None else calibration.n_calibration,
        )
        m, name = repo.metrics, model.name
        # Label lookups once, not per request (they take a lock and hash the labels).
        self._batch_size = m.batch_size.labels(name)
        self._duration = m.inference_duration.labels(name)
        self._wait = m.queue_wait.labels(name)

    def queue_depth(self, depth: int) -> None:
        pass  # read from the batcher at scrape time (app/monitoring/live_gauges.py)

    def batch_done(self, size: int, duration_s: float, waits_s: list[float], outputs: OutputArrays) -> None:
        self._batch_size.observe(size)
        self._duration.observe(duration_s)
        for w in waits_s:
            self._wait.observe(w)
        self._metrics.observe_predictions(self._model, outputs)
        # Drift is about the traffic of a model's default version, judged by its reference.
        if self._repo.default_version(self._model.name) == self._model.version:
            self.drift.observe(outputs)


class ModelRepository:
    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = settings.repository
        self._table: dict[str, dict[int, ServedModel]] = {}
        self._failed: dict[tuple[str, int], FileStamp] = {}
        self._seen: dict[tuple[str, int], FileStamp] = {}  # stamps of the previous scan
        self._changing: set[tuple[str, int]] = set()  # served versions whose file changed
        self._defaults: dict[str, int] = {}
        # Versions found but not yet loaded or refused (new, or their file still changing).
        self._pending: set[tuple[str, int]] = set()
        self._scanned = False
        self._task: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._exchange: LiveStateExchange | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        metrics.attach_state(self.live_state, settings.drift_min_samples)

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
            if any(n == name for n, _ in self._pending):
                raise ModelNotReady(
                    f"model {name!r} is not loaded yet: the repository is still loading it "
                    "(its file is new or was still being written)"
                )
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} not found; models served: {known}")
        if version is None:
            return versions[max(versions)]
        served = versions.get(version)
        if served is None and (name, version) in self._pending:
            raise ModelNotReady(
                f"version {version} of model {name!r} is not loaded yet: the repository is still "
                "loading it (its file is new or was still being written)"
            )
        if served is None:
            raise ModelNotFound(
                f"version {version} of model {name!r} not found; versions served: "
                f"{', '.join(str(v) for v in sorted(versions))}"
            )
        return served

    def live_state(self) -> WorkerState:
        """What this process serves now, for the live gauges (app/monitoring/live_gauges.py)."""
        versions = []
        for name, by_version in sorted(self._table.items()):
            default = max(by_version)
            for version, served in sorted(by_version.items()):
                m = served.model
                calibration = m.meta.ood
                drift = served.observer.drift.windows() if served.observer and version == default else {}
                versions.append(VersionState(
                    model=name, version=version, provider=m.provider, task=m.meta.task,
                    heads=m.meta.num_heads, ood_alpha=None if calibration is None else calibration.alpha,
                    queue_depth=served.batcher.depth, drift=drift,
                ))
        return WorkerState(os.getpid(), self.ready, tuple(versions))

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load in the background: the server answers (not ready) while models warm up."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch(), name="repository-watch")
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiprocess_enabled() and directory:
            self._exchange = LiveStateExchange(directory)
            self._publisher = loop.create_task(self._publish(), name="live-state-publish")

    async def _publish(self) -> None:
        assert self._exchange is not None
        while True:
            try:
                await asyncio.to_thread(
                    self._exchange.publish, self.live_state(), self.settings.drift_min_samples
                )
            except Exception:  # metrics must never stop serving
                logger.exception("publishing the live metrics failed")
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the watcher must survive a bad scan (e.g. a vanishing folder)
                logger.exception("repository scan failed")
            self._scanned = True
            await asyncio.sleep(self.settings.poll_interval_s)

    async def refresh(self) -> None:
        """One scan: load what is new, stable and changed; drop what disappeared."""
        async with self._lock:
            found = await asyncio.to_thread(scan, self.root)
            if not found and not self._table:
                logger.warning("no model found under %s/<name>/<version>/%s", self.root, MODEL_FILE)
            now_ns = time.time_ns()
            self._pending = self._unsettled(found)
            for key in sorted(found):
                path, stamp = found[key]
                try:
                    await self._consider(key, path, stamp, now_ns)
                except Exception as exc:  # one version's trouble never stops the scan
                    self._refuse(key, stamp, exc)
            self._seen = {key: stamp for key, (_, stamp) in found.items()}
            gone = [
                (name, v) for name, versions in self._table.items() for v in versions
                if (name, v) not in found
            ]
            for name, version in gone:
                await self._unload(name, version, "removed from the repository")
            for key in [k for k in self._failed if k not in found]:
                del self._failed[key]
            self._pending = self._unsettled(found)

    def _unsettled(self, found: dict[tuple[str, int], tuple[Path, FileStamp]]) -> set[tuple[str, int]]:
        """Versions on disk that are neither served nor refused as they are now."""
        return {
            (name, version) for (name, version), (_, stamp) in found.items()
            if version not in self._table.get(name, {}) and self._failed.get((name, version)) != stamp
        }

    async def _consider(self, key: tuple[str, int], path: Path, stamp: FileStamp, now_ns: int) -> None:
        name, version = key
        served = self._table.get(name, {}).get(version)
        if served is not None and served.stamp == stamp:
            return
        if self._failed.get(key) == stamp:
            return
        stable = self._seen.get(key) == stamp or stamp.settled(now_ns, self.settings.poll_interval_s)
        if served is not None and key not in self._changing:
            self._changing.add(key)
            logger.warning(
                "the file of served model %s version %s changed; it is checked again once stable",
                name, version, extra={"model": name, "version": version, "event": "model_file_changed"},
            )
        if not stable:
            return
        if served is not None:
            sha = await asyncio.to_thread(file_sha256, path)
            if sha == served.model.sha256:  # touched, same bytes: keep serving as is
                self._changing.discard(key)
                self._replace(name, version, ServedModel(served.model, served.batcher, stamp, served.observer))
                return
        await self._load(name, version, path, stamp)

    def _refuse(self, key: tuple[str, int], stamp: FileStamp, exc: BaseException) -> None:
        name, version = key
        self._failed[key] = stamp
        self.metrics.load_failures.labels(name).inc()
        serving = self.default_version(name)
        logger.error(
            "refused model %s version %s: %s: %s (still serving version %s)",
            name, version, type(exc).__name__, exc, serving if serving is not None else "none",
            extra={"model": name, "version": version, "event": "model_refused"},
        )

    async def _load(self, name: str, version: int, path: Path, stamp: FileStamp) -> None:
        key = (name, version)
        try:
            model = await asyncio.to_thread(
                load_model, name, version, path,
                providers=list(self.settings.providers),
                intra_op_threads=self.settings.intra_op_threads,
                cuda_tf32=self.settings.cuda_tf32,
            )
            check_complete(model)
            # The bytes that were loaded must be the file as it is now.
            after = await asyncio.to_thread(FileStamp.of, path)
            if after != stamp or await asyncio.to_thread(file_sha256, path) != model.sha256:
                raise _FileChanged()
        except _FileChanged:  # the next scan sees a new stamp: stable again two scans later
            logger.info("model %s version %s changed while loading; retried once stable", name, version)
            return
        except Exception as exc:  # any failure of one version: refuse it, keep scanning
            self._refuse(key, stamp, exc)
            if self._table.get(name, {}).get(version) is not None:
                await self._unload(name, version, "its file changed and the new content was refused")
            return
        self._failed.pop(key, None)
        self._changing.discard(key)
        s = self.settings
        observer = _Observer(self, model)
        batcher = Batcher(
            model.infer,
            max_batch_size=s.effective_batch_size,
            max_delay_s=s.max_batch_delay_ms / 1000.0 if s.batching else 0.0,
            queue_size=s.queue_size,
            label=f"{name}/{version}",
            observer=observer,
        )
        batcher.start()
        self.metrics.model_loaded(model)
        previous = self._table.get(name, {}).get(version)
        self._replace(name, version, ServedModel(model, batcher, stamp, observer))  # the swap
        if previous is not None:
            self._retire(previous)
        logger.info(
            "model %s version %s ready on %s (task %s, %d heads, sha256 %s)%s",
            name, version, model.provider, model.meta.task, model.meta.num_heads, model.sha256[:12],
            " replacing the previous content of its file" if previous is not None else "",
            extra={"model": name, "version": version, "provider": model.provider,
                   "sha256": model.sha256, "event": "model_ready"},
        )

    def _replace(self, name: str, version: int, served: ServedModel | None) -> None:
        """Publish a new table with one version added, replaced or (None) removed."""
        table = {n: dict(v) for n, v in self._table.items()}
        if served is None:
            table.get(name, {}).pop(version, None)
            if name in table and not table[name]:
                del table[name]
        else:
            table.setdefault(name, {})[version] = served
        self._table = table  # the swap: one assignment
        self._defaults_changed()

    def _defaults_changed(self) -> None:
        """A new default version judges drift from an empty window, and the old one forgets
        its window (its series disappear with it)."""
        defaults = {name: max(versions) for name, versions in self._table.items()}
        for name in set(self._defaults) | set(defaults):
            old, new = self._defaults.get(name), defaults.get(name)
            if old == new:
                continue
            for version in (old, new):
                served = self._table.get(name, {}).get(version) if version is not None else None
                if served is not None and served.observer is not None:
                    served.observer.drift.reset()
            if new is not None and old is not None:
                logger.info("model %s: default version %s -> %s; drift window reset", name, old, new)
        self._defaults = defaults

    async def _unload(self, name: str, version: int, why: str) -> None:
        served = self._table.get(name, {}).get(version)
        if served is None:
            return
        self._replace(name, version, None)
        self._changing.discard((name, version))
        self._retire(served)
        self.metrics.model_unloaded(served.model)
        logger.info("model %s version %s unloaded: %s", name, version, why,
                    extra={"model": name, "version": version, "event": "model_unloaded"})

    def _retire(self, served: ServedModel) -> None:
        """Close the batcher of a version that left the table only after a request timeout:
        a request that looked the version up just before it left still gets its answer."""

        async def retire() -> None:
            try:
                await asyncio.sleep(self.settings.request_timeout_s)
            finally:
                await served.batcher.close()

        task = asyncio.get_running_loop().create_task(retire(), name=f"retire-{served.model.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Stop watching, then finish every queued request."""
        for task in (self._task, self._publisher, *self._retiring):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._exchange is not None:
            self._exchange.withdraw()
        for versions in self._table.values():
            for served in versions.values():
                await served.batcher.close()
