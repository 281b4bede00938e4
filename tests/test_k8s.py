"""The kustomize base matches the stage registry, and every KEDA trigger names a consumer the stack creates."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.k8s import render_manifests
from services.registry import STAGES
from shared.resources import Resources
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
    assert {doc["spec"]["scaleTargetRef"]["name"] for doc in scaled} == {f"clipjet-{s}" for s in STAGES}
    for doc in scaled:
        for trigger in doc["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert meta["stream"] == settings.nats_stream
            info = await resources.js.consumer_info(meta["stream"], meta["consumer"])
            assert info.config.durable_name == meta["consumer"]
