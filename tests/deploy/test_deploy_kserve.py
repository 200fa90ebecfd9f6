"""KServe packaging (deploy/kserve/): each manifest validated against the schema of its
custom resource as KServe and prometheus-operator publish it (deploy/kserve/schemas/), and
the wiring between the manifests and the service: the InferenceService selects the runtime,
the runtime's variables are settings the service reads and its ports the ones it listens
on, the probes and the scrape hit routes the service answers, and the ServiceMonitor
selects the Service KServe creates for the predictor.

What the KServe controller does with these objects is taken from KServe v0.20.0, the
release the schemas come from: pkg/apis/serving/v1beta1/predictor_model.go (runtime
selection), pkg/controller/v1beta1/inferenceservice/components/predictor.go (labels),
.../reconcilers/service/service_reconciler.go (Service ports) and
.../utils/utils.go (ReplacePlaceholders: {{.Name}} in the container).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from jsonschema.exceptions import ValidationError

KSERVE = Path("deploy/kserve")
SCHEMAS = KSERVE / "schemas"
MANIFESTS = {
    "ServingRuntime": "servingruntime.yaml",
    "InferenceService": "inferenceservice.yaml",
    "ServiceMonitor": "servicemonitor.yaml",
}
API_GROUPS = {
    "ServingRuntime": "serving.kserve.io",
    "InferenceService": "serving.kserve.io",
    "ServiceMonitor": "monitoring.coreos.com",
}
KSERVE_RELEASE = "v0.20.0"
K8S_VERSION = "1.34.0"  # the ObjectMeta schema (kubernetes-validate's bundle)

# From KServe v0.20.0 (pkg/constants/constants.go).
KSERVE_CONTAINER = "kserve-container"
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
ISVC_LABEL = "serving.kserve.io/inferenceservice"
COMPONENT_LABEL = "component"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
STANDARD_MODES = {"Standard", "RawDeployment"}  # RawDeployment: the older name
MODEL_MOUNT = "/mnt/models"
PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")

# The protocols hydra-serve speaks (V1 and V2 over HTTP, V2 over gRPC); not grpc-v1.
SERVED_PROTOCOLS = {"v1", "v2", "grpc-v2"}

# Schema keywords whose meaning is the same in OpenAPI v3 and JSON Schema Draft 7, and the
# Kubernetes extensions this module handles (see deploy/kserve/schemas/README.md).
JSON_SCHEMA_KEYWORDS = {
    "type", "properties", "additionalProperties", "items", "required", "enum", "default",
    "format", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems",
    "maxItems", "uniqueItems", "minProperties", "maxProperties", "anyOf", "allOf", "oneOf",
    "not", "description", "title",
}
KUBERNETES_KEYWORDS = {
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
}
_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_ONE = ("additionalProperties", "items", "not")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


# --- schemas -------------------------------------------------------------------------------


def schema_file(kind: str, version: str) -> Path:
    return SCHEMAS / f"{kind.lower()}-{version}.json"


def subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in _SCHEMA_MAPS:
        yield from schema.get(key, {}).values()
    for key in _SCHEMA_ONE:
        if isinstance(schema.get(key), dict):
            yield schema[key]
    for key in _SCHEMA_LISTS:
        yield from schema.get(key, [])


def keywords(schema: dict[str, Any]) -> set[str]:
    """Every keyword used anywhere in a schema (property names are not keywords)."""
    found = set(schema)
    for sub in subschemas(schema):
        found |= keywords(sub)
    return found


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A structural schema as JSON Schema, with unknown fields refused as the API server's
    strict field validation refuses them (deploy/kserve/schemas/README.md)."""
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if key in schema:
            out[key] = {name: strict_schema(sub) for name, sub in schema[key].items()}
    for key in _SCHEMA_ONE:
        if isinstance(schema.get(key), dict):
            out[key] = strict_schema(schema[key])
    for key in _SCHEMA_LISTS:
        if key in schema:
            out[key] = [strict_schema(sub) for sub in schema[key]]
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema and "additionalProperties" not in schema and not preserve:
        out["additionalProperties"] = False
    return out


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """x-kubernetes-list-type: no duplicate entries (set) or keys (map), as the API server
    checks them; a key an entry leaves out takes its schema default."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        for i, item in enumerate(instance):
            if item in instance[:i]:
                yield ValidationError(f"duplicate entry {item!r} in a list of type set")
    elif list_type == "map":
        names = schema.get("x-kubernetes-list-map-keys", [])
        defaults = {
            name: prop.get("default")
            for name, prop in schema.get("items", {}).get("properties", {}).items()
        }
        seen: set[str] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = {name: item.get(name, defaults.get(name)) for name in names}
            text = json.dumps(key, sort_keys=True)
            if text in seen:
                yield ValidationError(f"duplicate entry for the map keys {key}")
            seen.add(text)


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type}
)


@functools.cache
def raw_schema(repo: Path, kind: str, version: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((repo / schema_file(kind, version)).read_text())
    return schema


@functools.cache
def validator_for(repo: Path, kind: str, version: str) -> Any:
    schema = strict_schema(raw_schema(repo, kind, version))
    KubernetesValidator.check_schema(schema)
    return KubernetesValidator(schema)


def schema_errors(repo: Path, doc: dict[str, Any]) -> list[str]:
    """What the custom resource's schema, and Kubernetes' ObjectMeta schema for its
    metadata, refuse in ``doc``: one "path: message" line each."""
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    kind = doc.get("kind", "")
    if kind not in API_GROUPS or group != API_GROUPS[kind]:
        return [f"apiVersion {doc.get('apiVersion')!r} kind {kind!r}: no schema for it here"]
    if not (repo / schema_file(kind, version)).exists():
        return [f"no schema for {kind} {version} in {SCHEMAS}"]
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator_for(repo, kind, version).iter_errors(doc)
    ]
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    try:
        kubernetes_validate.validate(carrier, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(map(str, exc.absolute_path))
        errors.append(f"{path}: {exc.message}")
    return errors


# --- manifests -----------------------------------------------------------------------------


def load(repo: Path, kind: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((repo / KSERVE / MANIFESTS[kind]).read_text()) if d]
    assert len(docs) == 1, f"{MANIFESTS[kind]}: one object expected"
    assert docs[0]["kind"] == kind
    doc: dict[str, Any] = docs[0]
    return doc


@pytest.fixture(scope="module")
def objects(repo: Path) -> dict[str, dict[str, Any]]:
    return {kind: load(repo, kind) for kind in MANIFESTS}


def server_container(runtime: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in runtime["spec"]["containers"] if c["name"] == KSERVE_CONTAINER]
    assert len(found) == 1, f"the runtime needs one container named {KSERVE_CONTAINER}"
    return found[0]


def is_grpc_port(port: dict[str, Any]) -> bool:
    """KServe's test for a gRPC port (service_reconciler.go, isGrpcPort)."""
    name = port.get("name", "")
    return "grpc" in name or "h2c" in name


