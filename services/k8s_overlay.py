"""A small kustomize for the tests: renders k8s/base and the overlays in k8s/ without kubectl.

It understands only what clipjet's kustomizations use: `resources` (files and folders with their own
kustomization.yaml), `patches` holding RFC 6902 JSON patches (inline `patch` or `path`) with a `target` of kind and
name (a regular expression, anchored, as in kustomize), `images` (name -> newName/newTag) and `labels` (`pairs`
added to metadata only). Anything else is refused, so an overlay cannot silently render differently here and in
`kubectl kustomize` (tests/test_k8s_validate.py compares the two when kubectl is installed)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "patches", "images", "labels"}


class OverlayError(ValueError):
    """A kustomization this renderer does not understand, or a patch that does not apply."""


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise OverlayError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise OverlayError(f"no {part!r} on the way to /{'/'.join(parts)}") from exc
    return node


def apply_json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """Apply RFC 6902 add / replace / remove / test operations to `doc` in place."""
    for op in operations:
        parts = _pointer(op["path"])
        parent, key = _parent(doc, parts), parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if key == "-" else int(key)
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[index]
            elif kind == "test" and parent[index] != op["value"]:
                raise OverlayError(f"test failed at {op['path']}")
            continue
        if kind in ("replace", "remove", "test") and key not in parent:
            raise OverlayError(f"{kind}: nothing at {op['path']}")
        if kind in ("add", "replace"):
            parent[key] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[key]
        elif kind == "test":
            if parent[key] != op["value"]:
                raise OverlayError(f"test failed at {op['path']}")
        else:
            raise OverlayError(f"unsupported JSON patch op {kind!r}")


def _targets(docs: list[dict[str, Any]], target: dict[str, str]) -> list[dict[str, Any]]:
    unknown = set(target) - {"kind", "name"}
    if unknown:
        raise OverlayError(f"unsupported patch target fields {sorted(unknown)}")
    name = re.compile(target.get("name", ".*"))
    return [doc for doc in docs if doc["kind"] == target.get("kind", doc["kind"])
            and name.fullmatch(doc["metadata"]["name"])]


def _set_image(docs: list[dict[str, Any]], image: dict[str, str]) -> None:
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` would print (same content; order not guaranteed)."""
    kustomization = yaml.safe_load((folder / KUSTOMIZATION).read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise OverlayError(f"{folder / KUSTOMIZATION}: unsupported fields {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text()
        matched = _targets(docs, patch["target"])
        if not matched:
            raise OverlayError(f"patch target {patch['target']} matches nothing")
        for doc in matched:
            apply_json_patch(doc, yaml.safe_load(text))
    for image in kustomization.get("images", []):
        _set_image(docs, image)
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise OverlayError("labels with includeSelectors/includeTemplates are not supported")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    return docs
