"""What the repository trusts: a file's metadata only after every value passed its check
(refused otherwise, the previous version serving on), one folder per version number within
the range a URL can name, and no file-system call of one version holding up another."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import helper

import app.serving.repository as repository
import contract_models as cm
from contract.layout import NAME_PATTERN
from servekit import make_settings, serve, wait_for

X = [0.0] * 64


def failures(registry, model: str = "digits") -> float | None:  # type: ignore[no-untyped-def]
    return registry.get_sample_value("hydra_model_load_failures_total", {"model": model})


def write_folder(root: Path, name: str, folder: str, data: bytes) -> Path:
    """``root/name/folder/model.onnx``, written through a temporary file and a rename."""
    path = root / name / folder / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("model.onnx.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def edit_meta(key: str, edit: Callable[[Any], Any]) -> Callable[[bytes], bytes]:
    """The model with the JSON value of ``hydra.<key>`` edited (NaN and Infinity written as
    the JSON tokens Python writes)."""
    def apply(data: bytes) -> bytes:
        model = onnx.load_from_string(data)
        for prop in model.metadata_props:
            if prop.key == f"hydra.{key}":
                prop.value = json.dumps(edit(json.loads(prop.value)))
        return model.SerializeToString()
    return apply


def extra_head(data: bytes) -> bytes:
    """A sixth head output in the graph of a model whose metadata says five heads."""
    model = onnx.load_from_string(data)
    model.graph.node.append(helper.make_node("Identity", ["head_4"], ["head_5"], name="extra"))
    model.graph.output.append(helper.make_tensor_value_info("head_5", onnx.TensorProto.FLOAT, ["batch", 10]))
    return model.SerializeToString()


def drift_fraction_nan(drift: dict[str, Any]) -> dict[str, Any]:
    expected = list(drift["model"]["expected"])
    expected[2] = math.nan  # the sum is NaN: abs(nan - 1) > 1e-6 is false
    return {**drift, "model": {**drift["model"], "expected": expected}}


def score_nan(ood: dict[str, Any]) -> dict[str, Any]:
    scores = list(ood["sorted_scores"])
    scores[0] = math.nan
    return {**ood, "sorted_scores": scores}


def twice(labels: list[str]) -> list[str]:
    return [labels[0], *labels[:-1]]


# model name: (the corruption of its version 2, what the refusal says)
CORRUPT: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "threshold-nan": (edit_meta("ood", lambda v: {**v, "threshold": math.nan}),
                      "hydra.ood: threshold is nan, expected a finite number"),
    "threshold-inf": (edit_meta("ood", lambda v: {**v, "threshold": math.inf}),
                      "hydra.ood: threshold is inf, expected a finite number"),
    "threshold-1e9": (edit_meta("ood", lambda v: {**v, "threshold": 1e9}),
                      "hydra.ood: threshold is 1000000000.0, expected "),
    "score-nan": (edit_meta("ood", score_nan), "hydra.ood: sorted_scores[0] is nan, expected a finite number"),
    "drift-nan": (edit_meta("drift", drift_fraction_nan),
                  "hydra.drift.model: expected[2] is nan, expected a finite number"),
    "drift-one-bin": (edit_meta("drift", lambda v: {**v, "total": {"edges": [], "expected": [1.0]}}),
                      "hydra.drift.total: edges is empty"),
    "labels-twice": (edit_meta("class_labels", twice), "hydra.class_labels are not distinct: '0' more than once"),
    "outputs-listed": (edit_meta("outputs", lambda v: v[::-1]), "hydra.outputs lists 11 outputs, expected the 11"),
    "training-nan": (edit_meta("training", lambda v: {**v, "loss": math.nan}),
                     "hydra.training.loss is nan, expected a finite number"),
    "heads-extra": (extra_head, "hydra.num_heads is 5, but the graph has 6 head outputs"),
}


def test_a_file_failing_a_metadata_check_is_refused_and_the_previous_version_serves(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each model serves version 1; a version 2 whose file carries one value that fails its
    check (NaN, infinite or inconsistent) is refused with a log line naming the field and a
    count, and version 1 keeps answering with a finite threshold."""
    for name in CORRUPT:
        cm.write_version(tmp_path, name, 1, classifier.data)
    caplog.set_level(logging.ERROR, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        repo = app_.state.repository
        wait_for(lambda: repo.names() == sorted(CORRUPT), what="every version 1")
        for name, (corrupt, _) in CORRUPT.items():
            cm.write_version(tmp_path, name, 2, corrupt(classifier_b.data))
        wait_for(lambda: all(failures(registry, name) == 1.0 for name in CORRUPT), what="every refusal")
        time.sleep(0.5)  # several more scans: refused once, not retried while unchanged
        answers = {name: client.post(f"/v1/models/{name}:predict", json={"instances": [X, cm.far_inputs(1)[0].tolist()]})
                   for name in CORRUPT}
        listed = {name: client.get(f"/v2/models/{name}").json()["versions"] for name in CORRUPT}
        ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    for name, (_, message) in CORRUPT.items():
        assert failures(registry, name) == 1.0, name
        assert listed[name] == ["1"], name
        r = answers[name]
        assert r.status_code == 200 and r.json()["model_version"] == "1", name
        ood = [p["ood"] for p in r.json()["predictions"]]
        assert all(math.isfinite(o["threshold"]) and o["is_ood"] == (o["score"] > o["threshold"]) for o in ood)
        assert ood[1]["is_ood"] and ood[1]["p_value"] < 0.05, name
        assert f"refused model {name} version 2: ContractError: {message}" in caplog.text, name
        assert f"version 2: ContractError: {message}" in caplog.text
    lines = [r.getMessage() for r in caplog.records if "refused model threshold-nan version 2" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith("(still serving version 1)")


# -- version folders -------------------------------------------------------------------------


def messages(caplog: pytest.LogCaptureFixture, level: int, fragment: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and fragment in r.getMessage()]


@pytest.mark.parametrize(("serving", "twin"), [("01", "1"), ("1", "01")])
def test_a_twin_folder_never_unloads_the_serving_version(
    tmp_path: Path, classifier: cm.BuiltModel, serving: str, twin: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Version 1 serves from one folder; a broken folder naming the same number appears. The
    serving version keeps serving (readiness stays 200), the twin is not loaded, and one ERROR
    line names both folders however many scans see them."""
    write_folder(tmp_path, "digits", serving, classifier.data)
    caplog.set_level(logging.INFO, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        write_folder(tmp_path, "digits", twin, b"a broken copy")
        wait_for(lambda: failures(registry) == 1.0, what="the twin refused")
        time.sleep(0.5)  # several more scans
        answer = client.post("/v1/models/digits:predict", json={"instances": [X]})
        ready = client.get("/v2/health/ready")
        versions = client.get("/v2/models/digits").json()["versions"]
        still = failures(registry)
        shutil.rmtree(tmp_path / "digits" / twin)
        wait_for(lambda: bool(messages(caplog, logging.INFO, "one folder left")), what="the twin gone")
        time.sleep(0.3)
        after = client.post("/v1/models/digits:predict", json={"instances": [X]})
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert ready.status_code == 200 and versions == ["1"]
    assert still == 1.0 and failures(registry) == 1.0
    errors = messages(caplog, logging.ERROR, "name the same version 1")
    assert len(errors) == 1
    folders = sorted([serving, twin])
    assert (f"refused model digits version 1: folders {tmp_path / 'digits' / folders[0]} and "
            f"{tmp_path / 'digits' / folders[1]} name the same version 1; none is loaded until only one is left") in errors[0]
    assert f"version 1 keeps serving what it loaded from {serving}/model.onnx" in errors[0]
    assert not messages(caplog, logging.INFO, "unloaded")
    assert after.status_code == 200 and after.json()["model_version"] == "1"


def test_two_folders_for_one_version_load_neither_until_one_goes(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``01`` and ``1`` both present from the start: version 1 is served from neither (404
    naming both), version 2 is, and removing ``01`` lets ``1`` load."""
    write_folder(tmp_path, "digits", "01", classifier.data)
    write_folder(tmp_path, "digits", "1", classifier_b.data)
    write_folder(tmp_path, "digits", "2", classifier.data)
    caplog.set_level(logging.ERROR, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        repo = app_.state.repository
        wait_for(lambda: repo.versions("digits") == [2], what="version 2")
        time.sleep(0.5)
        versions = repo.versions("digits")
        missing = client.post("/v2/models/digits/versions/1/infer", json={"inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": X}]})
        shutil.rmtree(tmp_path / "digits" / "01")
        wait_for(lambda: repo.versions("digits") == [1, 2], what="version 1 from its one folder")
        sha = repo.get("digits", 1).model.sha256
    assert versions == [2]
    assert missing.status_code == 404
    assert "version 1 is not served: folders 01 and 1 name the same version" in missing.json()["error"]
    errors = messages(caplog, logging.ERROR, "name the same version 1")
    assert len(errors) == 1 and "none is loaded until only one is left (still serving version " in errors[0]
    assert failures(registry) == 1.0
    import hashlib

    assert sha == hashlib.sha256(classifier_b.data).hexdigest()


def test_a_version_folder_no_url_can_name_is_ignored(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Numbers up to 18 digits are versions (the largest serves and is the default); a
    folder beyond them (10^18, 22 digits) is logged once and never loaded or the default."""
    largest = "9" * 18
    beyond = ("1" + "0" * 18, "1" + "0" * 21)
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    write_folder(tmp_path, "digits", largest, classifier_b.data)
    for folder in beyond:
        write_folder(tmp_path, "digits", folder, classifier_b.data)
    caplog.set_level(logging.WARNING, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        repo = app_.state.repository
        wait_for(lambda: repo.versions("digits") == [1, int(largest)], what="both versions")
        time.sleep(0.5)
        versions = client.get("/v2/models/digits").json()["versions"]
        default = client.post("/v1/models/digits:predict", json={"instances": [X]})
        by_url = client.get(f"/v2/models/digits/versions/{largest}/ready")
    assert versions == ["1", largest]
    assert default.status_code == 200 and default.json()["model_version"] == largest
    assert by_url.status_code == 200
    for folder in beyond:
        lines = messages(caplog, logging.WARNING, f"ignored folder {tmp_path / 'digits' / folder} of model digits")
        assert len(lines) == 1, folder
        assert f"beyond {largest}, the largest a URL can name (1 to 18 digits)" in lines[0]
    assert failures(registry) is None


def test_folders_that_are_not_model_names_are_logged_once(
    tmp_path: Path, classifier: cm.BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    for folder in ("my model", "-lead", "ünïcode", ".staging-12-ab", ".hidden"):
        write_folder(tmp_path, folder, "1", classifier.data)
    (tmp_path / "notes.txt").write_text("a file: not a folder, not a model")
    caplog.set_level(logging.WARNING, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, _):
        time.sleep(0.5)  # several scans
        names = app_.state.repository.names()
    assert names == ["digits"]
    for folder in ("my model", "-lead", "ünïcode"):
        lines = messages(caplog, logging.WARNING, f"ignored folder {tmp_path / folder}:")
        assert len(lines) == 1, folder
        assert f"{folder!r} is not a model name" in lines[0] and NAME_PATTERN.pattern in lines[0]
    assert not [r for r in caplog.records if ".staging" in r.getMessage() or ".hidden" in r.getMessage()]
    assert not [r for r in caplog.records if "notes.txt" in r.getMessage()]


# -- the watcher: no file-system call holds up another version ---------------------------------


@contextmanager
def fifo_model(path: Path) -> Iterator[Path]:
    """A FIFO named model.onnx: nobody writes it, so opening it for reading blocks. Always
    unblocked (opened for writing and closed: the reader sees end of file) and removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    try:
        yield path
    finally:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds while a reader waits
            os.close(fd)
        except OSError:  # no reader is waiting (any more)
            pass
        path.unlink()


def reads_of(calls: list[Path], path: Path) -> int:
    return sum(1 for p in calls if p == path)


def test_a_read_that_never_finishes_holds_up_only_its_own_version(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """digits/2/model.onnx is a FIFO nobody writes. Versions published after it appeared, of
    another model and of digits itself, load and serve; digits version 2 answers "still
    loading"; scan after scan, its read is started once, in a daemon thread."""
    monkeypatch.setattr(repository, "READ_WAIT_S", 0.3)
    calls: list[Path] = []
    real_read = repository.read_model_file

    def counting(path: Path) -> tuple[bytes, str]:
        calls.append(path)
        return real_read(path)

    monkeypatch.setattr(repository, "read_model_file", counting)
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "other", 1, classifier.data)
    caplog.set_level(logging.INFO, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        repo = app_.state.repository
        with fifo_model(tmp_path / "digits" / "2" / "model.onnx") as fifo:
            time.sleep(0.5)  # the FIFO is stable: its read starts and blocks
            cm.write_version(tmp_path, "other", 2, classifier_b.data)
            cm.write_version(tmp_path, "digits", 3, classifier_b.data)
            wait_for(lambda: repo.versions("other") == [1, 2] and repo.versions("digits") == [1, 3],
                     what="other v2 and digits v3, published after the FIFO appeared")
            other = client.post("/v1/models/other:predict", json={"instances": [X]})
            digits = client.post("/v1/models/digits:predict", json={"instances": [X]})
            stuck = client.get("/v2/models/digits/versions/2/ready")
            ready = client.get("/v2/health/ready")
            wait_for(lambda: bool(messages(caplog, logging.WARNING, f"reading {fifo} has not finished")),
                     what="the stalled read logged")
            time.sleep(0.5)  # several more scans while the read is blocked
            started = reads_of(calls, fifo)
            readers = [t for t in threading.enumerate() if t.name == f"repository-read {fifo}"]
            stalled = messages(caplog, logging.WARNING, f"reading {fifo} has not finished")
        # Unblocked (end of file): the read finishes and the empty file is refused.
        wait_for(lambda: failures(registry) == 1.0, what="the FIFO's empty read refused")
    assert other.status_code == 200 and other.json()["model_version"] == "2"
    assert digits.status_code == 200 and digits.json()["model_version"] == "3"
    assert stuck.status_code == 503 and ready.status_code == 200
    assert started == 1
    assert len(readers) == 1 and readers[0].daemon
    assert len(stalled) == 1 and "model digits version 2 stays unloaded" in stalled[0]


def test_readiness_does_not_wait_for_a_read_that_never_finishes(
    tmp_path: Path, classifier: cm.BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO is already there (and stable) at start beside a good version: the first scan
    starts both loads, counts the FIFO's as done once its read has stalled, and the service
    becomes ready. It shuts down with the read still blocked; when the read ends after the
    service is gone, its thread finishes quietly."""
    monkeypatch.setattr(repository, "READ_WAIT_S", 0.3)
    calls: list[Path] = []
    real_read = repository.read_model_file

    def counting(path: Path) -> tuple[bytes, str]:
        calls.append(path)
        return real_read(path)

    monkeypatch.setattr(repository, "read_model_file", counting)
    raised: list[BaseException | None] = []  # exceptions escaping any thread
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    settings = make_settings(tmp_path)

    def reader_alive(fifo: Path) -> bool:
        return any(t.name == f"repository-read {fifo}" for t in threading.enumerate())

    with fifo_model(tmp_path / "digits" / "2" / "model.onnx") as fifo:
        time.sleep(3 * settings.poll_interval_s)  # not written for a poll interval: stable at once
        with serve(settings) as (client, app_, _):
            first_reads = list(calls)  # readiness came with the FIFO's read under way
            ready = client.get("/v2/health/ready")
            answer = client.post("/v1/models/digits:predict", json={"instances": [X]})
            stuck = client.get("/v2/models/digits/versions/2/ready")
        blocked_after_shutdown = reader_alive(fifo)
    wait_for(lambda: not reader_alive(fifo), what="the reader's thread to end")
    assert raised == []
    assert fifo in first_reads
    assert ready.status_code == 200 and ready.json()["models"] == {"digits": ["1"]}
    assert answer.json()["model_version"] == "1"
    assert stuck.status_code == 503
    assert blocked_after_shutdown


def test_a_listing_that_never_finishes_leaves_its_model_as_it_is(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The listing of digits/ hangs (a hung mount): digits keeps serving what it serves (not
    unloaded as "removed"), another model's new version loads, the stall is logged once and
    one listing is in flight however many scans pass."""
    monkeypatch.setattr(repository, "LIST_WAIT_S", 0.3)
    release = threading.Event()
    hang = threading.Event()
    hung_calls: list[Path] = []
    real_scan = repository.scan_model

    def scan_model(model_dir: Path) -> repository.ModelScan:
        if model_dir.name == "digits" and hang.is_set():
            hung_calls.append(model_dir)
            release.wait(30)
        return real_scan(model_dir)

    monkeypatch.setattr(repository, "scan_model", scan_model)
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "other", 1, classifier.data)
    caplog.set_level(logging.INFO, logger="app.repository")
    try:
        with serve(make_settings(tmp_path)) as (client, app_, registry):
            repo = app_.state.repository
            wait_for(lambda: repo.names() == ["digits", "other"], what="both models")
            hang.set()
            wait_for(lambda: bool(hung_calls), what="the hung listing")
            cm.write_version(tmp_path, "other", 2, classifier_b.data)
            wait_for(lambda: repo.versions("other") == [1, 2], what="other v2")
            time.sleep(0.5)  # several more scans
            digits = client.post("/v1/models/digits:predict", json={"instances": [X]})
            calls = len(hung_calls)
            stalled = messages(caplog, logging.WARNING, f"listing {tmp_path / 'digits'} has not finished")
            hang.clear()
            release.set()
            cm.write_version(tmp_path, "digits", 2, classifier_b.data)
            wait_for(lambda: repo.versions("digits") == [1, 2], what="digits v2 once listings finish")
    finally:
        release.set()
    assert digits.status_code == 200 and digits.json()["model_version"] == "1"
    assert calls == 1
    assert len(stalled) == 1 and "model digits is left as it is" in stalled[0]
    assert not messages(caplog, logging.INFO, "unloaded")
    assert failures(registry) is None


def test_a_blocked_read_is_abandoned_when_its_file_is_replaced_or_removed(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two reads block: digits/2's FIFO is then replaced by a model file (which loads without
    waiting for the old read), digits/3's folder is removed. When the old reads finally end,
    nothing comes of them: no refusal, no version 3."""
    calls: list[Path] = []
    real_read = repository.read_model_file

    def counting(path: Path) -> tuple[bytes, str]:
        calls.append(path)
        return real_read(path)

    monkeypatch.setattr(repository, "read_model_file", counting)
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    held: list[int] = []
    try:
        with serve(make_settings(tmp_path)) as (client, app_, registry):
            repo = app_.state.repository
            fifos = [tmp_path / "digits" / v / "model.onnx" for v in ("2", "3")]
            for fifo in fifos:
                fifo.parent.mkdir()
                os.mkfifo(fifo)
            for fifo in fifos:
                wait_for(lambda fifo=fifo: reads_of(calls, fifo) == 1, what=f"the read of {fifo}")
                # A writer that never writes: the reader's open() returns and its read() blocks
                # (so it can be ended even after the FIFO's name is gone).
                held.append(os.open(fifo, os.O_RDWR))
            tmp = fifos[0].with_name("model.onnx.tmp")
            tmp.write_bytes(classifier_b.data)
            os.replace(tmp, fifos[0])  # the FIFO's name now holds a model
            shutil.rmtree(fifos[1].parent)
            wait_for(lambda: repo.versions("digits") == [1, 2], what="version 2 from the new file")
            served = repo.get("digits", 2).model.sha256
            for fd in held:
                os.close(fd)  # the old reads end (end of file) and are dropped
            held.clear()
            time.sleep(0.5)
            versions = repo.versions("digits")
            missing = client.get("/v2/models/digits/versions/3/ready")
    finally:
        for fd in held:
            os.close(fd)
    import hashlib

    assert served == hashlib.sha256(classifier_b.data).hexdigest()
    assert versions == [1, 2] and missing.status_code == 404
    assert failures(registry) is None
    assert reads_of(calls, fifos[0]) == 2 and reads_of(calls, fifos[1]) == 1  # old read once, new file once


def test_a_listing_that_is_always_too_slow_is_logged_once(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Every listing of digits/ finishes, but later than LIST_WAIT_S: one warning, not one per
    scan; the model keeps serving, another model's new version loads."""
    monkeypatch.setattr(repository, "LIST_WAIT_S", 0.2)
    slow = threading.Event()
    slow_calls: list[Path] = []
    real_scan = repository.scan_model

    def scan_model(model_dir: Path) -> repository.ModelScan:
        if model_dir.name == "digits" and slow.is_set():
            slow_calls.append(model_dir)
            time.sleep(0.3)
        return real_scan(model_dir)

    monkeypatch.setattr(repository, "scan_model", scan_model)
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "other", 1, classifier.data)
    caplog.set_level(logging.INFO, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        repo = app_.state.repository
        wait_for(lambda: repo.names() == ["digits", "other"], what="both models")
        slow.set()
        wait_for(lambda: len(slow_calls) >= 4, what="several slow listings")
        cm.write_version(tmp_path, "other", 2, classifier_b.data)
        wait_for(lambda: repo.versions("other") == [1, 2], what="other v2")
        digits = client.post("/v1/models/digits:predict", json={"instances": [X]})
        slow.clear()
    stalled = messages(caplog, logging.WARNING, f"listing {tmp_path / 'digits'} has not finished")
    assert len(stalled) == 1
    assert digits.status_code == 200 and digits.json()["model_version"] == "1"
    assert not messages(caplog, logging.INFO, "unloaded")


def test_readiness_waits_for_every_model_found_at_start(
    tmp_path: Path, classifier: cm.BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models written just before the start (too new for the first scan to load) and one
    of them slow to read: the replica is not ready while one model it will serve is still
    loading, so no request that follows readiness gets a 503."""
    real_read = repository.read_model_file

    def slow_for_second(path: Path) -> tuple[bytes, str]:
        if path.parent.parent.name == "second":
            time.sleep(1.0)
        return real_read(path)

    monkeypatch.setattr(repository, "read_model_file", slow_for_second)
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "second", 1, classifier.data)
    with serve(make_settings(tmp_path)) as (client, _, _):
        answers = [client.post(f"/v1/models/{name}:predict", json={"instances": [X]})
                   for name in ("digits", "second")]
        ready = client.get("/v2/health/ready").json()
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert ready["models"] == {"digits": ["1"], "second": ["1"]}
