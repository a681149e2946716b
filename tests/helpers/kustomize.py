"""Render the subset of kustomize that deploy/k8s uses, so tests need no kubectl.

Supported: `resources` (files and folders with a kustomization.yaml), `namespace`, `labels`
(metadata only, includeSelectors false), `images`, `replicas`, and `patches` given as strategic
merge files (lists of named items merge by `name`, other lists are replaced). Anything else in a
kustomization.yaml is an error, so a new feature cannot be silently ignored by the tests.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
}
# Lists whose items strategic merge patches match by `name`.
MERGE_BY_NAME = {
    "containers",
    "initContainers",
    "env",
    "volumes",
    "volumeMounts",
    "volumeClaimTemplates",
    "imagePullSecrets",
}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def merge(base: Any, patch: Any, key: str = "") -> Any:
    """Strategic merge of `patch` into `base` (returns a new object)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            out[k] = merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and key in MERGE_BY_NAME
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec")


def _set_images(doc: dict[str, Any], images: list[dict[str, str]]) -> None:
    pod = _pod_spec(doc)
    if not pod:
        return
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name = (
            container["image"].split("@")[0].rsplit(":", 1)[0]
            if ":" in container["image"].split("/")[-1]
            else container["image"]
        )
        for image in images:
            if image["name"] == name:
                container["image"] = (
                    f"{image.get('newName', name)}:{image['newTag']}"
                    if "newTag" in image
                    else image.get("newName", name)
                )


def render(folder: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize folder` would print (same content, not same order)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}: teach kustomize_lite first")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if not path.exists():
            raise FileNotFoundError(f"{folder}/kustomization.yaml lists missing resource {entry}")
        docs += render(path) if path.is_dir() else _docs(path)
    for entry in spec.get("patches", []):
        if set(entry) != {"path"}:
            raise ValueError(f"only `patches: - path:` is supported, got {entry}")
        for patch in _docs(folder / entry["path"]):
            targets = [
                d for d in docs if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]
            ]
            if len(targets) != 1:
                raise ValueError(f"patch {entry['path']} matches {len(targets)} resources")
            docs[docs.index(targets[0])] = merge(targets[0], patch)
    for replica in spec.get("replicas", []):
        targets = [d for d in docs if d["kind"] in SCALABLE and d["metadata"]["name"] == replica["name"]]
        if not targets:
            raise ValueError(f"replicas: no workload named {replica['name']}")
        for doc in targets:
            doc["spec"]["replicas"] = replica["count"]
    for doc in docs:
        _set_images(doc, spec.get("images", []))
        for label in spec.get("labels", []):
            if label.get("includeSelectors") or label.get("includeTemplates"):
                raise ValueError("labels with includeSelectors/includeTemplates are not supported")
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
        if "namespace" in spec and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs
