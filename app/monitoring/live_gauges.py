"""Live gauges: what a target serves right now, computed from the service's state at scrape
time.

Queue depth, drift, the loaded versions and readiness are not kept in gauges that code sets
and must remember to remove: each scrape derives them from a snapshot of the repository
(``WorkerState``), so a series exists exactly while the version it describes is loaded (drift:
while that version is its model's default and its window holds enough scores).

With several worker processes (Prometheus multiprocess mode) no process sees the others'
state, so each worker publishes its snapshot as a small JSON file next to the multiprocess
metric files, once a second. Every worker merges the snapshots of the workers that are still
alive (queue depths summed, drift bin counts pooled into one window, readiness the minimum)
and writes the merged gauges into its own ``gauge_livemax_<pid>.db``, which
prometheus_client's ``MultiProcessCollector`` reads like any other live gauge file. Files of
dead workers are deleted (``mark_process_dead``) by whichever worker publishes next.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector

from app.monitoring.live_drift import DriftWindow
from contract.drift import DriftReference

logger = logging.getLogger("app.live_state")  # the name log lines carry (their "logger" field)

STATE_PREFIX = "hydra_live_"
VERSION_LABELS = ("model", "version")
INFO_LABELS = ("model", "version", "provider", "task", "heads")
DRIFT_LABELS = ("model", "version", "component")

# name -> (help, label names)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "hydra_models_ready": (
        "Model versions loaded, checked and warmed up (several workers: the fewest any worker has)",
        (),
    ),
    "hydra_model_info": ("Loaded model versions (value 1) and their active provider", INFO_LABELS),
    "hydra_ood_target_rate": (
        "Calibrated false-positive rate alpha of the OOD threshold: the expected OOD rate on "
        "in-distribution traffic",
        VERSION_LABELS,
    ),
    "hydra_queue_depth": ("Requests waiting in the batching queue of a model version", VERSION_LABELS),
    "hydra_uncertainty_drift_psi": (
        "Population stability index of the default version's recent uncertainties against its "
        "calibration reference",
        DRIFT_LABELS,
    ),
    "hydra_uncertainty_drift_p_value": (
        "p-value of a chi-square test of the same window's bin counts against the calibration "
        "sample: small means the shift is not sampling noise",
        DRIFT_LABELS,
    ),
}


@dataclass(frozen=True)
class VersionState:
    model: str
    version: int
    provider: str
    task: str
    heads: int
    ood_alpha: float | None
    queue_depth: int
    drift: Mapping[str, DriftWindow] = field(default_factory=dict)  # default version only


@dataclass(frozen=True)
class WorkerState:
    pid: int
    ready: bool
    versions: tuple[VersionState, ...] = ()

    def to_json(self) -> str:
        return json.dumps({
            "pid": self.pid,
            "ready": self.ready,
            "versions": [
                {
                    "model": v.model, "version": v.version, "provider": v.provider,
                    "task": v.task, "heads": v.heads, "ood_alpha": v.ood_alpha,
                    "queue_depth": v.queue_depth,
                    "drift": {
                        c: {"edges": list(w.edges), "expected": list(w.expected),
                            "counts": list(w.counts), "n_reference": w.n_reference}
                        for c, w in v.drift.items()
                    },
                }
                for v in self.versions
            ],
        })

    @classmethod
    def from_json(cls, text: str) -> WorkerState:
        d = json.loads(text)
        return cls(
            pid=int(d["pid"]),
            ready=bool(d["ready"]),
            versions=tuple(
                VersionState(
                    model=str(v["model"]), version=int(v["version"]), provider=str(v["provider"]),
                    task=str(v["task"]), heads=int(v["heads"]),
                    ood_alpha=None if v["ood_alpha"] is None else float(v["ood_alpha"]),
                    queue_depth=int(v["queue_depth"]),
                    drift={
                        c: DriftWindow(
                            tuple(float(e) for e in w["edges"]),
                            tuple(float(f) for f in w["expected"]),
                            tuple(int(n) for n in w["counts"]),
                            None if w["n_reference"] is None else int(w["n_reference"]),
                        )
                        for c, w in v["drift"].items()
                    },
                )
                for v in d["versions"]
            ),
        )


@dataclass(frozen=True)
class GaugeSample:
    name: str
    labels: tuple[str, ...]  # values, in the family's label order
    value: float


def merged_samples(states: Iterable[WorkerState], min_samples: int) -> list[GaugeSample]:
    """The gauges of one target from the snapshots of its live workers."""
    states = list(states)
    out: list[GaugeSample] = []
    if not states:
        return out
    ready = min(len(s.versions) if s.ready else 0 for s in states)
    out.append(GaugeSample("hydra_models_ready", (), float(ready)))
    by_version: dict[tuple[str, int], list[VersionState]] = {}
    for state in states:
        for v in state.versions:
            by_version.setdefault((v.model, v.version), []).append(v)
    for (model, version), copies in sorted(by_version.items()):
        first = copies[0]
        key = (model, str(version))
        out.append(GaugeSample(
            "hydra_model_info", (*key, first.provider, first.task, str(first.heads)), 1.0
        ))
        if first.ood_alpha is not None:
            out.append(GaugeSample("hydra_ood_target_rate", key, first.ood_alpha))
        out.append(GaugeSample("hydra_queue_depth", key, float(sum(c.queue_depth for c in copies))))
        components = sorted({c for v in copies for c in v.drift})
        for component in components:
            windows = [v.drift[component] for v in copies if component in v.drift]
            base = windows[0]
            # Pool only windows cut by the same reference (a worker that reloaded a changed
            # file may briefly hold another one).
            same = [w for w in windows if w.edges == base.edges and w.expected == base.expected]
            counts = [sum(w.counts[i] for w in same) for i in range(len(base.counts))]
            if sum(counts) < min_samples:
                continue
            reference = DriftReference(base.edges, base.expected)
            stat = reference.test(counts, base.n_reference)
            if math.isfinite(stat.psi):
                out.append(GaugeSample("hydra_uncertainty_drift_psi", (*key, component), stat.psi))
            if math.isfinite(stat.p_value):
                out.append(
                    GaugeSample("hydra_uncertainty_drift_p_value", (*key, component), stat.p_value)
                )
    return out


def families(samples: Iterable[GaugeSample]) -> list[Metric]:
    """Every family, with or without samples (HELP/TYPE lines always present)."""
    built = {
        name: GaugeMetricFamily(name, help_text, labels=list(labels))
        for name, (help_text, labels) in FAMILIES.items()
    }
    for s in samples:
        built[s.name].add_metric(list(s.labels), s.value)
    return list(built.values())


class LiveCollector(Collector):
    """Single process: the gauges straight from the repository's state at each scrape."""

    def __init__(self, state: Callable[[], WorkerState], min_samples: int) -> None:
        self._state = state
        self._min_samples = min_samples

    def collect(self) -> Iterable[Metric]:
        return families(merged_samples([self._state()], self._min_samples))


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class LiveStateExchange:
    """Multiprocess mode: publish this worker's snapshot, merge the live workers', write the
    merged gauges into this worker's live gauge file."""

    def __init__(self, directory: str | Path, pid: int | None = None) -> None:
        self.directory = Path(directory)
        self.pid = os.getpid() if pid is None else pid
        self._state_file = self.directory / f"{STATE_PREFIX}{self.pid}.json"
        self._gauge_file = self.directory / f"gauge_livemax_{self.pid}.db"

    def publish(self, state: WorkerState, min_samples: int) -> list[WorkerState]:
        """Write this worker's state and the merged gauges; the live workers' states merged."""
        _atomic_write(self._state_file, state.to_json().encode())
        states = self.live_states()
        samples = merged_samples(states, min_samples)
        tmp = self._gauge_file.with_name(self._gauge_file.name + ".tmp")  # not *.db: unread
        tmp.unlink(missing_ok=True)
        mmap = MmapedDict(str(tmp))
        try:
            for s in samples:
                help_text, labels = FAMILIES[s.name]
                mmap.write_value(mmap_key(s.name, s.name, list(labels), list(s.labels), help_text),
                                 s.value, 0.0)
        finally:
            mmap.close()
        os.replace(tmp, self._gauge_file)
        return states

    def live_states(self) -> list[WorkerState]:
        """Snapshots of the workers still alive; a dead worker's files are removed."""
        states = []
        for path in sorted(glob.glob(str(self.directory / f"{STATE_PREFIX}*.json"))):
            try:
                pid = int(Path(path).stem[len(STATE_PREFIX):])
            except ValueError:
                continue
            if pid != self.pid and not process_alive(pid):
                self.forget(pid)
                continue
            try:
                states.append(WorkerState.from_json(Path(path).read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # vanished or half-replaced meanwhile: the next publication has it
        return states

    def forget(self, pid: int) -> None:
        (self.directory / f"{STATE_PREFIX}{pid}.json").unlink(missing_ok=True)
        mark_process_dead(pid, str(self.directory))
        logger.info("worker %d is gone: its live metrics were removed", pid)

    def withdraw(self) -> None:
        """At shutdown: this worker's series disappear at once."""
        self._state_file.unlink(missing_ok=True)
        self._gauge_file.unlink(missing_ok=True)


def clear_stale_files(directory: str | Path) -> None:
    """Before the workers start: remove live state a previous run left behind (its pids may
    be reused by the new workers)."""
    d = Path(directory)
    for pattern in (f"{STATE_PREFIX}*.json", "gauge_live*.db", "gauge_live*.db.tmp"):
        for path in d.glob(pattern):
            path.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

