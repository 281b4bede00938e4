"""The kustomize base matches the stage registry, every KEDA trigger names a consumer the stack creates, the scratch
volume is larger than its quota, egress is limited to what each pod needs, and ingress to the ops port to the
monitoring namespace."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.k8s import render_manifests
from services.k8s_network import LABEL, MONITORING_NAMESPACE, NAMESPACE_LABEL, NATS, POSTGRES, S3
from services.k8s_pod import METRICS_PORT
from services.registry import STAGES
from shared.runtime import bus
from shared.runtime.resources import Resources
from shared.settings import Settings

K8S_BASE = Path(__file__).resolve().parent.parent / "k8s" / "base"


def test_k8s_base_matches_the_registry() -> None:
    rendered = render_manifests(list(STAGES))
    on_disk = {p.name: p.read_text() for p in K8S_BASE.glob("*.yaml")}
    assert set(on_disk) == set(rendered), "run `clipjet k8s` and commit k8s/base"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"k8s/base/{name} is stale: run `clipjet k8s` and commit k8s/base"


async def test_every_keda_trigger_names_an_existing_consumer(settings: Settings, resources: Resources) -> None:
    """A trigger on a consumer that does not exist makes KEDA scale to max replicas: none may."""
    rendered = render_manifests(list(STAGES), settings)
    scaled = [doc for text in rendered.values() for doc in yaml.safe_load_all(text)
              if doc and doc["kind"] == "ScaledObject"]
    assert {doc["spec"]["scaleTargetRef"]["name"] for doc in scaled} == {
        *(f"clipjet-{s}" for s in STAGES), "clipjet-notifier"}
    for doc in scaled:
        for trigger in doc["spec"]["triggers"]:
            meta = trigger["metadata"]
            notifier = doc["metadata"]["name"] == "clipjet-notifier"
            assert meta["stream"] == (bus.events_stream(settings) if notifier else settings.nats_stream)
            info = await resources.js.consumer_info(meta["stream"], meta["consumer"])
            assert info.config.durable_name == meta["consumer"]


K8S_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity_bytes(text: str) -> int:
    """A Kubernetes quantity ("22Gi", "20G", "512Mi") in bytes."""
    for suffix in sorted(K8S_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * K8S_UNITS[suffix])
    return int(text)


def _documents(settings: Settings | None = None) -> list[dict[str, Any]]:
    rendered = render_manifests(list(STAGES), settings)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc and "kind" in doc]


@pytest.mark.parametrize("quota_gib", [20.0, 1.5, 1 / 1024])
def test_scratch_volume_is_larger_than_the_quota_it_holds(quota_gib: float) -> None:
    """The kubelet evicts a pod whose emptyDir passes sizeLimit: the quota must refuse work before that."""
    settings = Settings(nvme_scratch_gb=quota_gib)
    docs = _documents(settings)
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert float(config["data"]["NVME_SCRATCH_GB"]) == pytest.approx(quota_gib, rel=1e-5)
    workers = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] in
               {f"clipjet-{s}" for s in STAGES}]
    assert len(workers) == len(STAGES)
    for deployment in workers:
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "scratch"]
        limit = quantity_bytes(volume["emptyDir"]["sizeLimit"])
        assert settings.scratch_bytes == int(quota_gib * 1024**3)  # GiB, the unit of the limit
        assert settings.scratch_bytes < limit <= settings.scratch_bytes * 1.2 + 1024**2, volume


def _allowed(policy: dict[str, Any], address: str) -> bool:
    """Whether one of the policy's ipBlock rules lets `address` through."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block and ip.version == ipaddress.ip_network(block["cidr"]).version and ip in ipaddress.ip_network(
                block["cidr"]
            ) and not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


def test_egress_policies_keep_media_workers_inside_the_cluster() -> None:
    docs = _documents()
    policies = {d["spec"]["podSelector"]["matchLabels"][LABEL]: d for d in docs
                if d["kind"] == "NetworkPolicy" and "Egress" in d["spec"]["policyTypes"]}
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "Job")}
    assert set(policies) == deployments  # every pod is covered (the init Job too)
    cluster_ports = {53, NATS[1], S3[1], POSTGRES[1]}
    for app, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Egress"]
        cluster_rules = [r for r in policy["spec"]["egress"] if not any("ipBlock" in p for p in r["to"])]
        assert {p["port"] for r in cluster_rules for p in r["ports"]} == cluster_ports
        assert all("namespaceSelector" in p for r in cluster_rules for p in r["to"])  # named services only
        public = ("8.8.8.8", "2001:4860:4860::8888")
        private = ("10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "127.0.0.1",
                   "fd00::1", "fe80::1", "::1")
        if app in ("clipjet-fetch", "clipjet-notifier"):  # reach user URLs: the internet, never a private range
            assert all(_allowed(policy, a) for a in public)
            assert not any(_allowed(policy, a) for a in private)
        else:
            assert not any(_allowed(policy, a) for a in (*public, *private)), app


def test_ingress_policies_open_the_ops_port_to_monitoring_only() -> None:
    """Every pod is selected by an ingress policy (else all ingress is allowed); the ops port only from the
    monitoring namespace, the gateway's API port from anywhere, nothing else (the init Job: nothing at all)."""
    docs = _documents()
    ingress = {d["spec"]["podSelector"]["matchLabels"][LABEL]: d["spec"] for d in docs
               if d["kind"] == "NetworkPolicy" and "Ingress" in d["spec"]["policyTypes"]}
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    jobs = {d["metadata"]["name"] for d in docs if d["kind"] == "Job"}
    assert set(ingress) == deployments | jobs
    monitoring = [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: MONITORING_NAMESPACE}}}]
    for app, spec in ingress.items():
        assert spec["policyTypes"] == ["Ingress"]
        ports = {(rule["ports"][0]["port"], str(rule.get("from", "anywhere"))) for rule in spec["ingress"]}
        assert all(len(rule["ports"]) == 1 for rule in spec["ingress"]), app
        if app in jobs:
            assert spec["ingress"] == [], app
        elif app == "clipjet-gateway":
            assert ports == {(8080, "anywhere"), (METRICS_PORT, str(monitoring))}
        else:
            assert ports == {(METRICS_PORT, str(monitoring))}, app
