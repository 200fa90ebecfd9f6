"""The documentation's generated sections, rewritten from their sources: figures are never
typed by hand.

    .venv/bin/python tools/results.py [--check] [--only NAME ...] [--repository models]

Scans README.md, BENCHMARKS.md and every docs/*.md for ``<!-- results:NAME -->`` ...
``<!-- /results:NAME -->`` and rewrites what lies between from the section's source:

- ``headline``, ``digits``, ``diabetes``: ``report.json`` of the newest published version of
  that model, rendered by ``training.report_md`` (the renderer that writes ``report.md``);
- ``serving``: the answer of the service itself (``python -m app``, started here on a free
  local port) for a checkerboard, from the newest digits version;
- every other section: a JSON file in ``benchmarks/results/``, rendered by the ``render``
  function of the benchmark script that writes it (``peers.bench_peers``: the script in
  ``benchmarks/peers/``).

``--check`` rewrites nothing and exits 1 when a section differs from what its source gives,
naming each. A section whose source is missing is skipped and named; a marker of an unknown
section is an error (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import json
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

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # the benchmark scripts import their neighbours by name
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from contract.layout import NAME_PATTERN as MODEL_NAME  # noqa: E402
from training import report_md  # noqa: E402

RESULTS = Path("benchmarks") / "results"


class ResultsError(ValueError):
    """A source is missing or unreadable, or a document's markers are wrong."""


def documents(root: Path) -> list[Path]:
    """The files whose sections this tool owns."""
    return [p for p in (root / "README.md", root / "BENCHMARKS.md", *sorted((root / "docs").glob("*.md")))
            if p.is_file()]


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


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ResultsError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not valid JSON: {exc}") from exc


# ----------------------------------------------------------------------------- serving

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
    server = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