def with_placeholders(value: str, isvc: dict[str, Any]) -> str:
    """A runtime container's text as KServe writes it for this InferenceService: Go template
    fields of the InferenceService's ObjectMeta ({{.Name}}, {{.Namespace}})."""
    meta = isvc["metadata"]
    fields = {"Name": meta["name"], "Namespace": meta.get("namespace", "default")}

    def field(match: re.Match[str]) -> str:
        if match.group(1) not in fields:
            raise AssertionError(f"{match.group(0)}: not an ObjectMeta field used here")
        return fields[match.group(1)]

    return PLACEHOLDER.sub(field, value)


# --- the checks of the wiring, each a list of problems in words ----------------------------


def selection_problems(runtime: dict[str, Any], isvc: dict[str, Any]) -> list[str]:
    """Does KServe give this InferenceService's predictor to this runtime? (KServe v0.20.0,
    predictor_model.go: RuntimeSupportsModel and IsProtocolVersionSupported.)"""
    model = isvc["spec"]["predictor"]["model"]
    spec = runtime["spec"]
    problems = []
    if model.get("runtime") not in (None, runtime["metadata"]["name"]):
        problems.append(f"the predictor names another runtime: {model['runtime']}")
    fmt = model["modelFormat"]
    wanted = f"mt:{fmt['name']}" + (f":{fmt['version']}" if "version" in fmt else "")
    offered = set()
    for supported in spec.get("supportedModelFormats", []):
        if model.get("runtime") is not None or supported.get("autoSelect") is True:
            offered.add(f"mt:{supported['name']}")
            if "version" in supported:
                offered.add(f"mt:{supported['name']}:{supported['version']}")
    if wanted not in offered:
        problems.append(f"model format {wanted} is not among the runtime's {sorted(offered)}")
    protocol = model.get("protocolVersion", "v1")
    if spec.get("protocolVersions") and protocol not in spec["protocolVersions"]:
        problems.append(f"protocol {protocol} is not among the runtime's protocolVersions")
    if spec.get("disabled") or spec.get("multiModel"):
        problems.append("the runtime is disabled or multi-model")
    return problems


