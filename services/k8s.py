"""The kustomize base in k8s/base, generated from the stage registry so a new stage gets its Deployment, its
KEDA ScaledObject (one composite metric over its priority consumers), its PodDisruptionBudget and its egress
NetworkPolicy without hand-written YAML. Every pod runs hardened (services/k8s_pod.py); `clipjet init` runs as a Job
before the services find what they wait for (streams, consumers, schema, bucket)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from services.k8s_keda import jetstream_trigger, scaled_object
from services.k8s_network import network_policies
from services.k8s_pod import (
    LABEL,
    LOG_HEADROOM_MIB,
    METRICS_PORT,
    SCRAPE_ANNOTATIONS,
    TMP_SIZE_MIB,
    app_name,
    disruption_budget,
    harden,
    metrics_port,
    probes,
)
from shared.jobs.contracts import PRIORITIES
from shared.runtime.bus import NOTIFIER_CONSUMER, consumer_name, events_stream
from shared.settings import Settings

IMAGE = "ghcr.io/clipjet/clipjet:latest"  # overridden per install with kustomize `images:`
CONFIG_MAP = "clipjet-config"  # non-secret settings, one env var each
SECRET = "clipjet-secrets"  # DATABASE_URL, S3_ACCESS_KEY, S3_SECRET_KEY (see k8s/README.md)
INIT_SECRET = "clipjet-init-secrets"  # optional: INIT_DATABASE_URL (a role with DDL rights) for the init Job only
INIT_JOB = "clipjet-init"
INIT_JOB_TTL_SEC = 600  # a finished init Job is deleted after this, so the next `kubectl apply -k` runs it again
INIT_JOB_BACKOFF = 6  # retries (pod restarts) before the Job fails, e.g. while PostgreSQL or NATS still start
INIT_JOB_DEADLINE_SEC = 900
MAX_REPLICAS = 20  # per worker stage
MIN_REPLICAS = 1
FALLBACK_REPLICAS = 2  # replicas of a stage while KEDA cannot read its lag (fallback)
GRACE_MARGIN_SEC = 10  # termination grace beyond SHUTDOWN_GRACE_SEC: hand back what did not finish
SCRATCH_MOUNT = "/scratch"  # SCRATCH_DIR inside the pods (an emptyDir a little over NVME_SCRATCH_GB GiB)
SCRATCH_HEADROOM_PCT = 10  # the emptyDir's sizeLimit is the quota plus this much, % (the kubelet evicts past it)
MIB_PER_GIB = 1024
GATEWAY = app_name("gateway")
NATS_CLUSTER_NODES = 3  # the NATS Helm chart's cluster (k8s/README.md): every stream replicated on each node
GATEWAY_REPLICAS = 2  # fixed (not KEDA-managed): the gateway's work is requests, not a queue
REAPER_REPLICAS = 1  # safe with more: every step runs under an advisory lock
NOTIFIER_MAX_REPLICAS = 5  # webhook deliveries wait on receivers, not CPU: few replicas go a long way
# Rollouts. A KEDA-managed Deployment (up to MAX_REPLICAS) replaces pods one at a time without a surge pod, so a
# rollout at full scale opens no connection beyond the table's; a fixed one (gateway, reaper) surges by one pod, to
# keep its capacity, and db_connections() counts that pod.
SCALED_ROLLOUT = {"maxSurge": 0, "maxUnavailable": 1}
FIXED_ROLLOUT = {"maxSurge": 1, "maxUnavailable": 0}
HOME_DIR = "/tmp"  # HOME of the non-root user on a read-only root file system (caches of yt-dlp, Python)

# What a pod asks for (requests) and may use (limits). CPU limits are whole CPUs: thread counts follow the limit
# (shared/runtime/cpus.py), so a transcriber limited to 2 CPUs runs 2 CTranslate2 threads whatever the node has.
WORKER_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "encode": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
    "transcribe": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
}
DEFAULT_WORKER_RESOURCES = {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
GATEWAY_RESOURCES = {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}

# PostgreSQL connections per process (DB_POOL_MAX of each Deployment): a worker holds one per message in flight
# plus one for the fetcher's batch lock; the gateway keeps the settings' default per process. See db_connections().
GATEWAY_DB_POOL_MAX = 8
NOTIFIER_DB_POOL_MAX = 4
REAPER_DB_POOL_MAX = 4
INIT_DB_POOL_MAX = 2


class _Dumper(yaml.SafeDumper):
    """Plain YAML: every mapping written out in full, no `&id001` anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def worker_db_pool_max(settings: Settings) -> int:
    return settings.worker_concurrency + 1


