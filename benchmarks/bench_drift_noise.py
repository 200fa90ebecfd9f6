"""How often does the drift alert's condition hold on clean traffic, and how often on shifted?

Uses the service's own code: the reference is cut from a calibration sample by
``DriftReference.from_scores`` (as training does), live scores go through ``DriftMonitor`` at
the default window, and the exported gauges come from ``live_state.merged_samples`` at the
default ``drift_min_samples``; the alert condition (PSI and p-value thresholds) is read from
docker/rules/hydra-alerts.rules.yml. Clean traffic is drawn from the very distribution the
calibration sample came from; shifted traffic from the same distribution scaled, or mixed
with far-away inputs.

Two views:
- independent windows of the smallest size the service reports on (``drift_min_samples``)
  and of the full window (``drift_window``);
- a stream: predictions arrive in batches of 10 into the sliding window; the condition is
  evaluated after every batch once the window holds ``drift_min_samples``.

    .venv/bin/python benchmarks/bench_drift_noise.py [--trials 4000] [--seed 0]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.drift import DEFAULT_BINS, DriftReference  # noqa: E402
from app.monitoring.live_drift import DriftMonitor  # noqa: E402
from app.monitoring.live_gauges import VersionState, WorkerState, merged_samples  # noqa: E402
from app.settings import Settings  # noqa: E402

Sampler = Callable[[np.random.Generator, int], np.ndarray]


def alert_thresholds() -> tuple[float, float]:
    """(PSI above, p-value below) of HydraModelUncertaintyDrift, from the rules file."""
    rules = yaml.safe_load((ROOT / "docker/rules/hydra-alerts.rules.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "HydraModelUncertaintyDrift"]
    psi = re.search(r'hydra_uncertainty_drift_psi\{component="model"\}\s*>\s*([0-9.eE-]+)', rule["expr"])
    p = re.search(r'hydra_uncertainty_drift_p_value\{component="model"\}\s*<\s*([0-9.eE-]+)', rule["expr"])
    assert psi and p, rule["expr"]
    return float(psi.group(1)), float(p.group(1))


# Stand-ins for a model-uncertainty distribution: skewed, heavy right tail, no negatives.
DISTRIBUTIONS: dict[str, Sampler] = {
    "lognormal(0, 1.5)": lambda rng, n: rng.lognormal(0.0, 1.5, n),
    "gamma(0.5)": lambda rng, n: rng.gamma(0.5, 1.0, n),
}


def shifted(base: Sampler, kind: str) -> Sampler:
    if kind.startswith("scale x"):
        factor = float(kind.removeprefix("scale x"))
        return lambda rng, n: base(rng, n) * factor
    if kind.startswith("mix "):  # a share of far-away inputs, uncertainty 20x
        share = float(kind.removeprefix("mix ").removesuffix("% far")) / 100
        return lambda rng, n: np.where(rng.random(n) < share, base(rng, n) * 20, base(rng, n))
    raise ValueError(kind)


SHIFTS = ("scale x1.5", "scale x2", "scale x3", "mix 10% far", "mix 25% far", "mix 50% far")


def gauges(monitor: DriftMonitor, min_samples: int) -> tuple[float, float] | None:
    """(PSI, p-value) of the model component as the service exports them, or None."""
    state = WorkerState(0, True, (VersionState("m", 1, "cpu", "classification", 2, 0.05, 0, monitor.windows()),))
    values = {s.name: s.value for s in merged_samples([state], min_samples) if s.labels[-1:] == ("model",)}
    if "hydra_uncertainty_drift_psi" not in values:
        return None
    return values["hydra_uncertainty_drift_psi"], values["hydra_uncertainty_drift_p_value"]


def window_rates(
    draw: Sampler, n_cal: int, n: int, trials: int, rng: np.random.Generator,
    thresholds: tuple[float, float], clean: Sampler,
) -> tuple[float, float]:
    """(alert condition rate, PSI-alone rate) over independent windows of n scores."""
    psi_max, p_min = thresholds
    alarms = psi_only = 0
    for _ in range(trials):
        reference = DriftReference.from_scores(clean(rng, n_cal), DEFAULT_BINS)
        monitor = DriftMonitor({"model": reference}, window=n, n_reference=n_cal)
        monitor.observe({"model_uncertainty": draw(rng, n)})
        psi, p = gauges(monitor, min_samples=n)  # type: ignore[misc]
        alarms += psi > psi_max and p < p_min
        psi_only += psi > psi_max
    return alarms / trials, psi_only / trials


def stream_rate(
    draw: Sampler, n_cal: int, settings: Settings, streams: int, rng: np.random.Generator,
    thresholds: tuple[float, float],
) -> tuple[float, int]:
    """Share of evaluations (after each batch of 10, window >= min_samples) where it holds."""
    psi_max, p_min = thresholds
    held = evaluations = 0
    for _ in range(streams):
        reference = DriftReference.from_scores(draw(rng, n_cal), DEFAULT_BINS)
        monitor = DriftMonitor({"model": reference}, settings.drift_window, n_reference=n_cal)
        for _ in range((settings.drift_window * 2) // 10):
            monitor.observe({"model_uncertainty": draw(rng, 10)})
            g = gauges(monitor, settings.drift_min_samples)
            if g is None:
                continue
            evaluations += 1
            held += g[0] > psi_max and g[1] < p_min
    return held / evaluations, evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4000, help="clean windows per configuration")
    parser.add_argument("--streams", type=int, default=40, help="clean streams per configuration")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    settings = Settings()
    thresholds = alert_thresholds()
    small, full = settings.drift_min_samples, settings.drift_window
    print(f"defaults: drift_window={full}, drift_min_samples={small}, bins={DEFAULT_BINS}; "
          f"alert condition: PSI > {thresholds[0]} and p-value < {thresholds[1]}")
    print()
    print("| calibration distribution | calibration scores | window | clean windows with the alert condition | with PSI > 0.2 alone |")
    print("|---|---|---|---|---|")
    for name, draw in DISTRIBUTIONS.items():
        for n_cal in (359, 2000):
            for n in (small, full):
                alarm, psi_only = window_rates(draw, n_cal, n, args.trials, rng, thresholds, draw)
                print(f"| {name} | {n_cal} | {n} | {alarm:.2%} ({args.trials} windows) | {psi_only:.2%} |")
    print()
    print("| calibration distribution | calibration scores | sliding stream, evaluations | clean evaluations with the alert condition |")
    print("|---|---|---|---|")
    for name, draw in DISTRIBUTIONS.items():
        for n_cal in (359, 2000):
            rate, evaluations = stream_rate(draw, n_cal, settings, args.streams, rng, thresholds)
            print(f"| {name} | {n_cal} | {evaluations} | {rate:.2%} |")
    print()
    print("| calibration distribution (359 scores) | shifted traffic | detected, window 100 | detected, window 1000 | PSI > 0.2 alone, window 100 / 1000 |")
    print("|---|---|---|---|---|")
    trials = max(200, args.trials // 10)
    for name, draw in DISTRIBUTIONS.items():
        for shift in SHIFTS:
            moved = shifted(draw, shift)
            rates = [window_rates(moved, 359, n, trials, rng, thresholds, draw) for n in (small, full)]
            print(f"| {name} | {shift} | {rates[0][0]:.1%} | {rates[1][0]:.1%} | "
                  f"{rates[0][1]:.1%} / {rates[1][1]:.1%} |")


if __name__ == "__main__":
    main()
