"""Render a kustomization in the tests, without a kustomize binary: a SUBSET of kustomize.

This is for tests only.  It implements exactly the features deploy/kubernetes uses, the way
kustomize does, and refuses anything else, so an overlay that grows a new feature fails here
instead of being rendered wrongly:

- ``resources``: YAML files (several documents each) and directories holding a
  ``kustomization.yaml`` (built recursively first, as kustomize does);
- ``configMapGenerator``: ``name`` + ``files`` (key = the file name, or ``key=path``), with
  ``options.disableNameSuffixHash: true`` only (no hash suffixes, so no name rewriting);
- ``namespace``: set on every namespaced object, and on the ServiceAccount subjects of
  (Cluster)RoleBindings;
- ``replicas``: ``name`` + ``count`` on Deployments and StatefulSets;
- ``patches``: ``path`` to a strategic-merge patch naming its target by apiVersion, kind and
  metadata.name.  Maps merge; ``null`` deletes a key; lists merge by their Kubernetes merge
  key for ``containers``, ``initContainers``, ``volumes``, ``env`` and ``volumeMounts``
  (by ``name``; ``mountPath`` for volumeMounts), and every other list is replaced whole,
  which matches kustomize for lists without a merge key (``volumeClaimTemplates``) and for
  the ones the patches add to an empty base list.  ``$patch`` directives are refused.

The manifests themselves stay valid for real kustomize (``kubectl apply -k``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION_FILE = "kustomization.yaml"
_KNOWN_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "replicas", "patches"}
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
_SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet"}
# Strategic-merge keys of the lists the patches may touch (from the Kubernetes API types).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
}


class RenderError(Exception):
    """The kustomization uses something this subset does not render."""


def load_documents(path: Path) -> list[Manifest]:
    """The non-empty YAML documents of ``path``."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise RenderError(f"{path}: a document without kind/apiVersion")
    return docs


def render(directory: Path) -> list[Manifest]:
    """The objects the kustomization in ``directory`` produces, in resource order."""
    kfile = directory / KUSTOMIZATION_FILE
    spec = yaml.safe_load(kfile.read_text())
    if not isinstance(spec, dict):
        raise RenderError(f"{kfile}: not a mapping")
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise RenderError(f"{kfile}: unsupported kustomize field(s) {sorted(unknown)}")
    objects: list[Manifest] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target)
        else:
            objects += load_documents(target)
    for generator in spec.get("configMapGenerator", []):
        objects.append(_config_map(directory, generator))
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, objects)
    if "namespace" in spec:
        _set_namespace(objects, spec["namespace"])
    for replicas in spec.get("replicas", []):
        _set_replicas(objects, replicas)
    _check_unique(objects)
    return objects


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """The objects of ``kind`` (named ``name`` when given)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def _config_map(directory: Path, generator: dict[str, Any]) -> Manifest:
    unknown = set(generator) - {"name", "files", "options"}
    if unknown or generator.get("options") != {"disableNameSuffixHash": True}:
        raise RenderError(
            f"configMapGenerator {generator.get('name')}: only name, files and "
            "options.disableNameSuffixHash: true are rendered"
        )
    data: dict[str, str] = {}
    for item in generator["files"]:
        key, sep, rel = item.partition("=")
        path = directory / (rel if sep else key)
        data[key if sep else path.name] = path.read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def _apply_patch(directory: Path, entry: dict[str, Any], objects: list[Manifest]) -> None:
    if set(entry) != {"path"}:
        raise RenderError(f"patch {entry}: only a strategic-merge patch file given by path is rendered")
    patch = load_documents(directory / entry["path"])
    for doc in patch:
        kind, name = doc["kind"], doc["metadata"]["name"]
        targets = [o for o in find(objects, kind, name) if o["apiVersion"] == doc["apiVersion"]]
        if len(targets) != 1:
            raise RenderError(f"patch {entry['path']}: {len(targets)} targets for {kind}/{name}")
        merged = strategic_merge(targets[0], doc)
        targets[0].clear()
        targets[0].update(merged)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """``patch`` merged into a copy of ``base`` (the subset described in the module docstring)."""
    if isinstance(patch, dict):
        if "$patch" in patch or any(k.startswith("$") for k in patch):
            raise RenderError(f"{field}: $-directives are not rendered")
        out = copy.deepcopy(base) if isinstance(base, dict) else {}
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(out.get(key), value, key)
        return out
    if isinstance(patch, list) and field in _MERGE_KEYS and isinstance(base, list):
        key = _MERGE_KEYS[field]
        out_list = copy.deepcopy(base)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise RenderError(f"{field}: a patch item without its merge key {key!r}")
            match = [i for i, have in enumerate(out_list) if have.get(key) == item[key]]
            if match:
                out_list[match[0]] = strategic_merge(out_list[match[0]], item, field)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _set_namespace(objects: list[Manifest], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in _CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace


def _set_replicas(objects: list[Manifest], entry: dict[str, Any]) -> None:
    targets = [o for o in objects if o["kind"] in _SCALABLE and o["metadata"]["name"] == entry["name"]]
    if not targets:
        raise RenderError(f"replicas: nothing named {entry['name']!r} to scale")
    for obj in targets:
        obj["spec"]["replicas"] = int(entry["count"])


def _check_unique(objects: list[Manifest]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        ident = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if ident in seen:
            raise RenderError(f"two objects {ident}")
        seen.add(ident)