def env_problems(runtime: dict[str, Any], isvc: dict[str, Any]) -> list[str]:
    """Every HYDRA_* variable of the server container names a setting, with a value the
    settings accept, and the ports, repository and model name agree with the manifests."""
    from pydantic import ValidationError as SettingsError

    from app.settings import Settings

    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    container = server_container(runtime)
    env = {e["name"]: e for e in container.get("env", [])}
    problems = [
        f"{name} is not a service setting (no field {name[len(prefix):].lower()!r})"
        for name in env
        if name.upper().startswith(prefix)
        and name[len(prefix):].lower() not in Settings.model_fields
    ]
    values = {
        name: with_placeholders(e["value"], isvc)
        for name, e in env.items()
        if name.upper().startswith(prefix) and "value" in e
    }
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(prefix)}
    try:
        for name in saved:
            del os.environ[name]
        os.environ.update(values)
        settings = Settings()
    except SettingsError as exc:
        return [*problems, str(exc)]
    finally:
        for name in values:
            os.environ.pop(name, None)
        os.environ.update(saved)

    ports = container.get("ports", [])
    http = [p["containerPort"] for p in ports if not is_grpc_port(p)]
    grpc = [p["containerPort"] for p in ports if is_grpc_port(p)]
    if http != [settings.port]:
        problems.append(f"HTTP container ports {http}, the service listens on {settings.port}")
    grpc_port = getattr(settings, "grpc_port", None)
    if grpc and grpc != [grpc_port]:
        problems.append(f"gRPC container ports {grpc}, the service's gRPC port is {grpc_port}")
    if settings.host not in ("0.0.0.0", "::"):
        problems.append(f"the service listens on {settings.host}, not on the pod's address")
    if str(settings.repository) != MODEL_MOUNT:
        problems.append(f"the repository is {settings.repository}, KServe mounts {MODEL_MOUNT}")
    model_name = getattr(settings, "model_name", None)
    if model_name != isvc["metadata"]["name"]:
        problems.append(
            f"the service's model name is {model_name!r}, the InferenceService's "
            f"{isvc['metadata']['name']!r}"
        )
    return problems


def route_problems(
    runtime: dict[str, Any], monitor: dict[str, Any], status_of: Callable[[str], int]
) -> list[str]:
    """The probes' and the scrape's paths are routes the service answers (not 404/405), on
    a port the container declares by name."""
    container = server_container(runtime)
    port_names = {p.get("name") for p in container.get("ports", [])}
    problems = []
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{probe}: no httpGet")
            continue
        paths[probe] = get["path"]
        if get["port"] not in port_names | {p.get("containerPort") for p in container["ports"]}:
            problems.append(f"{probe}: port {get['port']!r} is not a container port")
    for endpoint in monitor["spec"]["endpoints"]:
        paths[f"ServiceMonitor port {endpoint.get('port')}"] = endpoint.get("path", "/metrics")
    for what, path in paths.items():
        status = status_of(path)
        if status in (404, 405):
            problems.append(f"{what}: {path} answers {status}")
    if paths.get("readinessProbe") != "/v2/health/ready":
        problems.append("readiness is not the V2 readiness endpoint")
    if paths.get("livenessProbe") != "/v2/health/live":
        problems.append("liveness is not the V2 liveness endpoint")
    return problems