def _config(settings: Settings) -> dict[str, Any]:
    data = {
        "NATS_URL": "nats://nats.nats.svc.cluster.local:4222",
        "NATS_STREAM": settings.nats_stream,
        "NATS_STREAM_REPLICAS": str(NATS_CLUSTER_NODES),  # what `clipjet init` gives a stream it creates
        "SUBJECT_PREFIX": settings.subject_prefix,
        "DB_SCHEMA": settings.db_schema,
        "S3_ENDPOINT_URL": "http://s3.storage.svc.cluster.local:8333",
        "S3_BUCKET": settings.s3_bucket,
        "SCRATCH_DIR": SCRATCH_MOUNT,
        "NVME_SCRATCH_GB": f"{settings.nvme_scratch_gb:g}",
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": str(settings.gateway_port),
        "METRICS_PORT": str(METRICS_PORT),
        "HOME": HOME_DIR,
        "LOG_LEVEL": settings.log_level,
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP}, "data": data}


def _env_from(*, init: bool = False) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = [{"configMapRef": {"name": CONFIG_MAP}}, {"secretRef": {"name": SECRET}}]
    if init:
        sources.append({"secretRef": {"name": INIT_SECRET, "optional": True}})
    return sources


def _container(name: str, args: list[str], resources: dict[str, Any], db_pool_max: int) -> dict[str, Any]:
    return {
        "name": name, "image": IMAGE, "args": args,
        "envFrom": _env_from(),
        "env": [{"name": "DB_POOL_MAX", "value": str(db_pool_max)}],
        "ports": [metrics_port()],
        "resources": resources,
    }


def _ops_container(name: str, args: list[str], resources: dict[str, Any], db_pool_max: int) -> dict[str, Any]:
    """A worker, reaper or notifier container: probes on its ops port."""
    return {**_container(name, args, resources, db_pool_max), **probes("metrics")}


def _deployment(name: str, replicas: int | None, pod: dict[str, Any]) -> dict[str, Any]:
    """A Deployment of the hardened pod; `replicas` None leaves the count to KEDA (no spec.replicas)."""
    labels = {LABEL: name}
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    rollout = SCALED_ROLLOUT if replicas is None else FIXED_ROLLOUT
    spec |= {"strategy": {"type": "RollingUpdate", "rollingUpdate": dict(rollout)},
             "selector": {"matchLabels": labels},
             "template": {"metadata": {"labels": labels, "annotations": dict(SCRAPE_ANNOTATIONS)},
                          "spec": harden(pod)}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels}, "spec": spec}


