"""The evaluation report: ``report.json`` (every number), ``report.md`` (the tables a reader
wants, rendered by ``training.report_md``) and PNG plots, ensemble vs KD vs Hydra side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.data import Dataset  # noqa: E402
from training.report_md import MODELS, markdown  # noqa: E402

COLORS = {"ensemble": "tab:blue", "kd": "tab:orange", "hydra": "tab:green"}


def _plots(report: dict[str, Any], outputs: dict[str, Any], data: Dataset, folder: Path) -> None:
    models = [m for m in MODELS if m in outputs]
    if "reliability" in report:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for m in models:
            r = report["reliability"][m]
            ax.plot(r["confidence"], r["accuracy"], "o-", color=COLORS[m], label=m)
        ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability (test)")
        ax.legend()
        fig.savefig(folder / "reliability.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    shown = [m for m in ("ensemble", "hydra") if m in outputs]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for ax, m in zip(axes[0], shown):
        sets = {"test": outputs[m]["test"]} | {k: v for k, v in outputs[m].items() if k.startswith("ood/")}
        allv = np.concatenate([o.derived["model_uncertainty"] for o in sets.values()])
        bins = np.linspace(0, max(float(allv.max()), 1e-6), 40)
        for name, o in sets.items():
            ax.hist(o.derived["model_uncertainty"], bins=bins, histtype="step", density=True, label=name)
        ax.set(title=f"{m}: model uncertainty", xlabel="model uncertainty", ylabel="density", yscale="log")
        ax.legend(fontsize=7)
    fig.savefig(folder / "uncertainty_hist.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    if "ensemble" in outputs:
        fig, ax = plt.subplots(figsize=(5, 5))
        for split in ["test", *(k for k in outputs["hydra"] if k.startswith("ood/"))]:
            ax.scatter(outputs["ensemble"][split].derived["model_uncertainty"],
                       outputs["hydra"][split].derived["model_uncertainty"], s=4, alpha=0.5, label=split)
        top = max(max(float(o.derived["model_uncertainty"].max()) for o in outputs[m].values())
                  for m in ("ensemble", "hydra"))
        ax.plot([0, top], [0, top], "k:", lw=1)
        ax.set(xlabel="ensemble model uncertainty", ylabel="hydra model uncertainty",
               title="Per-input model uncertainty")
        ax.legend(fontsize=7)
        fig.savefig(folder / "model_uncertainty_scatter.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    levels = list(report["shift"].keys())
    quality = "accuracy" if data.task == "classification" else "rmse"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for m in models:
        x = [float(lvl) for lvl in levels]
        axes[0].plot(x, [report["shift"][lvl][m][quality] for lvl in levels], "o-", color=COLORS[m], label=m)
        axes[1].plot(x, [report["shift"][lvl][m]["mean_total_uncertainty"] for lvl in levels], "o-", color=COLORS[m], label=m)
        axes[2].plot(x, [report["shift"][lvl][m]["mean_model_uncertainty"] for lvl in levels], "o-", color=COLORS[m], label=m)
    for ax, title in zip(axes, (quality, "mean total uncertainty", "mean model uncertainty")):
        ax.set(xlabel="shift intensity", title=title)
        ax.legend()
    fig.savefig(folder / "shift.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_report(report: dict[str, Any], outputs: dict[str, Any], data: Dataset, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=True))
    (folder / "report.md").write_text(markdown(report))
    _plots(report, outputs, data, folder)