def predictor_service(runtime: dict[str, Any], isvc: dict[str, Any]) -> dict[str, Any]:
    """The Service KServe (Standard mode) creates for the predictor: its labels (runtime
    spec labels, InferenceService labels, predictor labels, then KServe's own) and ports
    (the first container port on 80, the others on their own numbers, each named like it)."""
    predictor = isvc["spec"]["predictor"]
    labels = {
        **runtime["spec"].get("labels", {}),
        **isvc["metadata"].get("labels", {}),
        **predictor.get("labels", {}),
        ISVC_LABEL: isvc["metadata"]["name"],
        COMPONENT_LABEL: "predictor",
    }
    container_ports = server_container(runtime).get("ports", [])
    ports = [
        {"name": p.get("name"), "port": 80 if i == 0 else p["containerPort"],
         "targetPort": p["containerPort"]}
        for i, p in enumerate(container_ports)
    ]
    return {"name": f"{isvc['metadata']['name']}-predictor", "labels": labels, "ports": ports}


def monitor_problems(
    runtime: dict[str, Any], isvc: dict[str, Any], monitor: dict[str, Any], job: str
) -> list[str]:
    service = predictor_service(runtime, isvc)
    spec = monitor["spec"]
    selector = spec["selector"]
    problems = []
    if selector.get("matchExpressions"):
        problems.append("matchExpressions: this check reads matchLabels only")
    match = selector.get("matchLabels", {})
    if match.get(ISVC_LABEL) != isvc["metadata"]["name"]:
        problems.append(f"the selector does not name the InferenceService in {ISVC_LABEL}")
    for key, value in match.items():
        if service["labels"].get(key) != value:
            problems.append(f"{service['name']} has no label {key}={value}")
    if spec.get("namespaceSelector"):
        problems.append("namespaceSelector: the ServiceMonitor belongs beside the service")
    port_names = {p["name"] for p in service["ports"]}
    for endpoint in spec["endpoints"]:
        if endpoint.get("port") not in port_names:
            problems.append(f"port {endpoint.get('port')!r} is not a port of {service['name']}")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"path {endpoint.get('path')!r} is not /metrics")
        jobs = [
            r.get("replacement") for r in endpoint.get("relabelings", [])
            if r.get("targetLabel") == "job"
        ]
        if jobs != [job]:
            problems.append(f"the job label is {jobs}, the alert rules use {job!r}")
        # Pod labels reach the relabelling as __meta_kubernetes_pod_label_<name>, the name's
        # characters outside [a-zA-Z0-9_] written as _; KServe gives the pods these labels.
        pod_labels = {
            "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
            for name in service["labels"]
        }
        for relabel in endpoint.get("relabelings", []):
            for source in relabel.get("sourceLabels", []):
                if source.startswith("__meta_kubernetes_pod_label_") and source not in pod_labels:
                    problems.append(f"{source}: the predictor's pods have no such label")
    return problems


def alert_job(repo: Path) -> str:
    """The job name the alert rules expect of the service's targets."""
    rules = (repo / "docker/rules/hydra-alerts.rules.yml").read_text()
    jobs = set(re.findall(r'up\{job="([^"]+)"\}', rules))
    assert len(jobs) == 1, jobs
    return jobs.pop()


@pytest.fixture(scope="module")
def status_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], int]:
    """The status the service answers a GET of a path with (an empty repository; the app
    built without its lifespan, so no model poller and no gRPC server)."""
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(
        repository=tmp_path_factory.mktemp("repository"), providers=["CPUExecutionProvider"]
    )
    client = TestClient(create_app(settings, CollectorRegistry()))
    return lambda path: client.get(path).status_code


# --- tests: the schemas --------------------------------------------------------------------


