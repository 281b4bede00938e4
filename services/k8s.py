"""The kustomize base in k8s/base, generated from the stage registry so a new stage gets its Deployment, its
KEDA ScaledObject (one `nats-jetstream` trigger per priority consumer) and its egress NetworkPolicy without
hand-written YAML."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from services.k8s_network import network_policies
from shared.bus import NOTIFIER_CONSUMER, consumer_name, events_stream
from shared.contracts import PRIORITIES
from shared.settings import Settings

IMAGE = "ghcr.io/clipjet/clipjet:latest"  # overridden per install with kustomize `images:`
CONFIG_MAP = "clipjet-config"  # non-secret settings, one env var each
SECRET = "clipjet-secrets"  # DATABASE_URL, S3_ACCESS_KEY, S3_SECRET_KEY (see k8s/README.md)
NATS_MONITORING_ENDPOINT = "nats.nats.svc.cluster.local:8222"  # KEDA reads consumer lag here; patch per install
LAG_THRESHOLD = 4  # messages waiting per replica before KEDA adds one
MAX_REPLICAS = 20  # per worker stage
GRACE_MARGIN_SEC = 10  # termination grace beyond SHUTDOWN_GRACE_SEC: hand back what did not finish
SCRATCH_MOUNT = "/scratch"  # SCRATCH_DIR inside the pods (an emptyDir a little over NVME_SCRATCH_GB GiB)
SCRATCH_HEADROOM_PCT = 10  # the emptyDir's sizeLimit is the quota plus this much, % (the kubelet evicts past it)
MIB_PER_GIB = 1024
GATEWAY_REPLICAS = 2
REAPER_REPLICAS = 1  # safe with more: every step runs under an advisory lock
NOTIFIER_MAX_REPLICAS = 5  # webhook deliveries wait on receivers, not CPU: few replicas go a long way
LABEL = "app.kubernetes.io/name"

# What a stage's pod asks for (requests) and may use (limits); encode and transcribe are the heavy ones.
WORKER_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "encode": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    "transcribe": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
}
DEFAULT_WORKER_RESOURCES = {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


class _Dumper(yaml.SafeDumper):
    """Plain YAML: every mapping written out in full, no `&id001` anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _config(settings: Settings) -> dict[str, Any]:
    data = {
        "NATS_URL": "nats://nats.nats.svc.cluster.local:4222",
        "NATS_STREAM": settings.nats_stream,
        "SUBJECT_PREFIX": settings.subject_prefix,
        "DB_SCHEMA": settings.db_schema,
        "S3_ENDPOINT_URL": "http://s3.storage.svc.cluster.local:8333",
        "S3_BUCKET": settings.s3_bucket,
        "SCRATCH_DIR": SCRATCH_MOUNT,
        "NVME_SCRATCH_GB": f"{settings.nvme_scratch_gb:g}",
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": str(settings.gateway_port),
        "LOG_LEVEL": settings.log_level,
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP}, "data": data}


def _container(name: str, args: list[str], resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "image": IMAGE, "args": args,
        "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}, {"secretRef": {"name": SECRET}}],
        "resources": resources,
    }


