"""The model repository: ``<root>/<name>/<version>/model.onnx``, watched for new versions.

What is served, and when:

- Folders: a model folder's name matches ``contract.layout.NAME_PATTERN`` (others are
  logged once, as a WARNING, and skipped; hidden folders such as ``.staging-*`` silently);
  a version folder is named by ASCII digits whose number is at most ``MAX_VERSION`` (what a
  URL's 1 to 18 digits can ask for: a folder beyond it is logged once and ignored, so a
  version no URL can name never becomes the default). One folder per version number: when
  two folders name the same number (``01`` and ``1``), neither is loaded, an ERROR line
  names both (once per situation, counted in ``hydra_model_load_failures_total``), and a
  version already serving keeps serving what it loaded until one folder is removed.
- A version is loaded only once its file is stable: the same (size, mtime, ctime, inode)
  seen on two consecutive scans, or not modified for a poll interval when first seen. A file
  still being copied is left alone until the copy ends; publishing by renaming a finished
  folder into place (what hydra-train does) is stable at once.
- Loading reads the file once, hashes those bytes (sha256), checks the graph and every
  metadata value against the contract (``contract/``: finite, in range, consistent),
  requires the OOD calibration and the drift references (a file cut short can parse
  without them), and warms the model up. The file is then hashed again: if it changed
  meanwhile, the load is discarded and retried when the file is stable.
- No file-system call holds up another model: listings and stats run in daemon threads
  (one in flight per folder; a listing that does not finish within ``LIST_WAIT_S`` leaves
  that model as it is for the scan), and each version is loaded by a job of its own (one
  in flight per version) whose reads run in a daemon thread, outside the lock and off the
  event loop. A read that never finishes (a hung mount, a FIFO) keeps only its own version
  "still loading", logged once after ``READ_WAIT_S``; its thread cannot delay process exit.
  ONNX Runtime sessions are created one at a time, as before.
- Any exception while loading one version refuses that version only (log line
  ``model_refused``, ``hydra_model_load_failures_total``); the rest goes on. A refused file
  is remembered by its stamp and retried only when it changes.
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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.errors import ModelNotFound, ModelNotReady
from app.monitoring.live_gauges import LiveStateExchange, VersionState, WorkerState
from app.monitoring.observer import ModelObserver
from app.monitoring.service_metrics import ServiceMetrics, multiprocess_enabled
from app.serving.batching import Batcher
from app.serving.sessions import LoadedModel, load_model, runtime_providers
from app.settings import Settings
from contract.layout import MAX_VERSION, MODEL_FILE, NAME_PATTERN, version_folders
from contract.model import ContractError

logger = logging.getLogger("app.repository")  # the name log lines carry (their "logger" field)

PUBLISH_INTERVAL_S = 1.0  # multiprocess mode: how often a worker publishes its live gauges
# How long one scan waits for a folder listing (and the stats of its versions' files): a
# listing still running after this leaves that model as it is until a later scan.
LIST_WAIT_S = 5.0
# A file read still running after this is logged (once per read) and no longer waited for
# by the first scan's readiness; it goes on in its thread, holding up only its own version.
READ_WAIT_S = 10.0

T = TypeVar("T")


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
    observer: ModelObserver | None = None


class _FileChanged(Exception):
    """The file changed while it was being loaded: not a refusal, a retry later."""


@dataclass(frozen=True)
class ModelScan:
    """One model folder as a scan saw it: the versions with a model file (path and stamp),
    the numbers that two or more folders name (those folders), and digit folders whose
    number is beyond ``MAX_VERSION``."""

    versions: dict[int, tuple[Path, FileStamp]] = field(default_factory=dict)
    ambiguous: dict[int, tuple[str, ...]] = field(default_factory=dict)
    out_of_range: tuple[str, ...] = ()


def list_models(root: Path) -> tuple[list[str], list[str]]:
    """The model folders under root, and the folders whose names are not model names (hidden
    folders, such as publishers' staging folders, are neither); ([], []) without a root."""
    if not root.is_dir():
        return [], []
    models, others = [], []
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
            except OSError:
                continue
            (models if NAME_PATTERN.match(entry.name) else others).append(entry.name)
    return sorted(models), sorted(others)


def scan_model(model_dir: Path) -> ModelScan:
    """The version folders of one model (see ``contract.layout.version_folders``); a version
    folder without a readable model file is skipped. Raises OSError if the folder cannot be
    listed."""
    with os.scandir(model_dir) as entries:
        names = []
        for entry in entries:
            try:
                if entry.is_dir():
                    names.append(entry.name)
            except OSError:
                continue
    by_number, out_of_range = version_folders(names)
    found: dict[int, tuple[Path, FileStamp]] = {}
    ambiguous: dict[int, tuple[str, ...]] = {}
    for number, folders in by_number.items():
        if len(folders) > 1:
            ambiguous[number] = tuple(folders)
            continue
        path = model_dir / folders[0] / MODEL_FILE
        try:
            found[number] = (path, FileStamp.of(path))
        except OSError:
            continue
    return ModelScan(found, ambiguous, tuple(out_of_range))


def scan_single(root: Path) -> ModelScan:
    """One model whose files are the repository root itself (KServe's layout: the storage
    initializer copies the InferenceService's ``storageUri`` to ``/mnt/models``, and the model
    is named by the InferenceService): numbered version folders as for any model, or, without
    any, ``root/model.onnx`` as version 1. Raises OSError if the root cannot be listed."""
    scan = scan_model(root)
    if scan.versions or scan.ambiguous or scan.out_of_range:
        return scan
    path = root / MODEL_FILE
    try:
        return ModelScan({1: (path, FileStamp.of(path))})
    except OSError:
        return scan


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_file(path: Path) -> tuple[bytes, str]:
    """The file's bytes (one read) and their sha256."""
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def stamp_and_sha256(path: Path) -> tuple[FileStamp, str] | None:
    """What the file is now (its stamp, then its hash), or None when it is gone."""
    try:
        return FileStamp.of(path), file_sha256(path)
    except FileNotFoundError:
        return None


def in_daemon_thread(fn: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
    """``fn(*args)`` in a daemon thread of its own; its result comes back as a future of the
    running loop. A call that never returns (a read of a hung mount or a FIFO) holds up
    nothing but that thread, and a daemon thread never keeps the process from exiting. A
    future nobody waits for any more is left alone (its exception is consumed, and a result
    that comes after the loop closed is dropped)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            value, ok = fn(*args), True
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            value, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop is closed: nobody waits for it any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


_STALLED = object()  # a listing that did not finish in time


@dataclass(eq=False)
class _Job:
    """The load of one version's file with one stamp; one job in flight per version."""

    stamp: FileStamp
    task: asyncio.Task[None] | None = None
    reading_since: float | None = None  # monotonic time while a file read runs

    def stalled(self) -> bool:
        return self.reading_since is not None and time.monotonic() - self.reading_since > READ_WAIT_S


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


def workers_ready(states: Iterable[WorkerState], me: int, workers: int) -> bool:
    """This worker (ready) and the others that published readiness are all the workers."""
    others = {state.pid for state in states if state.ready and state.pid != me}
    return 1 + len(others) >= workers


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
        # Numbers that two or more folders name: the folders, as last logged.
        self._ambiguous: dict[tuple[str, int], tuple[str, ...]] = {}
        self._ignored: set[tuple[str, str]] = set()  # (model, folder) out of range, logged
        self._strangers: set[str] = set()  # root folders that are not model names, logged
        self._jobs: dict[tuple[str, int], _Job] = {}  # loads in flight, one per version
        self._started: list[_Job] = []  # the jobs the scan in progress started
        self._probes: dict[str, asyncio.Future[Any]] = {}  # listings in flight, by folder
        self._stalled: set[str] = set()  # listings logged as not finishing
        self._load_slot = asyncio.Semaphore(1)  # ONNX Runtime sessions made one at a time
        self._providers = list(settings.providers)  # those that can load here, from start()
        self._scanned = False
        self._awaited: set[str] = set()  # models the first scan found, until they settle
        self._task: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._exchange: LiveStateExchange | None = None
        self._workers_ready = False  # every other worker ready, at the last publication
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        metrics.attach_state(self.live_state, settings.drift_min_samples)

    # -- lookups (event loop only; the table is replaced, never mutated) --------------------

    @property
    def ready(self) -> bool:
        """The first scan finished, at least one model passed its warm-up, and every model the
        first scan found serves a version or has nothing left to load (a read hung for
        READ_WAIT_S does not count): a replica never takes traffic for a model it is about to
        serve. Once a model leaves that wait it does not return to it."""
        if not (self._scanned and self._table):
            return False
        self._awaited = {name for name in self._awaited if self._first_loading(name)}
        return not self._awaited

    @property
    def replica_ready(self) -> bool:
        """Ready for traffic as a replica: this process is ready and, with several workers,
        every other one has published that it is too (they share one listening socket, so a
        connection may go to any of them; a worker still loading would answer 503). Known
        from this worker's last publication of the live state (once a second), so a probe
        reads no file."""
        return self.ready and (self._exchange is None or self.settings.workers == 1
                               or self._workers_ready)

    def _first_loading(self, name: str) -> bool:
        if name in self._table:
            return False
        for key in self._pending:
            if key[0] == name:
                job = self._jobs.get(key)
                if job is None or not job.stalled():
                    return True
        return False

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
            raise ModelNotFound(f"model {name!r} not found; models served: {known}{self._twins(name)}")
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
                f"{', '.join(str(v) for v in sorted(versions))}{self._twins(name, version)}"
            )
        return served

    def _twins(self, name: str, version: int | None = None) -> str:
        """What a 404 adds when folders of the model name one number twice."""
        twins = [(v, folders) for (n, v), folders in sorted(self._ambiguous.items())
                 if n == name and version in (None, v)]
        return "".join(
            f" (version {v} is not served: folders {' and '.join(folders)} name the same version)"
            for v, folders in twins
        )

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
        self._providers, why = runtime_providers(list(self.settings.providers))
        logger.info("ONNX Runtime runs models on %s", why, extra={"event": "providers",
                                                                  "providers": self._providers})
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
                states = await asyncio.to_thread(
                    self._exchange.publish, self.live_state(), self.settings.drift_min_samples
                )
                self._workers_ready = workers_ready(states, self._exchange.pid, self.settings.workers)
            except Exception:  # metrics must never stop serving
                logger.exception("publishing the live metrics failed")
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the watcher must survive a bad scan (e.g. a vanishing folder)
                logger.exception("repository scan failed")
            if not self._scanned:
                self._awaited = {name for name, _ in (*self._pending, *self._jobs)}
                await self._first_loads(self._started)
                self._scanned = True
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _first_loads(self, jobs: list[_Job]) -> None:
        """Readiness waits for the loads the first scan started, except reads that have run
        longer than READ_WAIT_S (a hung file must not keep the service unready)."""
        while True:
            busy = [j.task for j in jobs if j.task is not None and not j.task.done() and not j.stalled()]
            if not busy:
                return
            await asyncio.wait(busy, timeout=0.1)

    async def refresh(self) -> None:
        """One scan: start the loads of what is new, stable and changed; drop what
        disappeared. Never waits for a load, and waits for a folder listing at most
        LIST_WAIT_S (one that does not finish leaves its model as it is)."""
        async with self._lock:
            self._started = []
            single = self.settings.model_name
            if single is not None:  # the root holds one model's files (KServe's layout)
                names = [single]
                try:
                    results: list[Any] = [await self._probe(single, scan_single, self.root)]
                except OSError as exc:  # no root yet: nothing served, as for an empty one
                    results = [exc]
            else:
                listed = await self._probe("", list_models, self.root)
                if listed is _STALLED:
                    return
                names, strangers = listed
                self._note_strangers(strangers)
                results = await asyncio.gather(
                    *(self._probe(name, scan_model, self.root / name) for name in names),
                    return_exceptions=True,
                )
            scans: dict[str, Any] = {}
            for name, result in zip(names, results):
                if isinstance(result, OSError):  # unreadable or vanishing: not there
                    continue
                if isinstance(result, BaseException):
                    raise result
                scans[name] = result
            if not any(r.versions for r in scans.values() if r is not _STALLED) and not self._table:
                logger.warning("no model found under %s/<name>/<version>/%s", self.root, MODEL_FILE)
            now_ns = time.time_ns()
            known = {n for n, _ in (*self._seen, *self._failed, *self._jobs, *self._pending, *self._ambiguous)}
            for name in sorted(set(scans) | set(self._table) | known):
                scan = scans.get(name, ModelScan())
                if scan is _STALLED:  # its listing hangs: everything of it stays as it is
                    continue
                self._refresh_model(name, scan, now_ns)

    async def _probe(self, key: str, fn: Callable[[Path], T], path: Path) -> T | object:
        """``fn(path)`` in a daemon thread, waited for at most LIST_WAIT_S; _STALLED when it
        does not finish in time, and at once while the previous one still runs (one listing
        in flight per folder; a late result is dropped, the next scan lists again)."""
        running = self._probes.get(key)
        if running is not None and not running.done():
            return _STALLED
        future = in_daemon_thread(fn, path, name=f"repository-list {path}")
        self._probes[key] = future
        done, _ = await asyncio.wait({future}, timeout=LIST_WAIT_S)
        if not done:
            if key not in self._stalled:
                self._stalled.add(key)
                logger.warning(
                    "listing %s has not finished after %gs (a hung mount?): %s is left as it is "
                    "until a listing finishes; other models are scanned as usual",
                    path, LIST_WAIT_S, f"model {key}" if key else "the whole repository",
                    extra={"model": key or None, "event": "repository_listing_stalled"},
                )
            return _STALLED
        self._stalled.discard(key)
        return future.result()

    def _refresh_model(self, name: str, scan: ModelScan, now_ns: int) -> None:
        found = {(name, v): entry for v, entry in scan.versions.items()}
        self._note_out_of_range(name, scan.out_of_range)
        self._note_ambiguous(name, scan.ambiguous)
        for key in sorted(found):
            path, stamp = found[key]
            try:
                self._consider(key, path, stamp, now_ns)
            except Exception as exc:  # one version's trouble never stops the scan
                self._refuse(key, stamp, exc)
        # A load whose folder is gone or now shares its number with another folder is
        # abandoned (neither of two folders naming one number is loaded).
        for key in [k for k in self._jobs if k[0] == name and k not in found]:
            self._cancel_job(key)
        self._seen = {k: s for k, s in self._seen.items() if k[0] != name}
        self._seen.update({key: stamp for key, (_, stamp) in found.items()})
        present = set(scan.versions) | set(scan.ambiguous)  # a serving version with a twin stays
        for version in [v for v in self._table.get(name, {}) if v not in present]:
            self._unload(name, version, "removed from the repository")
        for key in [k for k in self._failed if k[0] == name and k not in found]:
            del self._failed[key]
        self._pending = {k for k in self._pending if k[0] != name} | self._unsettled(found)

    def _unsettled(self, found: dict[tuple[str, int], tuple[Path, FileStamp]]) -> set[tuple[str, int]]:
        """Versions on disk that are neither served nor refused as they are now."""
        return {
            (name, version) for (name, version), (_, stamp) in found.items()
            if version not in self._table.get(name, {}) and self._failed.get((name, version)) != stamp
        }

    # -- what the scan logs once ------------------------------------------------------------

    def _note_strangers(self, folders: list[str]) -> None:
        for folder in folders:
            if folder not in self._strangers:
                logger.warning(
                    "ignored folder %s: %r is not a model name (model folders are named by "
                    "the pattern %s); rename it to serve it",
                    self.root / folder, folder, NAME_PATTERN.pattern,
                    extra={"event": "folder_ignored"},
                )
        self._strangers = set(folders)

    def _note_out_of_range(self, name: str, folders: tuple[str, ...]) -> None:
        for folder in folders:
            if (name, folder) not in self._ignored:
                logger.warning(
                    "ignored folder %s of model %s: its version number is beyond %d, the "
                    "largest a URL can name (1 to %d digits), so it is never loaded nor the "
                    "default version", self.root / name / folder, name, MAX_VERSION,
                    len(str(MAX_VERSION)), extra={"model": name, "event": "folder_ignored"},
                )
        self._ignored = {k for k in self._ignored if k[0] != name} | {(name, f) for f in folders}

    def _note_ambiguous(self, name: str, ambiguous: dict[int, tuple[str, ...]]) -> None:
        """Two folders naming one version: refused once per situation (the same folders);
        a version already serving keeps what it loaded, neither folder is (re)loaded."""
        for version, folders in sorted(ambiguous.items()):
            key = (name, version)
            if self._ambiguous.get(key) == folders:
                continue
            self._ambiguous[key] = folders
            self.metrics.load_failures.labels(name).inc()
            served = self._table.get(name, {}).get(version)
            if served is not None:
                keeps = (f"version {version} keeps serving what it loaded from "
                         f"{served.model.path.parent.name}/{MODEL_FILE}")
            else:
                default = self.default_version(name)
                keeps = f"still serving version {default if default is not None else 'none'}"
            logger.error(
                "refused model %s version %s: folders %s name the same version %s; none is "
                "loaded until only one is left (%s)",
                name, version, " and ".join(str(self.root / name / f) for f in folders), version, keeps,
                extra={"model": name, "version": version, "event": "model_refused"},
            )
        for key in [k for k in self._ambiguous if k[0] == name and k[1] not in ambiguous]:
            del self._ambiguous[key]
            logger.info("model %s version %s: one folder left; it is loaded as usual", *key,
                        extra={"model": key[0], "version": key[1]})

    # -- loading ----------------------------------------------------------------------------

    def _consider(self, key: tuple[str, int], path: Path, stamp: FileStamp, now_ns: int) -> None:
        name, version = key
        served = self._table.get(name, {}).get(version)
        if served is not None and served.stamp == stamp:
            return
        if self._failed.get(key) == stamp:
            return
        job = self._jobs.get(key)
        if job is not None and job.stamp == stamp:
            return  # one load in flight per version
        stable = self._seen.get(key) == stamp or stamp.settled(now_ns, self.settings.poll_interval_s)
        if served is not None and key not in self._changing:
            self._changing.add(key)
            logger.warning(
                "the file of served model %s version %s changed; it is checked again once stable",
                name, version, extra={"model": name, "version": version, "event": "model_file_changed"},
            )
        if not stable:
            return
        if job is not None:
            if job.reading_since is None:
                return  # loading an older file: its check after the load sees the change
            self._cancel_job(key)  # reading an older file: abandoned, its daemon thread left
        self._start_job(key, path, stamp, served)

    def _start_job(self, key: tuple[str, int], path: Path, stamp: FileStamp, served: ServedModel | None) -> None:
        job = _Job(stamp)
        job.task = asyncio.get_running_loop().create_task(
            self._load(key, path, stamp, served, job), name=f"load-{key[0]}-{key[1]}"
        )
        self._jobs[key] = job
        self._started.append(job)

        def done(task: asyncio.Task[None]) -> None:
            if self._jobs.get(key) is job:
                del self._jobs[key]
            if not task.cancelled() and task.exception() is not None:
                logger.error("loading model %s version %s failed unexpectedly", *key,
                             exc_info=task.exception())

        job.task.add_done_callback(done)

    def _cancel_job(self, key: tuple[str, int]) -> None:
        job = self._jobs.pop(key, None)
        if job is not None and job.task is not None:
            job.task.cancel()

    async def _read(self, job: _Job, key: tuple[str, int], fn: Callable[[Path], T], path: Path) -> T:
        """``fn(path)`` in a daemon thread of its own: a read that never finishes holds up
        this version's job only (logged once after READ_WAIT_S)."""
        job.reading_since = time.monotonic()
        try:
            future = in_daemon_thread(fn, path, name=f"repository-read {path}")
            done, _ = await asyncio.wait({future}, timeout=READ_WAIT_S)
            if not done:
                logger.warning(
                    "reading %s has not finished after %gs (a hung mount, a FIFO?): model %s "
                    "version %s stays unloaded until it does; other versions and models are "
                    "not held up", path, READ_WAIT_S, *key,
                    extra={"model": key[0], "version": key[1], "event": "model_read_stalled"},
                )
            return await future
        finally:
            job.reading_since = None

    async def _load(self, key: tuple[str, int], path: Path, stamp: FileStamp,
                    served: ServedModel | None, job: _Job) -> None:
        """One version's job: read the file, load and check it, check the file again, swap it
        in (or refuse it). Only the swap touches the table, on the event loop."""
        name, version = key
        try:
            data, sha = await self._read(job, key, read_model_file, path)
            if served is not None and sha == served.model.sha256:  # touched, same bytes
                if self._table.get(name, {}).get(version) is served:
                    self._changing.discard(key)
                    self._replace(name, version, ServedModel(served.model, served.batcher, stamp, served.observer))
                return
            async with self._load_slot:
                model = await asyncio.to_thread(
                    load_model, name, version, path,
                    providers=self._providers,
                    intra_op_threads=self.settings.intra_op_threads,
                    cuda_tf32=self.settings.cuda_tf32,
                    data=data,
                )
            check_complete(model)
            # The bytes that were loaded must be the file as it is now.
            if await self._read(job, key, stamp_and_sha256, path) != (stamp, model.sha256):
                raise _FileChanged()
        except _FileChanged:  # the next scan sees a new stamp: stable again two scans later
            logger.info("model %s version %s changed while loading; retried once stable", name, version)
            return
        except Exception as exc:  # any failure of one version: refuse it, keep serving the rest
            self._refuse(key, stamp, exc)
            if self._table.get(name, {}).get(version) is not None:
                self._unload(name, version, "its file changed and the new content was refused")
            return
        self._install(name, version, model, stamp)

    def _refuse(self, key: tuple[str, int], stamp: FileStamp, exc: BaseException) -> None:
        name, version = key
        self._failed[key] = stamp
        self._pending.discard(key)
        self.metrics.load_failures.labels(name).inc()
        serving = self.default_version(name)
        logger.error(
            "refused model %s version %s: %s: %s (still serving version %s)",
            name, version, type(exc).__name__, exc, serving if serving is not None else "none",
            extra={"model": name, "version": version, "event": "model_refused"},
        )

    def _install(self, name: str, version: int, model: LoadedModel, stamp: FileStamp) -> None:
        key = (name, version)
        self._failed.pop(key, None)
        self._changing.discard(key)
        self._pending.discard(key)
        s = self.settings
        observer = ModelObserver(
            self.metrics, model, self.settings.drift_window,
            lambda: self.default_version(model.name) == model.version,
        )
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

    def _unload(self, name: str, version: int, why: str) -> None:
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
        """Stop watching and loading (a read still blocked stays in its daemon thread), then
        finish every queued request."""
        jobs = [job.task for job in self._jobs.values()]
        self._jobs.clear()
        for task in (self._task, self._publisher, *jobs, *self._retiring):
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