def _gateway(settings: Settings) -> list[dict[str, Any]]:
    resources = _with_storage(GATEWAY_RESOURCES, settings, scratch=False)
    container = _container("gateway", ["gateway"], resources, GATEWAY_DB_POOL_MAX)
    container["ports"] = [{"name": "http", "containerPort": settings.gateway_port, "protocol": "TCP"},
                          *container["ports"]]
    container |= probes("http")  # /livez and /readyz on the API port; readiness outlasts a database blip
    pod = {"terminationGracePeriodSeconds": _grace(settings), "containers": [container]}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": GATEWAY},
        "spec": {"selector": {LABEL: GATEWAY}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [_deployment(GATEWAY, GATEWAY_REPLICAS, pod), service, disruption_budget(GATEWAY, LABEL)]


def scratch_size_limit(settings: Settings) -> str:
    """The scratch emptyDir's sizeLimit: the quota (NVME_SCRATCH_GB, GiB) plus SCRATCH_HEADROOM_PCT, in Mi/Gi, so
    the quota refuses work before the kubelet would evict the pod."""
    return _mib(scratch_mib(settings))


def scratch_mib(settings: Settings) -> int:
    """The scratch emptyDir's sizeLimit in MiB: the quota plus SCRATCH_HEADROOM_PCT (at least 1 MiB more)."""
    quota_mib = math.ceil(settings.nvme_scratch_gb * MIB_PER_GIB)
    return max(quota_mib + 1, quota_mib * (100 + SCRATCH_HEADROOM_PCT) // 100)


def _mib(mib: int) -> str:
    return f"{mib // MIB_PER_GIB}Gi" if mib % MIB_PER_GIB == 0 else f"{mib}Mi"


def _ephemeral_storage(settings: Settings, scratch: bool) -> tuple[str, str]:
    """(request, limit) of a pod's ephemeral storage: the scratch quota it will fill (plus /tmp), and every
    emptyDir's sizeLimit plus room for logs, so the kubelet evicts on the emptyDir limits, not on this one."""
    scratch_request = math.ceil(settings.nvme_scratch_gb * MIB_PER_GIB) if scratch else 0
    scratch_limit = scratch_mib(settings) if scratch else 0
    return _mib(scratch_request + TMP_SIZE_MIB), _mib(scratch_limit + TMP_SIZE_MIB + LOG_HEADROOM_MIB)


def _with_storage(resources: dict[str, dict[str, str]], settings: Settings, scratch: bool) -> dict[str, Any]:
    request, limit = _ephemeral_storage(settings, scratch)
    return {"requests": {**resources["requests"], "ephemeral-storage": request},
            "limits": {**resources["limits"], "ephemeral-storage": limit}}


def _grace(settings: Settings) -> int:
    return int(settings.shutdown_grace_sec) + GRACE_MARGIN_SEC


def _worker(stage: str, settings: Settings) -> list[dict[str, Any]]:
    name = app_name(stage)
    resources = _with_storage(WORKER_RESOURCES.get(stage, DEFAULT_WORKER_RESOURCES), settings, scratch=True)
    container = _ops_container(stage, ["worker", stage], resources, worker_db_pool_max(settings))
    container["volumeMounts"] = [{"name": "scratch", "mountPath": SCRATCH_MOUNT}]
    pod = {
        "terminationGracePeriodSeconds": _grace(settings),
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": scratch_size_limit(settings)}}],
    }
    triggers = [jetstream_trigger(priority, settings.nats_stream, consumer_name(stage, priority))
                for priority in PRIORITIES]
    return [_deployment(name, None, pod),
            scaled_object(name, MIN_REPLICAS, MAX_REPLICAS, FALLBACK_REPLICAS, triggers),
            disruption_budget(name, LABEL)]


def _small_pod(settings: Settings, role: str, db_pool_max: int) -> dict[str, Any]:
    """The pod of the reaper or the notifier: one container running `clipjet ROLE` with the default worker
    resources and no scratch, probed on its ops port."""
    resources = _with_storage(DEFAULT_WORKER_RESOURCES, settings, scratch=False)
    return {"terminationGracePeriodSeconds": _grace(settings),
            "containers": [_ops_container(role, [role], resources, db_pool_max)]}


def _notifier(settings: Settings) -> list[dict[str, Any]]:
    """The webhook notifier: scaled on its consumer of the end events' stream (services/notifier)."""
    name = app_name("notifier")
    trigger = jetstream_trigger("notifier", events_stream(settings), NOTIFIER_CONSUMER)
    return [_deployment(name, None, _small_pod(settings, "notifier", NOTIFIER_DB_POOL_MAX)),
            scaled_object(name, MIN_REPLICAS, NOTIFIER_MAX_REPLICAS, MIN_REPLICAS, [trigger]),
            disruption_budget(name, LABEL)]


def _reaper(settings: Settings) -> list[dict[str, Any]]:
    name = app_name("reaper")
    return [_deployment(name, REAPER_REPLICAS, _small_pod(settings, "reaper", REAPER_DB_POOL_MAX)),
            disruption_budget(name, LABEL)]


def _init_job(settings: Settings) -> list[dict[str, Any]]:
    """`clipjet init` as a Job: migrations, streams and consumers, bucket. A fixed name plus
    ttlSecondsAfterFinished: once the finished Job is gone, the next `kubectl apply -k` (an upgrade) creates and
    runs it again; k8s/README.md says how to re-run it sooner."""
    container = _container("init", ["init"], _with_storage(DEFAULT_WORKER_RESOURCES, settings, scratch=False),
                           INIT_DB_POOL_MAX)
    container["envFrom"] = _env_from(init=True)
    del container["ports"]
    labels = {LABEL: INIT_JOB}
    pod = harden({"restartPolicy": "OnFailure", "containers": [container]})
    return [{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": INIT_JOB, "labels": labels},
             "spec": {"ttlSecondsAfterFinished": INIT_JOB_TTL_SEC, "backoffLimit": INIT_JOB_BACKOFF,
                      "activeDeadlineSeconds": INIT_JOB_DEADLINE_SEC,
                      "template": {"metadata": {"labels": labels}, "spec": pod}}}]


def render_documents(stages: list[str], settings: Settings | None = None) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects of the base: config, init Job, gateway, reaper, notifier, one file per stage."""
    settings = settings or Settings()
    documents: dict[str, list[dict[str, Any]]] = {
        "config.yaml": [_config(settings)], "init-job.yaml": _init_job(settings), "gateway.yaml": _gateway(settings),
        "reaper.yaml": _reaper(settings), "notifier.yaml": _notifier(settings),
        "network-policies.yaml": network_policies(stages, jobs=(INIT_JOB,), gateway_port=settings.gateway_port),
    }
    for stage in stages:
        documents[f"worker-{stage}.yaml"] = _worker(stage, settings)
    return documents


def render_manifests(stages: list[str], settings: Settings | None = None) -> dict[str, str]:
    """File name -> YAML text of the base (and its kustomization.yaml)."""
    documents = render_documents(stages, settings)
    files = {name: yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False) for name, docs in documents.items()}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "labels": [{"pairs": {"app.kubernetes.io/part-of": "clipjet"}}], "resources": sorted(files)}
    files["kustomization.yaml"] = yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False)
    return files


def db_connections(stages: list[str], settings: Settings | None = None) -> dict[str, int]:
    """Deployment or Job -> the most PostgreSQL connections it opens at full scale: max replicas (KEDA's
    maxReplicaCount, else spec.replicas, plus the rollout's surge pods) x processes (the gateway runs one per CPU
    of its limit) x DB_POOL_MAX."""
    documents = [doc for docs in render_documents(stages, settings).values() for doc in docs]
    max_replicas = {doc["spec"]["scaleTargetRef"]["name"]: doc["spec"]["maxReplicaCount"]
                    for doc in documents if doc["kind"] == "ScaledObject"}
    totals = {}
    for doc in documents:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        name = doc["metadata"]["name"]
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        pool = int(next(e["value"] for e in container["env"] if e["name"] == "DB_POOL_MAX"))
        processes = int(container["resources"]["limits"]["cpu"]) if name == GATEWAY else 1
        replicas = max_replicas.get(name, doc["spec"].get("replicas", 1)) + _surge(doc)
        totals[name] = replicas * processes * pool
    return totals


def _surge(doc: dict[str, Any]) -> int:
    """Pods a rollout adds beyond the replica count: maxSurge (a count; Kubernetes' default is 25%, rounded up,
    so the base always sets it). Jobs do not roll."""
    if doc["kind"] != "Deployment":
        return 0
    surge = doc["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    if not isinstance(surge, int):
        raise ValueError(f"{doc['metadata']['name']}: maxSurge {surge!r}: give a count, the table counts pods")
    return surge


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
