"""A small Dockerfile reader (stages and instructions) and the project's image policy.

hadolint checks good practice; `image_policy_problems` checks what this project needs from
its images (docs/deploy.md) and returns what is wrong, in words.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages in order; continuation lines are joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=parts[0]))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, rest.strip()))
    return args, stages


def lineage(stages: list[Stage], target: str) -> list[Stage]:
    """Every stage the target's filesystem comes from: its FROM chain and COPY --from sources."""
    by_name = {s.name: s for s in stages}
    seen: list[Stage] = []

    def visit(name: str) -> None:
        stage = by_name.get(name)
        if stage is None or stage in seen:
            return
        visit(stage.base)
        for copy in stage.all("COPY"):
            match = re.search(r"--from=(\S+)", copy.args)
            if match:
                visit(match.group(1))
        seen.append(stage)

    visit(target)
    return seen


def copy_sources(stages: list[Stage]) -> list[str]:
    """Build-context paths that COPY/ADD read (not those copied from other stages)."""
    sources = []
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword in ("COPY", "ADD") and "--from=" not in ins.args:
                words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
                sources.extend(words[:-1])
    return sources


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore excludes `path` (last matching pattern wins, `!` re-includes).

    A pattern excludes a path when it matches the path or one of its parent directories.
    """
    parts = path.strip("/").split("/")
    excluded = False
    for raw in patterns:
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        else:
            prefixes = ("/".join(parts[:d]) for d in range(1, len(parts) + 1))
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


def image_policy_problems(dockerfile: Path, context: Path) -> list[str]:
    """What the Dockerfile breaks of this project's image requirements (empty: none)."""
    args, stages = parse(dockerfile.read_text())
    problems: list[str] = []
    names = [s.name for s in stages]
    if not stages or stages[-1].name != "service":
        problems.append(f"the last stage (default target) must be 'service', got {names[-1:]}")
        return problems
    if "train" not in names:
        problems.append(f"no 'train' target among stages {names}")

    base = args.get("CUDA_IMAGE", "")
    if not re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d(@sha256:[0-9a-f]{64})?", base):
        problems.append(f"base image must be a CUDA 13 cuDNN runtime tag, got {base!r}")

    service = stages[-1]
    users = service.all("USER")
    if not users:
        problems.append("service stage sets no USER: it would run as root")
    else:
        user = users[-1].args.split(":")[0]
        resolved = args.get(user.strip("${}"), user) if user.startswith("$") else user
        if resolved in ("root", "0") or not resolved:
            problems.append(f"service runs as root (USER {users[-1].args})")
    health = " ".join(i.args for i in service.all("HEALTHCHECK"))
    if "/v2/health/ready" not in health:
        problems.append("service HEALTHCHECK must probe /v2/health/ready")
    if "curl" in health or "wget" in health:
        problems.append("service HEALTHCHECK must not need curl/wget (use python)")
    if not any("/models" in v.args for v in service.all("VOLUME")):
        problems.append("service must declare the model repository /models as a VOLUME")

    chain = lineage(stages, "service")
    for stage in chain:
        for run in stage.all("RUN"):
            if re.search(r"--extra[ =](train|cuda|cpu)\b|--all-extras|\bpip install[^&;|]*\btorch", run.args):
                problems.append(
                    f"stage {stage.name!r} of the service image installs torch: {run.args}"
                )
    # Every install reads uv.lock: uv itself pinned by hash, then `uv sync --locked`.
    runs = [run.args for stage in stages for run in stage.all("RUN")]
    if not any(
        re.search(r"pip install[^&;|]*--require-hashes[^&;|]*-r\s+\S*uv-requirements\.txt", r)
        for r in runs
    ):
        problems.append("uv is not installed by hash from tools/uv-requirements.txt")
    for run in runs:
        for pip in re.findall(r"pip install[^&;|]*", run):
            if "--require-hashes" not in pip:
                problems.append(f"a pip install outside the lock: {pip.strip()}")
        for sync in re.findall(r"uv sync[^&;|]*", run):
            if "--locked" not in sync.split():
                problems.append(f"uv sync without --locked (it could rewrite the lock): {sync.strip()}")
        if re.search(r"\buv (pip install|add|lock)\b", run):
            problems.append(f"an install that bypasses uv.lock: {run}")
    # Dependencies are installed before the source is copied, so source edits keep that layer.
    sequence = [(s.name, i) for s in chain for i in s.instructions]
    first_deps = next(
        (
            n
            for n, (_, i) in enumerate(sequence)
            if i.keyword == "RUN" and re.search(r"uv sync[^&;|]*--no-install-project", i.args)
        ),
        None,
    )
    first_source = next(
        (
            n
            for n, (_, i) in enumerate(sequence)
            if i.keyword == "COPY" and "--from=" not in i.args and re.search(r"(^|\s)app\b", i.args)
        ),
        None,
    )
    if first_deps is None:
        problems.append("the service's dependencies are not installed from uv.lock on their own")
    elif first_source is not None and first_source < first_deps:
        problems.append("the source (app/) is copied before the dependency layer is installed")

    ignore = (context / ".dockerignore").read_text().splitlines()
    for source in copy_sources(stages):
        if not (context / source).exists():
            problems.append(f"COPY source {source!r} does not exist in the build context")
        elif dockerignore_excludes(ignore, source):
            problems.append(f"COPY source {source!r} is excluded by .dockerignore")
    return problems
