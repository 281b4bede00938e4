"""The rendered manifests (base and GPU overlay) are valid Kubernetes objects (kubernetes-validate, strict), the
ScaledObjects validate against KEDA's CRD schema kept in k8s/schemas/keda, and what issue 16 asks of them holds:
hardened pods, probes on the ops port, PDBs, ephemeral storage over the scratch quota, KEDA owning the replica
count through one composite metric, the init Job, and a bounded number of PostgreSQL connections."""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.k8s import (
    CONFIG_MAP,
    GATEWAY,
    INIT_JOB,
    INIT_SECRET,
    SECRET,
    db_connections,
    render_manifests,
)
from services.k8s_keda import LAG_THRESHOLD, PAUSED_REPLICAS_ANNOTATION
from services.k8s_overlay import apply_json_patch, render
from services.k8s_pod import METRICS_PORT, RUN_AS_USER
from services.registry import STAGES
from shared.jobs.contracts import PRIORITIES
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "k8s" / "base"
GPU_OVERLAY = ROOT / "k8s" / "overlays" / "gpu"
KEDA_CRD = ROOT / "k8s" / "schemas" / "keda" / "keda.sh_scaledobjects.yaml"
K8S_VERSION = "1.32.0"  # a release kubernetes-validate ships schemas for (and kubectl on the dev machines)
CORE_KINDS = {"ConfigMap", "Deployment", "Service", "Job", "PodDisruptionBudget", "NetworkPolicy"}
GPU_STAGES = {"clipjet-transcribe", "clipjet-encode"}


def _by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def gpu() -> list[dict[str, Any]]:
    return render(GPU_OVERLAY)


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists its properties (the API server's strict field
    validation; `x-kubernetes-preserve-unknown-fields` and free-form maps stay open)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def keda_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("folder", [BASE, GPU_OVERLAY], ids=["base", "gpu"])
def test_core_objects_pass_strict_validation(folder: Path) -> None:
    docs = render(folder)
    assert {doc["kind"] for doc in docs} >= CORE_KINDS
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_refuses_an_unknown_field(base: list[dict[str, Any]]) -> None:
    """The validator really is strict: a misspelt field fails (so the test above can fail)."""
    deployment = copy.deepcopy(_by_key(base)[("Deployment", GATEWAY)])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("folder", [BASE, GPU_OVERLAY], ids=["base", "gpu"])
def test_scaled_objects_match_kedas_crd(folder: Path, keda_validator: jsonschema.Draft7Validator) -> None:
    scaled = [doc for doc in render(folder) if doc["kind"] == "ScaledObject"]
    assert len(scaled) == len(STAGES) + 1  # every stage and the notifier
    for doc in scaled:
        errors = [error.message for error in keda_validator.iter_errors(doc)]
        assert not errors, (doc["metadata"]["name"], errors)
    wrong = copy.deepcopy(scaled[0])
    wrong["spec"]["advanced"]["scalingModifier"] = wrong["spec"]["advanced"].pop("scalingModifiers")
    assert list(keda_validator.iter_errors(wrong)), "the CRD check must refuse a misspelt field"


def _evaluate_sum(formula: str, lags: dict[str, int]) -> int:
    """KEDA's formula as clipjet writes it: trigger names joined by ` + `."""
    names = formula.split(" + ")
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in names), formula
    return sum(lags[name] for name in names)


