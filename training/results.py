"""``hydra-train results``: the README's result tables, rendered from the runs that made them.

Each table lives in the README between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``
and is rewritten from its source, never typed by hand:

- ``digits``, ``diabetes``: ``report.json`` of the newest published version of that model;
- ``serving``: the service's own answer for a checkerboard, with the newest digits version;
- ``ablation``: ``benchmarks/results/ablation.json`` (``benchmarks/ablate_transfer.py``);
- ``seeds``: ``benchmarks/results/seed_spread.json`` (``benchmarks/seed_spread.py``);
- ``tabular``: ``benchmarks/results/tabular.json`` (``benchmarks/tabular_check.py``);
- ``resnet``: ``benchmarks/results/resnet_heads.json`` (``benchmarks/resnet_heads.py``).

``--check`` rewrites nothing and exits 1 when a section differs from what its source gives.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.layout import NAME_PATTERN as MODEL_NAME

# Readable names of the report's goals (evaluate.GOALS holds the targets).
GOAL_NAMES = {
    "accuracy_gap_points": "accuracy gap ensemble − Hydra (points)",
    "nll_ratio": "NLL Hydra / ensemble",
    "spearman_model_test": "Spearman(model unc.), test",
    "spearman_model_pooled_test_and_ood": "Spearman(model unc.), test + all OOD pooled",
    "param_ratio_hydra_over_member": "parameters Hydra / one member",
}
NOT_A_GOAL = {"spearman_model_pooled_test_and_ood"}
LOWER_IS_BETTER = {"accuracy_gap_points", "nll_ratio", "param_ratio_hydra_over_member"}


class ResultsError(ValueError):
    """A source is missing or the README lacks a section's markers."""


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def latest_report(repository: Path, model: str) -> Path:
    """report.json of the newest version of ``model`` (the one the service serves by default)."""
    if not MODEL_NAME.match(model):
        raise ResultsError(f"not a model name: {model!r}")
    folder = repository / model
    versions = sorted(int(p.name) for p in folder.iterdir()
                      if p.name.isascii() and p.name.isdigit()) if folder.is_dir() else []
    if not versions:
        raise ResultsError(f"no published version of {model!r} under {repository}")
    path = folder / str(versions[-1]) / "report.json"
    if not path.is_file():
        raise ResultsError(f"{path} does not exist")
    return path


def _goal_name(key: str) -> str:
    if key in GOAL_NAMES:
        return GOAL_NAMES[key]
    for prefix, text in (("spearman_model_ood/", "Spearman(model unc.), OOD "),
                         ("auroc_ratio_model_ood/", "OOD AUROC (model unc.) Hydra / ensemble, ")):
        if key.startswith(prefix):
            return text + key[len(prefix):].replace("_", " ")
    return key


def _provenance(report: dict[str, Any]) -> str:
    """Where the figures come from: the machine that decides training's floating-point
    results, and the model file they describe."""
    m = report.get("machine") or {}
    sha = ((report.get("export") or {}).get("model.onnx") or {}).get("sha256", "")
    return (f"Trained on {report['device']} ({m.get('cpu', '?')}, {m.get('arch', '?')} with "
            f"{m.get('isa') or 'no'} vector extensions, torch {m.get('torch', '?')}, "
            f"{m.get('threads', '?')} threads); `model.onnx` sha256 `{sha[:16]}`.")


