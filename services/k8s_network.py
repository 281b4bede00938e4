"""Egress NetworkPolicies of the kustomize base: what each clipjet pod may reach.

Every pod holds the S3 key and the database URL, and the workers parse untrusted media, so none may reach more
than it needs: DNS, NATS, PostgreSQL and S3 (in the namespaces the ConfigMap's service names point at; an
overlay patches them for another layout). The fetcher alone also reaches the internet, because it downloads
user URLs itself (through its in-process guarded proxy, `shared/net/fetchproxy.py`), and so does the notifier, which
POSTs webhooks to user URLs through the same guard: any public address, never a private, link-local (cloud
metadata), CGNAT or loopback one.

Ingress: the ops port (METRICS_PORT: /metrics, and the workers' /livez and /readyz) answers only the monitoring
namespace's Prometheus; the gateway's API port takes client traffic from anywhere (its Service); nothing else
reaches a clipjet pod (the init Job takes no traffic). Kubelet probes come from the node and are not subject to
these policies on the usual CNIs (Calico, Cilium).
"""

from __future__ import annotations

from typing import Any

from services.k8s_pod import LABEL, METRICS_PORT, app_name

NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace
FETCH_STAGE = "fetch"  # the one stage that downloads user URLs
PUBLIC_EGRESS_APPS = (app_name(FETCH_STAGE), app_name("notifier"))  # reach user URLs: sources, webhooks
# (namespace, TCP port) of each cluster service clipjet uses; the ConfigMap names nats.nats.svc and s3.storage.svc
NATS = ("nats", 4222)
S3 = ("storage", 8333)
POSTGRES = ("postgres", 5432)  # DATABASE_URL is in the Secret: patch the namespace to where PostgreSQL runs
MONITORING_NAMESPACE = "monitoring"  # Prometheus's namespace (kube-prometheus-stack's usual one): patch per install
GATEWAY_APP = app_name("gateway")
DNS_NAMESPACE = "kube-system"
DNS_POD = {"k8s-app": "kube-dns"}  # CoreDNS keeps this label
DNS_PORT = 53
# Addresses a user URL may never reach: RFC 1918, CGNAT, loopback, link-local (169.254.169.254 metadata), and IPv6
# unique-local, link-local and loopback.
PRIVATE_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16"]
PRIVATE_V6 = ["fc00::/7", "fe80::/10", "::1/128"]


def _to_namespace(namespace: str, port: int) -> dict[str, Any]:
    return {"to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}}}],
            "ports": [{"protocol": "TCP", "port": port}]}


def cluster_egress() -> list[dict[str, Any]]:
    """DNS, NATS, S3 and PostgreSQL: everything a clipjet pod needs inside the cluster."""
    dns = {"to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: DNS_NAMESPACE}},
                   "podSelector": {"matchLabels": DNS_POD}}],
           "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]}
    return [dns, *(_to_namespace(namespace, port) for namespace, port in (NATS, S3, POSTGRES))]


def internet_egress() -> dict[str, Any]:
    """Any public address (user URLs may name any port), none of the private ranges."""
    return {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_V4}},
                   {"ipBlock": {"cidr": "::/0", "except": PRIVATE_V6}}]}


def _policy(app: str, direction: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The `direction` ("Egress" or "Ingress") policy of `app`'s pods: only `rules` are allowed."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"{app}-{direction.lower()}"},
        "spec": {"podSelector": {"matchLabels": {LABEL: app}}, "policyTypes": [direction],
                 direction.lower(): rules},
    }


def ops_ingress() -> dict[str, Any]:
    """The ops port, from the monitoring namespace only (its scrapes; nobody else reads metrics or probes)."""
    return {"from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: MONITORING_NAMESPACE}}}],
            "ports": [{"protocol": "TCP", "port": METRICS_PORT}]}


def network_policies(stages: list[str], jobs: tuple[str, ...] = (), gateway_port: int = 8080) -> list[dict[str, Any]]:
    """One egress and one ingress policy per Deployment (the gateway, the reaper, the notifier and each stage's
    workers) and per Job named in `jobs` (their pods' app label; a Job takes no traffic)."""
    deployments = [GATEWAY_APP, app_name("reaper"), app_name("notifier"), *(app_name(stage) for stage in stages)]
    egress = [
        _policy(app, "Egress",
                [*cluster_egress(), internet_egress()] if app in PUBLIC_EGRESS_APPS else cluster_egress())
        for app in [*deployments, *jobs]
    ]
    api = {"ports": [{"protocol": "TCP", "port": gateway_port}]}  # clients, from anywhere
    ingress = [_policy(app, "Ingress", [api, ops_ingress()] if app == GATEWAY_APP else [ops_ingress()])
               for app in deployments]
    return [*egress, *ingress, *(_policy(job, "Ingress", []) for job in jobs)]