def _deployment(name: str, replicas: int, pod: dict[str, Any]) -> dict[str, Any]:
    labels = {LABEL: name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def _gateway(settings: Settings) -> list[dict[str, Any]]:
    container = _container("gateway", ["gateway"], DEFAULT_WORKER_RESOURCES)
    container["ports"] = [{"name": "http", "containerPort": settings.gateway_port}]
    container["readinessProbe"] = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "clipjet-gateway"},
        "spec": {"selector": {LABEL: "clipjet-gateway"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [_deployment("clipjet-gateway", GATEWAY_REPLICAS, {"containers": [container]}), service]


def scratch_size_limit(settings: Settings) -> str:
    """The scratch emptyDir's sizeLimit: the quota (NVME_SCRATCH_GB, GiB) plus SCRATCH_HEADROOM_PCT, in Mi/Gi, so
    the quota refuses work before the kubelet would evict the pod."""
    quota_mib = math.ceil(settings.nvme_scratch_gb * MIB_PER_GIB)
    mib = max(quota_mib + 1, quota_mib * (100 + SCRATCH_HEADROOM_PCT) // 100)
    return f"{mib // MIB_PER_GIB}Gi" if mib % MIB_PER_GIB == 0 else f"{mib}Mi"


def _jetstream_trigger(stream: str, consumer: str) -> dict[str, Any]:
    """A KEDA trigger on one durable consumer's lag."""
    return {"type": "nats-jetstream", "metadata": {
        "natsServerMonitoringEndpoint": NATS_MONITORING_ENDPOINT, "account": "$G",
        "stream": stream, "consumer": consumer,
        "lagThreshold": str(LAG_THRESHOLD), "activationLagThreshold": "0",
    }}


def _scaled_object(name: str, max_replicas: int, triggers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name},
        "spec": {"scaleTargetRef": {"name": name}, "minReplicaCount": 1, "maxReplicaCount": max_replicas,
                 "triggers": triggers},
    }


def _worker(stage: str, settings: Settings) -> list[dict[str, Any]]:
    name = f"clipjet-{stage}"
    container = _container(stage, ["worker", stage], WORKER_RESOURCES.get(stage, DEFAULT_WORKER_RESOURCES))
    container["volumeMounts"] = [{"name": "scratch", "mountPath": SCRATCH_MOUNT}]
    pod = {
        "terminationGracePeriodSeconds": int(settings.shutdown_grace_sec) + GRACE_MARGIN_SEC,
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": scratch_size_limit(settings)}}],
    }
    triggers = [_jetstream_trigger(settings.nats_stream, consumer_name(stage, priority)) for priority in PRIORITIES]
    return [_deployment(name, 1, pod), _scaled_object(name, MAX_REPLICAS, triggers)]


def _notifier(settings: Settings) -> list[dict[str, Any]]:
    """The webhook notifier: scaled on its consumer of the end events' stream (services/notifier)."""
    name = "clipjet-notifier"
    pod = {"terminationGracePeriodSeconds": int(settings.shutdown_grace_sec) + GRACE_MARGIN_SEC,
           "containers": [_container("notifier", ["notifier"], DEFAULT_WORKER_RESOURCES)]}
    trigger = _jetstream_trigger(events_stream(settings), NOTIFIER_CONSUMER)
    return [_deployment(name, 1, pod), _scaled_object(name, NOTIFIER_MAX_REPLICAS, [trigger])]


def _reaper() -> list[dict[str, Any]]:
    pod = {"containers": [_container("reaper", ["reaper"], DEFAULT_WORKER_RESOURCES)]}
    return [_deployment("clipjet-reaper", REAPER_REPLICAS, pod)]


def render_manifests(stages: list[str], settings: Settings | None = None) -> dict[str, str]:
    """File name → YAML text of the base: config, gateway, reaper, notifier, one file per worker stage."""
    settings = settings or Settings()
    documents: dict[str, list[dict[str, Any]]] = {
        "config.yaml": [_config(settings)], "gateway.yaml": _gateway(settings), "reaper.yaml": _reaper(),
        "notifier.yaml": _notifier(settings),
        "network-policies.yaml": network_policies(stages),
    }
    for stage in stages:
        documents[f"worker-{stage}.yaml"] = _worker(stage, settings)
    files = {name: yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False) for name, docs in documents.items()}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "labels": [{"pairs": {"app.kubernetes.io/part-of": "clipjet"}}], "resources": sorted(files)}
    files["kustomization.yaml"] = yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False)
    return files


def write_manifests(folder: Path, stages: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.yaml"):
        stale.unlink()
    written = []
    for name, text in render_manifests(stages).items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written
