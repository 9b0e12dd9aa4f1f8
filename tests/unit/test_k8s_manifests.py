"""deploy/kubernetes, checked offline: every object against the Kubernetes API schema
(kubernetes-validate, its newest version), and the overlays rendered (tests/k8s_render.py)
against the invariants a dfs cluster needs: replicas >= 3 spread over zones in production,
probes on the admin port's /health, a disruption budget of one, ports that match the
Services and dfs's own defaults, secrets and config maps that exist, and a dfs.conf that
dfs's own parser accepts.  The init program (deploy/docker/k8s_prepare.py) is run on
sample pods, and the PrometheusRule is compared with deploy/monitoring/dfs-alerts.yml.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import ssl
import stat
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from dfs.core import config as config_mod
from dfs.core.auth import CallerClass, Credential, new_cluster_secret
from dfs.core.errors import AuthFailed, ConfigError
from dfs.net.rpc import parse_address
from tests import k8s_render
from tests.k8s_render import Manifest, find, render

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = ("development", "production")
ALERTS = REPO / "deploy" / "monitoring" / "dfs-alerts.yml"
ZONE_KEY = "topology.kubernetes.io/zone"
# Custom resources of the Prometheus Operator: not in the core schema, checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"StatefulSet", "DaemonSet", "Deployment"}


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


prepare = _load_module("dfs_k8s_prepare", REPO / "deploy" / "docker" / "k8s_prepare.py")
gen_rule = _load_module("dfs_gen_prometheusrule", KUBE / "gen_prometheusrule.py")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(KUBE / "overlays" / request.param)


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    return render(KUBE / "overlays" / "production")


def _one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_specs(objects: list[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [(o, o["spec"]["template"]["spec"]) for o in objects if o["kind"] in WORKLOAD_KINDS]


def _container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    containers = pod_spec["initContainers" if init else "containers"]
    matches = [c for c in containers if c["name"] == name]
    assert len(matches) == 1, f"container {name}"
    result: dict[str, Any] = matches[0]
    return result


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _configmap_dfs_conf(objects: list[Manifest]) -> str:
    text: str = _one(objects, "ConfigMap", "dfs-config")["data"]["dfs.conf"]
    return text


# -- schema ----------------------------------------------------------------------------------


def test_every_object_validates_against_the_newest_schema(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    version = kv_utils.latest_version()
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue  # test_prometheus_operator_objects checks them
        # strict: unknown fields fail too (a misspelt key would otherwise be dropped silently).
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    for obj in objects:
        # One namespace for everything: Secrets, ServiceMonitors and Services refer to each other.
        if obj["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"].get("namespace") == "dfs", f"{obj['kind']}/{obj['metadata']['name']}"
    assert checked >= 10, f"{name}: only {checked} objects rendered"


def test_schema_validation_catches_a_misspelt_field(production: list[Manifest]) -> None:
    # Guards the test above: strict validation really rejects what the API server would drop.
    sts = _one(production, "StatefulSet", "dfs")
    broken = k8s_render.strategic_merge(sts, {"spec": {"replica": 3}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kv_utils.latest_version(), strict=True)


def test_prometheus_operator_objects(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    crds = [o for o in objects if o["kind"] in CRD_KINDS]
    if name == "development":
        assert crds == []  # no Prometheus Operator assumed there
        return
    assert {o["kind"] for o in crds} == CRD_KINDS
    for obj in crds:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["metadata"]["namespace"] == "dfs"
    monitor = _one(objects, "ServiceMonitor")
    services = [
        s
        for s in find(objects, "Service")
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == ["dfs-admin"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    # job="dfs", as the alert rules and the dashboard select it.
    assert services[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "dfs"
    token = endpoint["bearerTokenSecret"]
    assert token["key"] in _one(objects, "Secret", token["name"])["stringData"]
    rule = _one(objects, "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups, "the PrometheusRule has no groups"
    for group in groups:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert r["expr"] and ("alert" in r) != ("record" in r)


def test_prometheusrule_is_generated_from_the_alert_rules() -> None:
    target = KUBE / "overlays" / "production" / "prometheusrule.yaml"
    manifest = yaml.safe_load(target.read_text())
    if not ALERTS.exists():
        pytest.skip(f"{ALERTS.relative_to(REPO)} does not exist yet: nothing to compare the rule with")
    assert manifest["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], (
        "re-run deploy/kubernetes/gen_prometheusrule.py"
    )
    assert target.read_text() == gen_rule.render(gen_rule.load_groups(ALERTS))


# -- the production invariants -------------------------------------------------------------


def test_production_replicas_spread_over_zones(production: list[Manifest]) -> None:
    sts = _one(production, "StatefulSet", "dfs")
    assert sts["spec"]["replicas"] >= 3
    cfg = config_mod.parse(_configmap_dfs_conf(production), env={})
    assert sts["spec"]["replicas"] >= cfg.cluster.replicas  # R copies on R distinct pods
    pod = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    anti = pod["affinity"]["podAntiAffinity"]
    terms = [t for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])] + [
        t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    zone_terms = [t for t in terms if t["topologyKey"] == ZONE_KEY]
    assert zone_terms, "no pod anti-affinity across zones"
    for term in terms:
        assert _selects(term["labelSelector"]["matchLabels"], labels), "anti-affinity misses the dfsd pods"
    host_terms = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in host_terms)
    spread = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == ZONE_KEY]
    assert spread and spread[0]["maxSkew"] == 1
    assert _selects(spread[0]["labelSelector"]["matchLabels"], labels)
    dfsd = _container(pod, "dfsd")
    assert dfsd["resources"]["requests"]["memory"] and dfsd["resources"]["limits"]["memory"]


def test_disruption_budget_keeps_r_copies(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    sts = _one(objects, "StatefulSet", "dfs")
    pdb = _one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pods = sts["spec"]["template"]["metadata"]["labels"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pods)
    # It must not also count the mount pods (a drain would then be blocked by them, or not).
    for workload, _ in _pod_specs(objects):
        if workload is not sts:
            assert not _selects(
                pdb["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"]
            )


def test_probes_hit_health_on_the_admin_port(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    sts = _one(objects, "StatefulSet", "dfs")
    dfsd = _container(sts["spec"]["template"]["spec"], "dfsd")
    cfg = config_mod.parse(_configmap_dfs_conf(objects), env={})
    admin_port = parse_address(cfg.admin.listen, 9001).port
    ports = {p["name"]: p["containerPort"] for p in dfsd["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = dfsd[probe]["httpGet"]
        assert get["path"] == "/health", probe
        port = get["port"]
        assert (ports[port] if isinstance(port, str) else port) == admin_port, probe


def test_health_is_the_admin_apis_public_route() -> None:
    # The probes carry no token: /health must stay the one route that answers without one.
    source = (REPO / "daemon" / "admin" / "api.py").read_text()
    assert re.search(r'Route\("/health", [^\n]*public=True\)', source), "/health is no longer public"


def test_container_ports_are_dfs_ports_and_in_services(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    cfg = config_mod.parse(_configmap_dfs_conf(objects), env={})
    expected = {
        ("rpc", "TCP"): parse_address(cfg.rpc.listen, 7400).port,
        ("gossip-udp", "UDP"): parse_address(cfg.gossip.listen, 7401).port,
        ("gossip-tcp", "TCP"): parse_address(cfg.gossip.listen, 7401).port,
        ("s3", "TCP"): parse_address(cfg.s3.listen, 9000).port,
        ("admin", "TCP"): parse_address(cfg.admin.listen, 9001).port,
    }
    assert sorted(expected.values()) == [7400, 7401, 7401, 9000, 9001]  # the code's defaults
    sts = _one(objects, "StatefulSet", "dfs")
    dfsd = _container(sts["spec"]["template"]["spec"], "dfsd")
    have = {(p["name"], p.get("protocol", "TCP")): p["containerPort"] for p in dfsd["ports"]}
    assert have == expected
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    services = [s for s in find(objects, "Service") if _selects(s["spec"]["selector"], pod_labels)]
    served = {
        (p["targetPort"], p.get("protocol", "TCP")): p["port"] for s in services for p in s["spec"]["ports"]
    }
    for (name, protocol), number in have.items():
        assert served.get((name, protocol)) == number, f"container port {name}/{protocol} has no Service port"
    for name, service_port in served.items():
        assert name in have, f"Service port {name} targets no container port"
        assert service_port == have[name]
    headless = _one(objects, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_referenced_secrets_and_config_maps_exist(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    secrets = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
    config_maps = {c["metadata"]["name"]: c for c in find(objects, "ConfigMap")}
    accounts = {a["metadata"]["name"] for a in find(objects, "ServiceAccount")}
    seen_secrets = 0
    for workload, pod in _pod_specs(objects):
        assert pod["serviceAccountName"] in accounts
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
                seen_secrets += 1
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in pod["containers"] + pod.get("initContainers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret = secrets[ref["secretKeyRef"]["name"]]
                    assert ref["secretKeyRef"]["key"] in secret["stringData"]
            mounted = {v["name"] for v in pod.get("volumes", [])}
            claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounted | claims, f"{container['name']}: no volume {mount['name']}"
    assert seen_secrets >= 2  # the cluster secret (dfsd) and the client credential (mounts)
    for binding in find(objects, "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            account = _one(objects, "ServiceAccount", subject["name"])
            assert subject["namespace"] == account["metadata"]["namespace"]
        assert find(objects, "ClusterRole", binding["roleRef"]["name"])


def test_dfs_conf_parses_with_dfs_own_parser(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    text = _configmap_dfs_conf(objects)
    cfg = config_mod.parse(text, origin="ConfigMap", env={})  # unknown sections/keys raise
    sts = _one(objects, "StatefulSet", "dfs")
    pod = sts["spec"]["template"]["spec"]
    dfsd = _container(pod, "dfsd")
    # The daemon applies its DFS_* environment over the file: those must name options too.
    env = {e["name"]: e.get("value", "") for e in dfsd.get("env", []) if "value" in e}
    config_mod.parse(text, origin="ConfigMap + env", env=env)
    # The data directory is the PVC; the metadata primary is pod 0 of this StatefulSet.
    mounts = {m["mountPath"]: m["name"] for m in dfsd["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert mounts[cfg.node.data_dir] in claims
    assert cfg.cluster.meta == f"{sts['metadata']['name']}-0.{sts['spec']['serviceName']}:7400"
    seeds = [s.strip() for s in cfg.gossip.seeds.split(",")]
    assert seeds[0] == f"{sts['metadata']['name']}-0.{sts['spec']['serviceName']}:7401"
    for listen in (cfg.rpc.listen, cfg.gossip.listen, cfg.s3.listen, cfg.admin.listen):
        assert parse_address(listen, 0).host == "0.0.0.0", listen  # reachable from other pods


def test_pod_wiring_matches_the_init_program(overlay: tuple[str, list[Manifest]]) -> None:
    # The paths k8s_prepare.py reads and writes are the volumes the StatefulSet mounts there.
    _, objects = overlay
    sts = _one(objects, "StatefulSet", "dfs")
    pod = sts["spec"]["template"]["spec"]
    init = _container(pod, "prepare", init=True)
    dfsd = _container(pod, "dfsd")
    volumes = {v["name"]: v for v in pod["volumes"]}
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    dfsd_mounts = {m["mountPath"]: m["name"] for m in dfsd["volumeMounts"]}
    assert volumes[init_mounts[str(prepare.TEMPLATE_PATH.parent)]]["configMap"]["name"] == "dfs-config"
    secret = volumes[init_mounts[str(prepare.SECRET_PATH.parent)]]["secret"]
    assert prepare.SECRET_PATH.name in _one(objects, "Secret", secret["secretName"])["stringData"]
    run = str(prepare.OUTPUT_PATH.parent)
    assert init_mounts[run] == dfsd_mounts[run] and "emptyDir" in volumes[init_mounts[run]]
    assert dfsd["command"] == ["dfsd", "--config", str(prepare.OUTPUT_PATH)]
    assert {e["name"]: e.get("value") for e in dfsd["env"]}["DFS_CONFIG"] == str(prepare.OUTPUT_PATH)
    cfg = config_mod.parse(_configmap_dfs_conf(objects), env={})
    assert init_mounts[cfg.node.data_dir] == dfsd_mounts[cfg.node.data_dir]
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["PEER_SERVICE"]["value"] == sts["spec"]["serviceName"]
    assert init_env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert init_env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert init_env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # The init container reads the node's labels: its account may get nodes (and only that).
    binding = _one(objects, "ClusterRoleBinding")
    account = {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "dfs"}
    assert account in binding["subjects"]
    role = _one(objects, "ClusterRole", binding["roleRef"]["name"])
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    # The image provides the init program under the name the manifest runs.
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert f"COPY deploy/docker/k8s_prepare.py /usr/local/bin/{init['command'][0]}" in dockerfile


def test_dfsd_runs_unprivileged_and_the_mount_privileged(overlay: tuple[str, list[Manifest]]) -> None:
    _, objects = overlay
    sts_pod = _one(objects, "StatefulSet", "dfs")["spec"]["template"]["spec"]
    assert sts_pod["securityContext"]["runAsNonRoot"] is True
    for container in sts_pod["containers"] + sts_pod["initContainers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mount_pod = _one(objects, "DaemonSet", "dfs-mount")["spec"]["template"]["spec"]
    mount = _container(mount_pod, "mount")
    assert mount["securityContext"]["privileged"] is True
    propagated = [m for m in mount["volumeMounts"] if m.get("mountPropagation") == "Bidirectional"]
    assert len(propagated) == 1
    volumes = {v["name"]: v for v in mount_pod["volumes"]}
    assert "hostPath" in volumes[propagated[0]["name"]]
    fuse = next(m["name"] for m in mount["volumeMounts"] if m["mountPath"] == "/dev/fuse")
    assert volumes[fuse]["hostPath"]["type"] == "CharDevice"
    script = " ".join(mount["command"])
    assert f"mount.dfs dfs-rpc:7400:/ {propagated[0]['mountPath']}/" in script
    assert "credential=/etc/dfs-mount/client.credential" in script
    assert _one(objects, "Service", "dfs-rpc")["spec"]["ports"][0]["port"] == 7400


def test_development_overlay_is_small(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    sts = _one(objects, "StatefulSet", "dfs")
    storage = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    if name == "development":
        assert 1 <= sts["spec"]["replicas"] <= 3
        assert storage == "1Gi"
    else:
        assert storage == "500Gi"
    # The patch replaced the claim list but kept the container list merged by name.
    pod = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["dfsd"]
    assert _container(pod, "dfsd")["readinessProbe"]


# -- the init program (deploy/docker/k8s_prepare.py) ---------------------------------------


def _template() -> str:
    return (KUBE / "base" / "dfs.conf").read_text()


def _prepared(pod: Any) -> config_mod.Config:
    return config_mod.parse(prepare.pod_config(_template(), pod), env={})


def test_prepare_primary_and_joiner_configs() -> None:
    primary = _prepared(prepare.Pod("dfs-0", "10.1.0.5", "eu-1a", "dfs-peers"))
    assert (primary.node.id, primary.node.zone) == ("dfs-0", "eu-1a")
    assert primary.cluster.meta == ""  # dfs-0 founds the cluster and holds meta.db
    assert primary.rpc.advertise == "dfs-0.dfs-peers:7400"
    assert primary.gossip.advertise == "10.1.0.5:7401"
    assert primary.gossip.seeds == "dfs-1.dfs-peers:7401,dfs-2.dfs-peers:7401"
    joiner = _prepared(prepare.Pod("dfs-1", "fd00::7", "eu-1b", "dfs-peers"))
    assert joiner.cluster.meta == "dfs-0.dfs-peers:7400"
    assert joiner.gossip.advertise == "[fd00::7]:7401"
    assert joiner.gossip.seeds == "dfs-0.dfs-peers:7401,dfs-2.dfs-peers:7401"
    assert joiner.node.zone == "eu-1b"
    # dfs-10 is not dfs-1: a name prefix must not drop a seed.
    tenth = _prepared(prepare.Pod("dfs-10", "10.1.0.9", "z", "dfs-peers"))
    assert tenth.gossip.seeds == config_mod.parse(_template(), env={}).gossip.seeds


def test_prepare_refuses_a_bad_template() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        prepare.pod_config(
            _template() + "\n[storage]\nblock_bytes = 1\n", prepare.Pod("dfs-0", "10.0.0.1", "z", "p")
        )


def test_prepare_installs_the_cluster_secret(tmp_path: Path) -> None:
    secret = Credential.of_secret(new_cluster_secret()).to_text()
    assert prepare.install_secret(secret, tmp_path) is True
    installed = tmp_path / "node.credential"
    assert stat.S_IMODE(os.stat(installed).st_mode) == 0o600
    assert Credential.from_text(installed.read_text()) == Credential.from_text(secret)
    assert prepare.install_secret(secret, tmp_path) is False  # a restart keeps it
    other = Credential.of_secret(new_cluster_secret()).to_text()
    with pytest.raises(ConfigError, match="another cluster secret"):
        prepare.install_secret(other, tmp_path)
    empty_dir = tmp_path / "fresh"
    empty_dir.mkdir()
    with pytest.raises(ConfigError, match="fill the Secret dfs-cluster"):
        prepare.install_secret("", empty_dir)
    client = Credential.derived(new_cluster_secret(), CallerClass.CLIENT).to_text()
    with pytest.raises(ConfigError, match="not the cluster secret"):
        prepare.install_secret(client, empty_dir)
    assert list(empty_dir.iterdir()) == []


def test_prepare_main_writes_the_pod_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole program, with its fixed paths pointed into tmp_path and the zone given.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    template = tmp_path / "dfs.conf"
    template.write_text(_template().replace('"/var/lib/dfs"', f'"{data_dir}"'))
    secret = tmp_path / "node.credential"
    secret.write_text(Credential.of_secret(new_cluster_secret()).to_text())
    monkeypatch.setattr(prepare, "TEMPLATE_PATH", template)
    monkeypatch.setattr(prepare, "SECRET_PATH", secret)
    monkeypatch.setattr(prepare, "OUTPUT_PATH", tmp_path / "out.conf")
    for name, value in {
        "POD_NAME": "dfs-2",
        "POD_IP": "10.0.0.3",
        "ZONE": "c",
        "PEER_SERVICE": "dfs-peers",
    }.items():
        monkeypatch.setenv(name, value)
    assert prepare.main() == 0
    cfg = config_mod.parse((tmp_path / "out.conf").read_text(), env={})
    assert (cfg.node.id, cfg.node.zone, cfg.cluster.meta) == ("dfs-2", "c", "dfs-0.dfs-peers:7400")
    assert (data_dir / "node.credential").exists()
    secret.write_text("")
    assert prepare.main() != 0  # an emptied Secret on a running volume: refused, not replaced


# -- the renderer itself ---------------------------------------------------------------------


def test_renderer_merges_like_kustomize() -> None:
    base = {
        "spec": {
            "containers": [{"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]}],
            "claims": [{"name": "d", "size": 1}],
            "keep": 1,
            "drop": 2,
        }
    }
    patch = {
        "spec": {
            "containers": [{"name": "a", "env": [{"name": "F", "value": "2"}]}, {"name": "b"}],
            "claims": [{"name": "d", "size": 5}],
            "drop": None,
        }
    }
    merged = k8s_render.strategic_merge(base, patch)
    assert merged["spec"]["containers"] == [
        {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}]},
        {"name": "b"},
    ]
    assert merged["spec"]["claims"] == [{"name": "d", "size": 5}]
    assert merged["spec"]["keep"] == 1 and "drop" not in merged["spec"]
    assert base["spec"]["drop"] == 2  # the base is not modified
    with pytest.raises(k8s_render.RenderError):
        k8s_render.strategic_merge(base, {"spec": {"$patch": "replace"}})


def test_renderer_refuses_unsupported_fields(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(k8s_render.RenderError, match="namePrefix"):
        render(tmp_path)


def test_credentials_mode_rule_that_the_init_program_works_around(tmp_path: Path) -> None:
    # A Secret volume under fsGroup is group-readable (0440): dfs refuses such a credential,
    # which is why the init program copies the secret into the data directory with mode 0600.
    from dfs.net import credentials

    path = tmp_path / "node.credential"
    path.write_text(Credential.of_secret(new_cluster_secret()).to_text())
    path.chmod(0o440)
    with pytest.raises(AuthFailed, match="readable by others"):
        credentials.load(path)


# -- the zone lookup against a stand-in API server (no Kubernetes here) ---------------------


class _ApiServer:
    """An HTTPS server answering GET /api/v1/nodes/<name> as the API server does."""

    def __init__(self, tmp_path: Path, nodes: dict[str, dict[str, str]], token: str) -> None:
        from dfs.net import certs

        certs.init_cluster(tmp_path / "ca", "k8s-test")
        cert, key, ca = certs.issue_files(
            tmp_path / "ca", tmp_path / "tls", "api", kind="node", hosts=["127.0.0.1"]
        )
        self.ca_file = ca
        self.requests: list[str] = []
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                server_self.requests.append(self.path)
                name = self.path.removeprefix("/api/v1/nodes/")
                if self.headers.get("Authorization") != f"Bearer {token}":
                    status, body = 401, {"kind": "Status", "code": 401}
                elif name not in nodes:
                    status, body = 404, {"kind": "Status", "code": 404}
                else:
                    status, body = 200, {"kind": "Node", "metadata": {"name": name, "labels": nodes[name]}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows failures

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_prepare_reads_the_zone_label_of_its_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = {"node-a": {ZONE_KEY: "eu-west-1a", "kubernetes.io/hostname": "node-a"}, "node-b": {}}
    server = _ApiServer(tmp_path, nodes, token="sa-token")
    try:
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text("sa-token\n")
        (account / "ca.crt").write_bytes(server.ca_file.read_bytes())
        monkeypatch.setattr(prepare, "SERVICE_ACCOUNT_DIR", account)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
        assert prepare.node_zone("node-a") == "eu-west-1a"
        assert prepare.node_zone("node-b") == prepare.DEFAULT_ZONE  # an unlabelled node
        assert server.requests == ["/api/v1/nodes/node-a", "/api/v1/nodes/node-b"]
        with pytest.raises(ConfigError, match="404"):
            prepare.node_zone("node-c")  # not retried: no retry fixes a wrong name
        (account / "token").write_text("wrong\n")
        with pytest.raises(ConfigError, match="401"):
            prepare.node_zone("node-a")
        assert len(server.requests) == 4
    finally:
        server.close()
