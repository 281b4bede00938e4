"""What every clipjet pod of the kustomize base shares: the hardened security context, the probes on the ops port,
the writable emptyDirs a read-only root file system needs, and the Prometheus scrape annotations."""

from __future__ import annotations

from typing import Any

LABEL = "app.kubernetes.io/name"  # every object's app label: app_name(role)
RUN_AS_USER = 10001  # the image's USER; no process needs root, a capability or the service-account token
METRICS_PORT = 9464  # METRICS_PORT of every process: /metrics, and /livez + /readyz of workers, reaper, notifier
METRICS_PORT_NAME = "metrics"
TMP_MOUNT = "/tmp"
TMP_SIZE_LIMIT = "512Mi"  # /tmp (HOME too: yt-dlp's and Python's caches); media never goes there, it uses /scratch
TMP_SIZE_MIB = 512
LOG_HEADROOM_MIB = 256  # container logs also count against the pod's ephemeral-storage limit
LIVENESS_PERIOD_SEC = 10
LIVENESS_FAILURES = 3  # a loop stalled past LIVENESS_STALL_SEC fails /livez; three misses in a row restart the pod
READINESS_PERIOD_SEC = 5
READINESS_FAILURES = 2
STARTUP_PERIOD_SEC = 5
STARTUP_FAILURES = 60  # up to 5 min to start (waiting for `clipjet init`, loading a model) before liveness counts
PROBE_TIMEOUT_SEC = 3

SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics",
}


def app_name(role: str) -> str:
    """The name (and app label) of a role's objects: clipjet-gateway, clipjet-reaper, clipjet-<stage>, ..."""
    return f"clipjet-{role}"


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def tmp_volume() -> dict[str, Any]:
    return {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}


def tmp_mount() -> dict[str, Any]:
    return {"name": "tmp", "mountPath": TMP_MOUNT}


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": PROBE_TIMEOUT_SEC,
            "failureThreshold": failures}


def probes(port_name: str) -> dict[str, dict[str, Any]]:
    """Liveness on /livez (a stuck event loop fails it), readiness on /readyz (bound to NATS, not draining), and a
    startup probe so a slow start (waiting for `clipjet init`, loading a model) is not taken for a stuck loop."""
    return {
        "startupProbe": _http_probe("/livez", port_name, STARTUP_PERIOD_SEC, STARTUP_FAILURES),
        "livenessProbe": _http_probe("/livez", port_name, LIVENESS_PERIOD_SEC, LIVENESS_FAILURES),
        "readinessProbe": _http_probe("/readyz", port_name, READINESS_PERIOD_SEC, READINESS_FAILURES),
    }


def metrics_port() -> dict[str, Any]:
    return {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}


def harden(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod with the hardened security contexts, no service-account token, and /tmp as an emptyDir."""
    pod = {"automountServiceAccountToken": False, "securityContext": pod_security_context(), **pod}
    pod["volumes"] = [tmp_volume(), *pod.get("volumes", [])]
    for container in pod["containers"]:
        container["securityContext"] = container_security_context()
        container["volumeMounts"] = [tmp_mount(), *container.get("volumeMounts", [])]
    return pod


def disruption_budget(name: str, label: str) -> dict[str, Any]:
    """At most one pod of `name` evicted at a time by a node drain (never blocks a drain at one replica)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {label: name}}}}
