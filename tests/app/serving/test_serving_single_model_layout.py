"""KServe's layout: HYDRA_MODEL_NAME names the one model whose files are the repository root
itself (what the storage initializer puts in /mnt/models): the model file at the root is
version 1, numbered version folders are versions as usual, and nothing else is served."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import contract_models as cm
from app.settings import Settings
from servekit import make_settings, serve, wait_for


def test_the_model_file_at_the_root_is_version_1(tmp_path: Path, classifier: cm.BuiltModel) -> None:
    (tmp_path / "model.onnx").write_bytes(classifier.data)
    (tmp_path / "other").mkdir()  # a folder that would be a model in the usual layout
    cm.write_version(tmp_path, "other", 1, classifier.data)
    with serve(make_settings(tmp_path, model_name="digits")) as (client, _, _):
        assert client.get("/v1/models").json() == {"models": ["digits"]}
        assert client.get("/v2/models/digits").json()["versions"] == ["1"]
        r = client.post("/v1/models/digits:predict", json={"instances": [[0.0] * 64]})
        assert r.status_code == 200 and r.json()["model_name"] == "digits"


def test_version_folders_at_the_root_are_versions(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel
) -> None:
    for version, model in ((1, classifier), (2, classifier_b)):
        (tmp_path / str(version)).mkdir()
        (tmp_path / str(version) / "model.onnx").write_bytes(model.data)
    (tmp_path / "model.onnx").write_bytes(classifier.data)  # ignored beside version folders
    with serve(make_settings(tmp_path, model_name="digits")) as (client, _, _):
        wait_for(lambda: client.get("/v2/models/digits").json()["versions"] == ["1", "2"],
                 what="both versions")
        assert client.get("/v2/models/digits/ready").json()["version"] == "2"


def test_an_empty_root_serves_nothing_and_a_bad_name_is_refused(tmp_path: Path) -> None:
    with serve(make_settings(tmp_path / "missing", model_name="digits"), wait_ready=False) as (client, _, _):
        wait_for(lambda: client.get("/v2/models/digits").status_code == 404, what="a 404")
    with pytest.raises(ValidationError, match="a model name"):
        Settings(repository=tmp_path, model_name="../etc")