def render_classification(report: dict[str, Any]) -> str:
    """Test-set quality, the goals, the OOD flag rates and how near-transfer each OOD set is."""
    models = [m for m in ("ensemble", "kd", "hydra") if m in report["test"]]
    names = {"ensemble": f"ensemble ({report['config']['ensemble']['members']} members)",
             "kd": "KD student", "hydra": "Hydra"}
    lines = [f"Test set: {report['splits']['test']} rows, never trained on. {_provenance(report)}", ""]
    lines += _table(["model", "accuracy", "NLL", "ECE", "Brier"],
                    [[names[m], *(_f(report["test"][m][k], 4) for k in ("accuracy", "nll", "ece", "brier"))]
                     for m in models])
    goals = report.get("goals") or {}
    if goals:
        rows = []
        for key, g in goals.items():
            target = "(not a goal)" if key in NOT_A_GOAL else (
                f"{'≤' if key in LOWER_IS_BETTER else '≥'} {g['target']:g}")
            met = "" if key in NOT_A_GOAL else ("met" if g["met"] else "**missed**")
            rows.append([_goal_name(key), _f(g["value"]), target, met])
        lines += ["", *_table(["goal", "measured", "target", ""], rows)]
    calibration = report.get("calibration") or {}
    if calibration:
        rates = ", ".join(f"{k.removeprefix('ood/').replace('_', ' ')} {100 * v:.1f}%"
                          for k, v in calibration["flag_rate"].items())
        lines += ["", f"OOD threshold at α = {calibration['alpha']:g} (from {calibration['n_calibration']} "
                      f"calibration inputs): flagged {rates}."]
    near = (report.get("transfer") or {}).get("near_transfer_ood_sets") or {}
    for name, why in near.items():
        lines += ["", f"Near-transfer: {name.replace('_', ' ')} is {why}, so its figures say how "
                      "well the Hydra imitates the ensemble on inputs like its transfer set, not on "
                      "an unseen kind of input."]
    return "\n".join(lines)


def render_regression(report: dict[str, Any]) -> str:
    models = [m for m in ("ensemble", "kd", "hydra") if m in report["test"]]
    names = {"ensemble": "ensemble", "kd": "KD student", "hydra": "Hydra"}
    lines = [f"Test set: {report['splits']['test']} rows, target units; device {report['device']}.", ""]
    rows = [[names[m], _f(report["test"][m]["rmse"], 2), _f(report["test"][m]["nll"]),
             _f(report["test"][m]["coverage_95"])] for m in models]
    baseline = report.get("baseline")
    if baseline:  # the linear yardstick every report carries
        b = baseline["test"]
        rows.append([f"baseline: {baseline['model']}", _f(b["rmse"], 2), _f(b["nll"]), _f(b["coverage_95"])])
    lines += _table(["model", "RMSE", "Gaussian NLL", "95% interval coverage"], rows)
    rows = []
    for ood, entry in report["ood_detection"].items():
        rows.append([ood.replace("_", " "), *(_f(entry[m]["model_uncertainty"]["auroc"]) for m in models)])
    lines += ["", *_table(["OOD set: AUROC of model uncertainty", *(names[m] for m in models)], rows)]
    fid = (report.get("fidelity") or {}).get("hydra")
    if fid:
        spearman = ", ".join(f"{k.removeprefix('ood/').replace('_', ' ')} {_f(v['model']['spearman'], 2)}"
                             for k, v in fid.items() if k == "test" or k.startswith("ood/"))
        lines += ["", f"Spearman correlation of Hydra's and the ensemble's model uncertainty: {spearman}."]
    return "\n".join(lines)