def test_one_composite_metric_per_stage_sums_the_priorities(base: list[dict[str, Any]]) -> None:
    """A backlog of 4/4/4 over fast/normal/bulk asks for 3 replicas (the sum), not 1 (the max of three metrics)."""
    scaled = {doc["metadata"]["name"]: doc for doc in base if doc["kind"] == "ScaledObject"}
    for stage in STAGES:
        spec = scaled[f"clipjet-{stage}"]["spec"]
        names = [trigger["name"] for trigger in spec["triggers"]]
        assert names == list(PRIORITIES)
        assert [t["metadata"]["consumer"] for t in spec["triggers"]] == [f"{stage}-{p}" for p in PRIORITIES]
        modifiers = spec["advanced"]["scalingModifiers"]
        assert modifiers["metricType"] == "AverageValue" and int(modifiers["target"]) == LAG_THRESHOLD
        composite = _evaluate_sum(modifiers["formula"], dict.fromkeys(names, LAG_THRESHOLD))
        assert math.ceil(composite / int(modifiers["target"])) == len(PRIORITIES)
        assert spec["fallback"]["replicas"] >= spec["minReplicaCount"] and spec["fallback"]["failureThreshold"] > 0
        assert "headless" in spec["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]  # clustered NATS


def test_keda_owns_the_replica_count(base: list[dict[str, Any]]) -> None:
    """No spec.replicas on a KEDA-managed Deployment (each `kubectl apply -k` would reset it), and no annotations
    on the ScaledObjects, so the supported manual override, `kubectl annotate scaledobject ...
    autoscaling.keda.sh/paused-replicas=N`, is not undone by the next apply."""
    docs = _by_key(base)
    scaled = [doc for doc in base if doc["kind"] == "ScaledObject"]
    for doc in scaled:
        target = docs[("Deployment", doc["spec"]["scaleTargetRef"]["name"])]
        assert "replicas" not in target["spec"], target["metadata"]["name"]
        assert "annotations" not in doc["metadata"]
    unmanaged = {name for kind, name in docs if kind == "Deployment"} - {
        doc["spec"]["scaleTargetRef"]["name"] for doc in scaled}
    assert unmanaged == {GATEWAY, "clipjet-reaper"}
    assert all(docs[("Deployment", name)]["spec"]["replicas"] >= 1 for name in unmanaged)


def test_rollouts_open_no_connection_beyond_the_table(base: list[dict[str, Any]]) -> None:
    """A KEDA-managed Deployment at maxReplicaCount rolls without a surge pod (Kubernetes' default 25% would add
    5 per worker Deployment, uncounted); a fixed one surges by a count that db_connections() adds."""
    docs = _by_key(base)
    scaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in base if doc["kind"] == "ScaledObject"}
    connections = db_connections(list(STAGES))
    for (kind, name), doc in docs.items():
        if kind != "Deployment":
            continue
        strategy = doc["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        rolling = strategy["rollingUpdate"]
        if name in scaled:
            assert rolling == {"maxSurge": 0, "maxUnavailable": 1}, name
        else:
            assert isinstance(rolling["maxSurge"], int) and rolling["maxUnavailable"] == 0, name
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            pool = int(next(e["value"] for e in container["env"] if e["name"] == "DB_POOL_MAX"))
            processes = int(container["resources"]["limits"]["cpu"]) if name == GATEWAY else 1
            assert connections[name] == (doc["spec"]["replicas"] + rolling["maxSurge"]) * processes * pool, name


def test_paused_replicas_override_is_a_valid_scaled_object(base: list[dict[str, Any]],
                                                          keda_validator: jsonschema.Draft7Validator) -> None:
    """The override as an overlay patch (k8s/README.md shows it and the kubectl command) keeps the object valid."""
    doc = copy.deepcopy(next(d for d in base if d["kind"] == "ScaledObject"))
    apply_json_patch(doc, [{"op": "add", "path": "/metadata/annotations",
                            "value": {PAUSED_REPLICAS_ANNOTATION: "5"}}])
    assert not list(keda_validator.iter_errors(doc))
    assert doc["metadata"]["annotations"] == {"autoscaling.keda.sh/paused-replicas": "5"}
    assert PAUSED_REPLICAS_ANNOTATION in (ROOT / "k8s" / "README.md").read_text()


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc["spec"]["template"] for doc in docs if doc["kind"] in ("Deployment", "Job")}


def test_every_pod_is_hardened(base: list[dict[str, Any]]) -> None:
    pods = _pods(base)
    assert set(pods) == {GATEWAY, "clipjet-reaper", "clipjet-notifier", INIT_JOB, *(f"clipjet-{s}" for s in STAGES)}
    for name, template in pods.items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == RUN_AS_USER, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in empty_dirs, name  # the only writable places are emptyDirs
            assert set(mounts.values()) <= empty_dirs, name
            cpu_limit = container["resources"]["limits"]["cpu"]
            assert cpu_limit.isdigit() and int(cpu_limit) >= 1, name  # whole CPUs: thread counts follow them


def test_probes_and_metrics_on_the_ops_port(base: list[dict[str, Any]]) -> None:
    for name, template in _pods(base).items():
        if name == INIT_JOB:
            continue
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == METRICS_PORT, name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
        probe_port = "http" if name == GATEWAY else "metrics"
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": probe_port}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": probe_port}, name
        assert container["startupProbe"]["httpGet"]["path"] == "/livez", name
    config = _by_key(base)[("ConfigMap", CONFIG_MAP)]
    assert config["data"]["METRICS_PORT"] == str(METRICS_PORT)