def readme_rows(repo: Path) -> dict[str, list[str]]:
    rows = {}
    for line in (repo / SCHEMAS / "README.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and cells[0].endswith(".json"):
            rows[cells[0]] = cells
    return rows


def test_schemas_are_the_recorded_files(repo: Path) -> None:
    rows = readme_rows(repo)
    files = sorted(p.name for p in (repo / SCHEMAS).glob("*.json"))
    assert sorted(rows) == files == sorted(
        schema_file(k, load(repo, k)["apiVersion"].rpartition("/")[2]).name for k in MANIFESTS
    )
    for name, cells in rows.items():
        _file, kind, version, source, release, commit, path, blob, sha256 = cells
        assert name == schema_file(kind, version).name
        assert re.fullmatch(r"v\d+\.\d+\.\d+", release) and re.fullmatch(r"[0-9a-f]{40}", commit)
        assert re.fullmatch(r"[0-9a-f]{40}", blob)
        assert source.startswith("github.com/") and path.endswith(".yaml")
        digest = hashlib.sha256((repo / SCHEMAS / name).read_bytes()).hexdigest()
        assert digest == sha256, f"{name} differs from the extracted schema recorded"
        if "kserve/kserve" in source:
            assert release == KSERVE_RELEASE


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_schema_uses_only_keywords_this_module_understands(repo: Path, kind: str) -> None:
    version = load(repo, kind)["apiVersion"].rpartition("/")[2]
    schema = raw_schema(repo, kind, version)
    assert keywords(schema) - JSON_SCHEMA_KEYWORDS - KUBERNETES_KEYWORDS == set()
    # The CRDs do not close their objects themselves: the API server prunes unknown fields
    # (or, under strict field validation, refuses them). strict_schema closes them.
    spec = schema["properties"]["spec"]
    assert "additionalProperties" not in spec
    assert strict_schema(schema)["properties"]["spec"]["additionalProperties"] is False


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_passes_its_crd_schema(repo: Path, objects: dict[str, Any], kind: str) -> None:
    assert schema_errors(repo, objects[kind]) == []


Mutation = Callable[[dict[str, Any]], None]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    return server_container(doc)


SCHEMA_MUTANTS: dict[str, tuple[str, Mutation, str]] = {
    "unknown field under spec": (
        "ServingRuntime", lambda d: d["spec"].update(supportedFormats=[]),
        "'supportedFormats' was unexpected",
    ),
    "misspelt probe": (
        "ServingRuntime",
        lambda d: _container(d).update(readinesProbe=_container(d).pop("readinessProbe")),
        "spec.containers.0: Additional properties are not allowed ('readinesProbe'",
    ),
    "port number as a string": (
        "ServingRuntime",
        lambda d: _container(d)["ports"][0].update(containerPort="8000"),
        "spec.containers.0.ports.0.containerPort: '8000' is not of type 'integer'",
    ),
    "autoSelect as a string": (
        "ServingRuntime", lambda d: d["spec"]["supportedModelFormats"][0].update(autoSelect="yes"),
        "spec.supportedModelFormats.0.autoSelect: 'yes' is not of type 'boolean'",
    ),
    "two env entries with one name": (
        "ServingRuntime",
        lambda d: _container(d)["env"].append({"name": "HYDRA_PORT", "value": "9000"}),
        "spec.containers.0.env: duplicate entry for the map keys {'name': 'HYDRA_PORT'}",
    ),
    "two ports with one number (protocol by default)": (
        "ServingRuntime",
        lambda d: _container(d)["ports"].append({"name": "other", "containerPort": 8000}),
        "duplicate entry for the map keys {'containerPort': 8000, 'protocol': 'TCP'}",
    ),
    "memory quantity misspelt": (
        "ServingRuntime",
        lambda d: _container(d)["resources"]["requests"].update(memory="2 GiB"),
        "spec.containers.0.resources.requests.memory: '2 GiB' does not match",
    ),
    "unknown metadata field": (
        "ServingRuntime", lambda d: d["metadata"].update(label={"a": "b"}),
        "metadata: Additional properties are not allowed ('label' was unexpected)",
    ),
    "predictor without a model format name": (
        "InferenceService", lambda d: d["spec"]["predictor"]["model"]["modelFormat"].pop("name"),
        "spec.predictor.model.modelFormat: 'name' is a required property",
    ),
    "model field misspelt": (
        "InferenceService",
        lambda d: d["spec"]["predictor"]["model"].update(
            storageURI=d["spec"]["predictor"]["model"].pop("storageUri")),
        "'storageURI' was unexpected",
    ),
    "replicas as a word": (
        "InferenceService", lambda d: d["spec"]["predictor"].update(minReplicas="one"),
        "spec.predictor.minReplicas: 'one' is not of type 'integer'",
    ),
    "scrape scheme outside the enum": (
        "ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(scheme="tcp"),
        "spec.endpoints.0.scheme: 'tcp' is not one of",
    ),
    "interval in words": (
        "ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds"),
        "spec.endpoints.0.interval: '15 seconds' does not match",
    ),
    "no selector": (
        "ServiceMonitor", lambda d: d["spec"].pop("selector"),
        "spec: 'selector' is a required property",
    ),
    "wrong API version": (
        "InferenceService", lambda d: d.update(apiVersion="serving.kserve.io/v1"),
        "no schema for InferenceService v1",
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEMA_MUTANTS))
def test_schema_validation_catches_a_planted_mistake(
    repo: Path, objects: dict[str, Any], name: str
) -> None:
    kind, mutate, expected = SCHEMA_MUTANTS[name]
    doc = copy.deepcopy(objects[kind])
    mutate(doc)
    errors = schema_errors(repo, doc)
    assert any(expected in e for e in errors), errors