def render_ablation(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    keys = [k for k in rows[0] if k != "variant"]
    header = ["transfer set", *(k.replace("_", " ") for k in keys)]
    lines = [f"Evaluated on a {summary['evaluated_on']} split of the training rows, with its own OOD "
             "draws (the test and OOD sets above played no part).", ""]
    lines += _table(header, [[r["variant"], *(_f(r[k]) for k in keys)] for r in rows])
    return "\n".join(lines)


def render_tabular(summary: dict[str, Any]) -> str:
    lines = [f"`{summary['config']}` with only `[data]` changed; {summary['rows'][0]['folds']}-fold: each "
             f"row is held out once (folds of seed {summary['holdout_seed']}) and scored by the "
             "published files of the run that never saw it:", ""]
    lines += _table(["data set", "rows", "Hydra accuracy", "worst fold", "ensemble accuracy",
                     "Hydra NLL", "ensemble NLL"],
                    [[r["dataset"], str(r["rows"]), _f(r["hydra_accuracy"]), _f(r["hydra_worst_fold_accuracy"]),
                      _f(r["ensemble_accuracy"]), _f(r["hydra_nll"]), _f(r["ensemble_nll"])]
                     for r in summary["rows"]])
    return "\n".join(lines)


ACCURACY_GAP_GOAL = 1.0  # points
AUROC_RATIO_GOAL = 0.97


def _gap_points(run: dict[str, Any]) -> float:
    """How many accuracy points the Hydra is below the ensemble on the test split."""
    t = run["test"]
    return 100 * (t["ensemble"]["accuracy"] - t["hydra"]["accuracy"])


def render_resnet_heads(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    first = runs[0]
    members = first["parameters"]["member"]
    lines = [f"`{summary['config']}`" + (f" with {', '.join(summary['overrides'])}" if summary["overrides"] else "")
             + f", distilled with each head type from the same members (device {first['device']}; "
             f"one member has {members:,} parameters). Goals: accuracy within "
             f"{ACCURACY_GAP_GOAL:g} point of the ensemble, OOD AUROC of model uncertainty at least "
             f"{AUROC_RATIO_GOAL:g} x the ensemble's.", ""]
    ood = list(first["ood_auroc_model"])
    header = ["heads", "Hydra parameters", "ensemble accuracy", "Hydra accuracy", "gap (points)",
              *(f"AUROC ratio, {k.replace('_', ' ')}" for k in ood), "goals"]
    rows = []
    for run in runs:
        t = run["test"]
        gap = _gap_points(run)
        ratios = [run["ood_auroc_model"][k]["ratio"] for k in ood]
        met = gap <= ACCURACY_GAP_GOAL and all(r >= AUROC_RATIO_GOAL for r in ratios)
        rows.append([run["head"], f"{run['parameters']['hydra']:,}", _f(t["ensemble"]["accuracy"], 4),
                     _f(t["hydra"]["accuracy"], 4), f"{gap:.2f}", *(_f(r, 3) for r in ratios),
                     "met" if met else "**missed**"])
    lines += _table(header, rows)
    return "\n".join(lines)


def render_external_members(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    ood = list(runs[0]["ood_auroc_model"])
    lines = [f"`{summary['config']}` (members trained elsewhere, on other digits) distilled "
             f"{len(runs)} ways on {runs[0]['device']}. Goals: accuracy within {ACCURACY_GAP_GOAL:g} point of "
             f"the ensemble, OOD AUROC of model uncertainty at least {AUROC_RATIO_GOAL:g} x the "
             "ensemble's (figures in bold miss them).", ""]
    header = ["members", "ensemble accuracy", "Hydra accuracy", "gap (points)"]
    for k in ood:
        name = k.replace("_", " ")
        header += [f"AUROC {name}, ensemble", f"AUROC {name}, Hydra", "ratio"]
    header.append("run wall time (s)")
    rows = []
    for run in runs:
        t = run["test"]
        gap = _gap_points(run)
        cells = [run["run"], _f(t["ensemble"]["accuracy"], 4), _f(t["hydra"]["accuracy"], 4),
                 f"{gap:.2f}" if gap <= ACCURACY_GAP_GOAL else f"**{gap:.2f}**"]
        for k in ood:
            entry = run["ood_auroc_model"][k]
            ratio = entry["ratio"]
            cells += [_f(entry["ensemble"], 3), _f(entry["hydra"], 3),
                      _f(ratio, 3) if ratio >= AUROC_RATIO_GOAL else f"**{_f(ratio, 3)}**"]
        cells.append(f"{run['wall_s']:.0f}")
        rows.append(cells)
    lines += _table(header, rows)
    return "\n".join(lines)


def render_transfer_memory(summary: dict[str, Any]) -> str:
    results = summary["results"]
    machine = summary["machine"]
    shape = "x".join(map(str, summary["image_shape"]))
    lines = [f"Peak resident memory of one training process on {summary['rows']:,} x {shape} uint8 "
             f"images, {summary['classes']} classes ({machine['cpus']} CPUs, {machine['cpu']}, Python "
             f"{machine['python']}), with the transfer set materialized (the default) and streamed "
             "(`distill.transfer.stream = true`):", ""]
    stages = list(next(iter(results.values()))["peak_rss_mb_by_stage"])[1:]
    rows = [[mode, *(f"{r['peak_rss_mb_by_stage'][k]:,.0f} MB" for k in stages),
             f"{r['transfer_inputs_per_epoch']:,}"] for mode, r in results.items()]
    lines += _table(["transfer set", *(f"peak {k}" for k in stages), "transfer inputs an epoch"], rows)
    lines += ["", f"Materialized / streamed peak: **{summary['peak_rss_ratio_materialized_over_streamed']:.2f}x**."]
    return "\n".join(lines)


def render_seed_spread(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    keys = list(runs[0]["goals"])
    seeds = ", ".join(str(r["distill_seed"]) for r in runs)
    lines = [f"The same members and transfer set, distilled with seeds {seeds} (seed 0 is the "
             "published model), each evaluated on the test and OOD sets above:", ""]
    rows = []
    for key in keys:
        values = [r["goals"][key] for r in runs]
        if any(v is None for v in values):
            continue
        rows.append([_goal_name(key), *(_f(v) for v in values), _f(max(values) - min(values))])
    lines += _table(["figure", *(f"seed {r['distill_seed']}" for r in runs), "spread"], rows)
    return "\n".join(lines)


CHECKERBOARD = [16.0 if (r + c) % 2 == 0 else 0.0 for r in range(8) for c in range(8)]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ask_service(repository: Path, model: str, instances: list[list[float]],
                ready_timeout_s: float = 120.0) -> dict[str, Any]:
    """The V1 answer of the real service (``python -m app``, CPU provider, 127.0.0.1).

    The service runs as its own process on a free local port, exactly as ``hydra-serve``
    would serve ``repository``; it is stopped before this returns.
    """
    port = _free_port()
    env = {**os.environ, "HYDRA_REPOSITORY": str(repository.resolve()), "HYDRA_PORT": str(port),
           "HYDRA_HOST": "127.0.0.1", "HYDRA_PROVIDERS": "CPUExecutionProvider",
           "HYDRA_LOG_LEVEL": "WARNING", "HYDRA_WORKERS": "1"}
    env.pop("HYDRA_API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "app"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if server.poll() is not None:
                err = server.stderr.read().decode(errors="replace")[-500:] if server.stderr else ""
                raise ResultsError(f"the service exited with {server.returncode}: {err}")
            try:
                if _http("GET", f"{base}/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ResultsError(f"the service was not ready within {ready_timeout_s:.0f} s")
            time.sleep(0.1)
        status, raw = _http("POST", f"{base}/v1/models/{model}:predict",
                            json.dumps({"instances": instances}).encode())
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stderr:
            server.stderr.close()
    if status != 200:
        raise ResultsError(f"the service answered {status}: {raw[:200].decode(errors='replace')}")
    return json.loads(raw)


def render_serving(report_path: Path) -> str:
    """The service's real V1 answer for a checkerboard (no digit), from the newest version."""
    model_dir = report_path.parent.parent
    answer = ask_service(model_dir.parent, model_dir.name, [CHECKERBOARD])
    body = _rounded(answer)
    body["model_version"] = "<newest>"
    lines = [json.dumps({k: v for k, v in body.items() if k != "predictions"})[:-1] + ', "predictions": [{']
    (prediction,) = body["predictions"]
    items = list(prediction.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}]}")
    return "```json\n" + "\n".join(lines) + "\n```"


def _json(render_dict: Callable[[dict[str, Any]], str]) -> Callable[[Path], str]:
    def render_file(path: Path) -> str:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path} is not valid JSON: {exc}") from exc
        return render_dict(data)

    return render_file


@dataclass(frozen=True)
class Section:
    name: str
    source: Callable[[Path, Path], Path]  # (repository, project root) -> source file
    render: Callable[[Path], str]
    label: str  # the source as the README names it


SECTIONS = (
    Section("digits", lambda repo, root: latest_report(repo, "digits"), _json(render_classification),
            "models/digits/<newest version>/report.json, written by make train"),
    Section("serving", lambda repo, root: latest_report(repo, "digits"), render_serving,
            "the service's answer with models/digits/<newest version>"),
    Section("diabetes", lambda repo, root: latest_report(repo, "diabetes"), _json(render_regression),
            "models/diabetes/<newest version>/report.json, written by hydra-train run --config configs/diabetes.toml"),
    Section("seeds", lambda repo, root: root / "benchmarks" / "results" / "seed_spread.json",
            _json(render_seed_spread), "benchmarks/results/seed_spread.json, written by benchmarks/seed_spread.py"),
    Section("ablation", lambda repo, root: root / "benchmarks" / "results" / "ablation.json",
            _json(render_ablation), "benchmarks/results/ablation.json, written by benchmarks/ablate_transfer.py"),
    Section("resnet", lambda repo, root: root / "benchmarks" / "results" / "resnet_heads.json",
            _json(render_resnet_heads), "benchmarks/results/resnet_heads.json, written by benchmarks/resnet_heads.py"),
    Section("tabular", lambda repo, root: root / "benchmarks" / "results" / "tabular.json",
            _json(render_tabular), "benchmarks/results/tabular.json, written by benchmarks/tabular_check.py"),
    Section("members", lambda repo, root: root / "benchmarks" / "results" / "external_members.json",
            _json(render_external_members),
            "benchmarks/results/external_members.json, written by benchmarks/external_members.py"),
    Section("memory", lambda repo, root: root / "benchmarks" / "results" / "transfer_memory.json",
            _json(render_transfer_memory),
            "benchmarks/results/transfer_memory.json, written by benchmarks/bench_transfer_memory.py"),
)


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- results:{name} -->\n)(.*?)\n?(<!-- /results:{name} -->)", re.S)


def section_text(readme: str, name: str) -> str:
    match = _pattern(name).search(readme)
    if match is None:
        raise ResultsError(f"the README has no '<!-- results:{name} -->' ... '<!-- /results:{name} -->' section")
    return match.group(2)


def replace_section(readme: str, name: str, body: str) -> str:
    section_text(readme, name)  # raises when the markers are missing
    return _pattern(name).sub(lambda m: m.group(1) + body + "\n" + m.group(3), readme, count=1)


def render(section: Section, repository: Path, root: Path) -> str:
    source = section.source(repository, root)
    if not source.is_file():
        raise ResultsError(f"{source} does not exist")
    body = section.render(source)
    return f"{body}\n\n<sub>Rendered by `hydra-train results` from {section.label}.</sub>"


def update_readme(readme: Path, repository: Path, only: list[str] | None, check: bool,
                  root: Path) -> tuple[list[str], list[str]]:
    """(sections that differ or were rewritten, sections skipped with why)."""
    text = readme.read_text()
    changed: list[str] = []
    skipped: list[str] = []
    for section in SECTIONS:
        if only and section.name not in only:
            continue
        try:
            body = render(section, repository, root)
        except ResultsError as exc:
            skipped.append(f"{section.name}: {exc}")
            continue
        if section_text(text, section.name) != body:
            changed.append(section.name)
            text = replace_section(text, section.name, body)
    if changed and not check:
        tmp = readme.with_name(f".{readme.name}.tmp")
        tmp.write_text(text)
        tmp.replace(readme)
    return changed, skipped