def test_every_deployment_has_a_disruption_budget(base: list[dict[str, Any]]) -> None:
    budgets = {doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: doc
               for doc in base if doc["kind"] == "PodDisruptionBudget"}
    deployments = {doc["metadata"]["name"]: doc for doc in base if doc["kind"] == "Deployment"}
    assert set(budgets) == set(deployments)
    for name, budget in budgets.items():
        assert budget["spec"]["maxUnavailable"] == 1
        assert deployments[name]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == name


K8S_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _bytes(quantity: str) -> int:
    for suffix, factor in K8S_UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


@pytest.mark.parametrize("quota_gib", [20.0, 1.5])
def test_ephemeral_storage_covers_the_scratch_quota(quota_gib: float) -> None:
    settings = Settings(nvme_scratch_gb=quota_gib)
    docs = [d for text in render_manifests(list(STAGES), settings).values() for d in yaml.safe_load_all(text) if d]
    for name, template in _pods(docs).items():
        pod = template["spec"]
        (container,) = pod["containers"]
        storage = {k: _bytes(v["ephemeral-storage"]) for k, v in container["resources"].items()}
        size_limits = sum(_bytes(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"])
        assert storage["limits"] > size_limits, name  # the emptyDirs' own limits evict first
        if any(v["name"] == "scratch" for v in pod["volumes"]):
            assert storage["requests"] >= settings.scratch_bytes, name  # scheduled where the quota fits


def test_init_job_runs_clipjet_init_with_its_optional_secret(base: list[dict[str, Any]]) -> None:
    job = _by_key(base)[("Job", INIT_JOB)]
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # gone after a while: the next `apply -k` runs it again
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (container,) = pod["containers"]
    assert container["args"] == ["init"]
    assert container["envFrom"] == [{"configMapRef": {"name": CONFIG_MAP}}, {"secretRef": {"name": SECRET}},
                                    {"secretRef": {"name": INIT_SECRET, "optional": True}}]
    services = [t["spec"]["containers"][0] for n, t in _pods(base).items() if n != INIT_JOB]
    assert all(INIT_SECRET not in str(c["envFrom"]) for c in services)  # only init holds the DDL credentials


def test_database_connections_are_bounded_and_documented() -> None:
    """Max replicas x processes x DB_POOL_MAX, summed: the figure k8s/README.md gives operators."""
    connections = db_connections(list(STAGES))
    total = sum(connections.values())
    readme = (ROOT / "k8s" / "README.md").read_text()
    assert f"**{total}** connections" in readme, f"k8s/README.md must say {total} (got {connections})"
    for name, count in connections.items():
        assert f"| {name} | " in readme and f"| {count} |" in readme, name


def test_gpu_overlay_puts_transcriber_and_encoder_on_gpu_nodes(base: list[dict[str, Any]],
                                                              gpu: list[dict[str, Any]]) -> None:
    base_docs, gpu_docs = _by_key(base), _by_key(gpu)
    assert set(base_docs) == set(gpu_docs)
    for (kind, name), doc in gpu_docs.items():
        if kind != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        if name in GPU_STAGES:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert container["image"].startswith("ghcr.io/clipjet/clipjet-gpu:")
        else:
            assert doc == base_docs[(kind, name)]  # nothing else changes
    transcriber = gpu_docs[("Deployment", "clipjet-transcribe")]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "ASR_DEVICE", "value": "cuda"} in transcriber["env"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("folder", [BASE, GPU_OVERLAY], ids=["base", "gpu"])
def test_renderer_agrees_with_kubectl_kustomize(folder: Path) -> None:
    """services/k8s_overlay.py renders what `kubectl kustomize` renders (so validating its output counts)."""
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert _by_key([d for d in yaml.safe_load_all(out) if d]) == _by_key(render(folder))


def test_readme_asr_egress_patch_opens_the_transcriber_to_the_asr_server(base: list[dict[str, Any]]) -> None:
    """The overlay snippet k8s/README.md gives for a hosted ASR server applies to the base and adds that rule."""
    readme = (ROOT / "k8s" / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
                  if "clipjet-transcribe-egress" in block]
    (patch,) = yaml.safe_load(snippet)["patches"]
    docs = _by_key(copy.deepcopy(base))
    policy = docs[("NetworkPolicy", patch["target"]["name"])]
    before = len(policy["spec"]["egress"])
    apply_json_patch(policy, yaml.safe_load(patch["patch"]))
    added = policy["spec"]["egress"][before:]
    assert [rule["ports"] for rule in added] == [[{"protocol": "TCP", "port": 8000}]]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "clipjet-transcribe"
