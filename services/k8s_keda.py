"""KEDA ScaledObjects of the kustomize base: one composite metric per Deployment.

Each priority consumer of a stage gets a named `nats-jetstream` trigger, and `advanced.scalingModifiers` sums them
(`fast + normal + bulk`), so a backlog of 4/4/4 asks for three replicas, not the one that KEDA's default (the
maximum of the triggers) would give. A `fallback` keeps a fixed replica count while the scaler cannot read NATS.
The Deployments they scale carry no `spec.replicas`: KEDA owns the count, and `kubectl apply -k` must not reset it.
To pin a count by hand, annotate the ScaledObject with `autoscaling.keda.sh/paused-replicas` (k8s/README.md).
"""

from __future__ import annotations

from typing import Any

# The headless Service of the official NATS Helm chart: in a cluster KEDA reads the consumer's lag from the
# consumer leader's own monitoring port, at `<server_name>.<this host>:8222`, which only a headless Service resolves.
NATS_MONITORING_ENDPOINT = "nats-headless.nats.svc.cluster.local:8222"
NATS_ACCOUNT = "$G"  # the global account (no accounts configured); patch per install when NATS has accounts
LAG_THRESHOLD = 4  # messages waiting (pending + ack-pending) per replica, summed over the priorities
FALLBACK_FAILURES = 3  # failed reads of the monitoring endpoint in a row before the fallback count applies
PAUSED_REPLICAS_ANNOTATION = "autoscaling.keda.sh/paused-replicas"  # the supported manual override (README)


def jetstream_trigger(name: str, stream: str, consumer: str) -> dict[str, Any]:
    """A named KEDA trigger on one durable consumer's lag (its name is a variable of the composite formula)."""
    return {"type": "nats-jetstream", "name": name, "metadata": {
        "natsServerMonitoringEndpoint": NATS_MONITORING_ENDPOINT, "account": NATS_ACCOUNT,
        "stream": stream, "consumer": consumer,
        "lagThreshold": str(LAG_THRESHOLD), "activationLagThreshold": "0",
    }}


def scaled_object(name: str, min_replicas: int, max_replicas: int, fallback_replicas: int,
                  triggers: list[dict[str, Any]]) -> dict[str, Any]:
    """A ScaledObject on Deployment `name` whose one metric is the sum of its triggers' lags."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": min_replicas, "maxReplicaCount": max_replicas,
        "fallback": {"failureThreshold": FALLBACK_FAILURES, "replicas": fallback_replicas},
        "advanced": {"scalingModifiers": {
            "formula": " + ".join(trigger["name"] for trigger in triggers),
            "target": str(LAG_THRESHOLD), "activationTarget": "0", "metricType": "AverageValue",
        }},
        "triggers": triggers,
    }
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": name}, "spec": spec}