# --- tests: the wiring ---------------------------------------------------------------------


def test_inference_service_selects_the_runtime(objects: dict[str, Any]) -> None:
    runtime, isvc = objects["ServingRuntime"], objects["InferenceService"]
    assert selection_problems(runtime, isvc) == []
    assert set(runtime["spec"]["protocolVersions"]) <= SERVED_PROTOCOLS & KSERVE_PROTOCOLS


def test_runtime_variables_are_settings_the_service_reads(objects: dict[str, Any]) -> None:
    assert env_problems(objects["ServingRuntime"], objects["InferenceService"]) == []


def test_probes_and_scrape_hit_routes_the_service_answers(
    objects: dict[str, Any], status_of: Callable[[str], int]
) -> None:
    assert status_of("/v2/health/live") == 200
    assert status_of("/v2/health/readyz") == 404  # the check can tell a route from none
    assert route_problems(objects["ServingRuntime"], objects["ServiceMonitor"], status_of) == []


def test_service_monitor_selects_the_predictor_service(
    repo: Path, objects: dict[str, Any]
) -> None:
    runtime, isvc, monitor = (objects[k] for k in MANIFESTS)
    assert monitor_problems(runtime, isvc, monitor, alert_job(repo)) == []
    service = predictor_service(runtime, isvc)
    assert service["ports"][0] == {"name": "http1", "port": 80, "targetPort": 8000}


def test_ports_follow_kserve_conventions(objects: dict[str, Any]) -> None:
    runtime, isvc = objects["ServingRuntime"], objects["InferenceService"]
    ports = server_container(runtime)["ports"]
    # The first port is the one KServe's Service answers on port 80: HTTP, named http1.
    assert ports[0]["name"] == "http1" and not is_grpc_port(ports[0])
    grpc = [p for p in ports if is_grpc_port(p)]
    assert [p["name"] for p in grpc] == ["h2c"]
    assert ("grpc-v2" in runtime["spec"]["protocolVersions"]) == bool(grpc)
    # Knative allows one port per container: two ports need the Standard mode.
    if len(ports) > 1:
        assert isvc["metadata"]["annotations"][DEPLOYMENT_MODE] in STANDARD_MODES
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(ports[0]["containerPort"])
    assert annotations["prometheus.kserve.io/path"] == "/metrics"


def test_runtime_runs_this_project_image_as_its_user(repo: Path, objects: dict[str, Any]) -> None:
    container = server_container(objects["ServingRuntime"])
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert container["command"] == ["hydra-serve"]
    assert "hydra-serve" in project["scripts"]
    image, _, tag = container["image"].rpartition(":")
    assert "/" in image and "@" not in container["image"]
    assert tag == project["version"], "the image tag is the project's version"
    uid = re.search(r"^ARG HYDRA_UID=(\d+)$", (repo / "Dockerfile").read_text(), re.M)
    assert uid is not None
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(uid.group(1))
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_inference_service_names_a_valid_model_and_storage(objects: dict[str, Any]) -> None:
    from contract.layout import is_model_name

    isvc = objects["InferenceService"]
    assert is_model_name(isvc["metadata"]["name"])
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert re.fullmatch(r"(pvc://[a-z0-9.-]+/[\w./-]+|(s3|gs|https)://\S+)", uri), uri