def render_serving(answer: dict[str, Any]) -> list[str]:
    """A V1 answer, rounded to four digits, one output a line."""
    body = _rounded(answer)
    body["model_version"] = "<newest>"
    lines = [json.dumps({k: v for k, v in body.items() if k != "predictions"})[:-1] + ', "predictions": [{']
    (prediction,) = body["predictions"]
    items = list(prediction.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    return ["```json", *lines, "}]}", "```"]


# ----------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class Sources:
    """Where sources are read from: the model repository and the project folder."""

    repository: Path
    root: Path

    def report(self, model: str) -> dict[str, Any]:
        return _read_json(latest_report(self.repository, model))



def _script_path(script: str) -> str:
    """The file of a benchmark module named from ``benchmarks/`` (``peers.bench_peers``)."""
    return f"benchmarks/{script.replace('.', '/')}.py"


def _benchmark(script: str, file: str) -> Callable[[Sources], list[str]]:
    """A section rendered by ``render`` of ``benchmarks/<script>.py`` from ``benchmarks/results/<file>``."""
    def render(sources: Sources) -> list[str]:
        data = _read_json(sources.root / RESULTS / file)
        module = importlib.import_module(script)
        try:
            return module.render(data)
        except (KeyError, ValueError, TypeError) as exc:
            raise ResultsError(f"{_script_path(script)} cannot render {RESULTS / file}: {exc!r}") from exc

    return render


def _serving(sources: Sources) -> list[str]:
    model_dir = latest_report(sources.repository, "digits").parent.parent
    return render_serving(ask_service(model_dir.parent, model_dir.name, [CHECKERBOARD]))


@dataclass(frozen=True)
class Section:
    name: str
    render: Callable[[Sources], list[str]]
    label: str  # the source, as the rendered section names it


def _bench_label(script: str, file: str) -> str:
    return f"{RESULTS / file}, written by {_script_path(script)}"


SECTIONS = (
    Section("headline", lambda s: report_md.headline(s.report("digits")),
            "models/digits/<newest version>/report.json, written by make train"),
    Section("digits", lambda s: report_md.summary(s.report("digits")),
            "models/digits/<newest version>/report.json, written by make train"),
    Section("serving", _serving, "the service's answer with models/digits/<newest version>"),
    Section("diabetes", lambda s: report_md.summary(s.report("diabetes")),
            "models/diabetes/<newest version>/report.json, written by hydra-train run --config configs/diabetes.toml"),
    *(Section(name, _benchmark(script, file), _bench_label(script, file)) for name, script, file in (
        ("seeds", "seed_spread", "seed_spread.json"),
        ("ablation", "ablate_transfer", "ablation.json"),
        ("resnet", "resnet_heads", "resnet_heads.json"),
        ("tabular", "tabular_check", "tabular.json"),
        ("members", "external_members", "external_members.json"),
        ("peers-grpc", "peers.bench_peers", "peers_grpc.json"),
        ("memory", "bench_transfer_memory", "transfer_memory.json"),
    )),
)
BY_NAME = {s.name: s for s in SECTIONS}

# A marker is a line of its own; the same text inside a sentence or a code span is not one.
_MARKER = re.compile(r"^<!-- (/?)results:(\S+) -->$", re.M)


def _pattern(name: str) -> re.Pattern[str]:
    n = re.escape(name)
    return re.compile(rf"^(<!-- results:{n} -->\n)(.*?)\n?(<!-- /results:{n} -->)$", re.S | re.M)


def section_names(text: str, where: str = "the document") -> list[str]:
    """The sections a document holds, in order; each opened and closed once, never nested."""
    names: list[str] = []
    open_name = None
    for match in _MARKER.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        if not closing:
            if open_name is not None:
                raise ResultsError(f"{where}: section {name} opens inside section {open_name}")
            if name in names:
                raise ResultsError(f"{where}: section {name} appears twice")
            open_name = name
            names.append(name)
        elif name != open_name:
            raise ResultsError(f"{where}: '<!-- /results:{name} -->' closes no open section")
        else:
            open_name = None
    if open_name is not None:
        raise ResultsError(f"{where}: section {open_name} is never closed")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ResultsError(f"{where}: unknown section {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    return names


def section_text(text: str, name: str) -> str:
    match = _pattern(name).search(text)
    if match is None:
        raise ResultsError(f"no '<!-- results:{name} -->' ... '<!-- /results:{name} -->' section")
    return match.group(2)


def replace_section(text: str, name: str, body: str) -> str:
    section_text(text, name)  # raises when the markers are missing
    return _pattern(name).sub(lambda m: m.group(1) + body + "\n" + m.group(3), text, count=1)


def render(section: Section, repository: Path, root: Path) -> str:
    """The whole text between a section's markers."""
    lines = section.render(Sources(repository, root))
    while lines and lines[-1] == "":
        lines = lines[:-1]
    return "\n".join([*lines, "", f"<sub>Rendered by `tools/results.py` from {section.label}.</sub>"])


def update(root: Path, repository: Path, only: list[str] | None = None,
           check: bool = False) -> tuple[list[str], list[str]]:
    """(``file: section`` for each section that differs, rewritten unless ``check``;
    ``section: why`` for each section skipped because its source is missing)."""
    texts = {path: path.read_text() for path in documents(root)}
    wanted = {path: [n for n in section_names(text, str(path.relative_to(root)))
                     if not only or n in only] for path, text in texts.items()}
    bodies: dict[str, str] = {}
    skipped: list[str] = []
    for name in dict.fromkeys(n for names in wanted.values() for n in names):
        try:
            bodies[name] = render(BY_NAME[name], repository, root)
        except ResultsError as exc:
            skipped.append(f"{name}: {exc}")
    changed: list[str] = []
    for path, names in wanted.items():
        text = texts[path]
        for name in names:
            if name in bodies and section_text(text, name) != bodies[name]:
                changed.append(f"{path.relative_to(root)}: {name}")
                text = replace_section(text, name, bodies[name])
        if text != texts[path] and not check:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return changed, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/results.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="rewrite nothing; exit 1 when a section differs from its source")
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), metavar="SECTION",
                        help=f"section names ({', '.join(BY_NAME)})")
    parser.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: models/ of the project folder)")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="project folder whose README.md, BENCHMARKS.md and docs/*.md are scanned")
    args = parser.parse_args(argv)
    repository = args.repository or args.root / "models"
    try:
        changed, skipped = update(args.root, repository, args.only, args.check)
    except ResultsError as exc:
        print(f"tools/results.py: {exc}", file=sys.stderr)
        return 2
    for line in skipped:
        print(f"tools/results.py: skipped {line}", file=sys.stderr)
    verb = "differs from its source" if args.check else "rewritten"
    for name in changed:
        print(f"tools/results.py: {name} {verb}", file=sys.stderr)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