WIRING_MUTANTS: dict[str, tuple[str, Mutation, str]] = {
    "model format the runtime does not offer": (
        "selection",
        lambda o: o["InferenceService"]["spec"]["predictor"]["model"]["modelFormat"].update(
            name="onnx"),
        "model format mt:onnx:1 is not among",
    ),
    "format not auto-selected": (
        "selection",
        lambda o: o["ServingRuntime"]["spec"]["supportedModelFormats"][0].update(
            autoSelect=False),
        "model format mt:hydra-onnx:1 is not among the runtime's []",
    ),
    "protocol the runtime does not list": (
        "selection",
        lambda o: o["InferenceService"]["spec"]["predictor"]["model"].update(
            protocolVersion="grpc-v1"),
        "protocol grpc-v1 is not among",
    ),
    "variable that is no setting": (
        "env",
        lambda o: _container(o["ServingRuntime"])["env"].append(
            {"name": "HYDRA_MAX_BATCH", "value": "8"}),
        "HYDRA_MAX_BATCH is not a service setting",
    ),
    "variable with a value the settings refuse": (
        "env",
        lambda o: _env(o, "HYDRA_WORKERS", "0"),
        "workers\n  Input should be greater than or equal to 1",
    ),
    "container port that is not the service's": (
        "env",
        lambda o: _container(o["ServingRuntime"])["ports"][0].update(containerPort=8080),
        "HTTP container ports [8080], the service listens on 8000",
    ),
    "repository outside KServe's mount": (
        "env", lambda o: _env(o, "HYDRA_REPOSITORY", "/models"),
        "the repository is /models, KServe mounts /mnt/models",
    ),
    "model name fixed instead of the InferenceService's": (
        "env", lambda o: _env(o, "HYDRA_MODEL_NAME", "mnist"),
        "the service's model name is 'mnist'",
    ),
    "readiness on a path the service does not serve": (
        "routes",
        lambda o: _container(o["ServingRuntime"])["readinessProbe"]["httpGet"].update(
            path="/healthz"),
        "readinessProbe: /healthz answers 404",
    ),
    "probe on an undeclared port name": (
        "routes",
        lambda o: _container(o["ServingRuntime"])["livenessProbe"]["httpGet"].update(port="http"),
        "livenessProbe: port 'http' is not a container port",
    ),
    "scrape path the service does not serve": (
        "routes", lambda o: o["ServiceMonitor"]["spec"]["endpoints"][0].update(path="/metric"),
        "/metric answers 404",
    ),
    "selector label KServe does not set": (
        "monitor",
        lambda o: o["ServiceMonitor"]["spec"]["selector"]["matchLabels"].update(
            component="server"),
        "digits-predictor has no label component=server",
    ),
    "selector for another InferenceService": (
        "monitor",
        lambda o: o["ServiceMonitor"]["spec"]["selector"]["matchLabels"].update(
            {ISVC_LABEL: "iris"}),
        "the selector does not name the InferenceService",
    ),
    "relabelling from a pod label KServe does not set": (
        "monitor",
        lambda o: o["InferenceService"]["metadata"]["labels"].pop(
            "hydra.example.com/gpu-expected"),
        "__meta_kubernetes_pod_label_hydra_example_com_gpu_expected: the predictor's pods",
    ),
    "scrape on a port name the Service lacks": (
        "monitor", lambda o: o["ServiceMonitor"]["spec"]["endpoints"][0].update(port="http"),
        "port 'http' is not a port of digits-predictor",
    ),
}


def _env(objects: dict[str, Any], name: str, value: str) -> None:
    for entry in _container(objects["ServingRuntime"])["env"]:
        if entry["name"] == name:
            entry["value"] = value
            return
    raise AssertionError(f"no {name} in the runtime")


@pytest.mark.parametrize("name", sorted(WIRING_MUTANTS))
def test_wiring_checks_catch_a_planted_mistake(
    repo: Path, objects: dict[str, Any], status_of: Callable[[str], int], name: str
) -> None:
    check, mutate, expected = WIRING_MUTANTS[name]
    mutated = copy.deepcopy(objects)
    mutate(mutated)
    runtime, isvc, monitor = (mutated[k] for k in MANIFESTS)
    problems = {
        "selection": lambda: selection_problems(runtime, isvc),
        "env": lambda: env_problems(runtime, isvc),
        "routes": lambda: route_problems(runtime, monitor, status_of),
        "monitor": lambda: monitor_problems(runtime, isvc, monitor, alert_job(repo)),
    }[check]()
    assert any(expected in p for p in problems), problems
