#!/opt/dfs/bin/python3
"""Prepare one dfsd pod of the Kubernetes StatefulSet (deploy/kubernetes): its init container.

A ConfigMap holds one ``dfs.conf`` for every pod, but a few options differ per pod, and one
of them, the zone, lives in a label of the *node* the pod runs on, which the downward API
cannot read.  This runs before dfsd, in the same image, and:

1. reads the node's ``topology.kubernetes.io/zone`` label from the API server (the pod's
   service account may ``get`` nodes: deploy/kubernetes/base/rbac.yaml); a node without the
   label (a one-zone test cluster) gets the zone ``default``, as a bare dfs.conf would;
2. writes ``/run/dfs/dfs.conf``: the ConfigMap's file, parsed and checked by dfs's own parser,
   with ``[node] id`` = the pod name, ``[node] zone``, ``[rpc] advertise`` = the pod's stable
   DNS name under the headless Service, ``[gossip] advertise`` = the pod IP (gossip sends a
   datagram per probe, and an IP needs no name lookup), ``[gossip] seeds`` without this pod,
   and ``[cluster] meta`` emptied on the pod it names (the metadata primary);
3. installs the cluster secret from the mounted Secret as ``<data_dir>/node.credential``
   (mode 0600, owned by the daemon's user: a Secret volume is group-readable under fsGroup,
   which dfs refuses for a credential), and refuses a data directory that already holds a
   different cluster secret (its handshakes would fail against every peer).

Inputs come from the environment (set in statefulset.yaml): POD_NAME, POD_IP, NODE_NAME,
PEER_SERVICE (the headless Service) and optionally ZONE (skips the API lookup).
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dfs.core import config as config_mod
from dfs.core.auth import CallerClass, Credential
from dfs.core.errors import AuthFailed, ConfigError, exit_code
from dfs.files import write_private
from dfs.net.rpc import parse_address

ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_ZONE = "default"
TEMPLATE_PATH = Path("/etc/dfs/dfs.conf")
OUTPUT_PATH = Path("/run/dfs/dfs.conf")
SECRET_PATH = Path("/run/secrets/dfs/node.credential")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# The API server may be briefly unreachable while a node starts: a few tries, then give up
# (the kubelet restarts the init container with back-off, which is the real retry loop).
API_ATTEMPTS = 5
API_TIMEOUT_S = 5.0
API_RETRY_DELAY_S = 2.0


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str  # e.g. dfs-1
    ip: str
    zone: str
    peer_service: str  # the headless Service, e.g. dfs-peers


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _names_pod(address: str, pod: Pod) -> bool:
    """True when ``address`` (host:port) is this pod's name under the headless Service."""
    host = parse_address(address, 0).host or ""
    return host == pod.name or host.startswith(f"{pod.name}.")


def pod_config(template: str, pod: Pod) -> str:
    """The dfs.conf of ``pod``: the shared ``template`` with the per-pod options set."""
    cfg = config_mod.parse(template, origin="ConfigMap dfs.conf", env={})
    rpc_port = parse_address(cfg.rpc.listen, 7400).port
    gossip_port = parse_address(cfg.gossip.listen, 7401).port
    seeds = [s.strip() for s in cfg.gossip.seeds.split(",") if s.strip()]
    meta = cfg.cluster.meta
    cfg = config_mod.replace(
        cfg,
        node={"id": pod.name, "zone": pod.zone},
        rpc={"advertise": _host_port(f"{pod.name}.{pod.peer_service}", rpc_port)},
        gossip={
            "advertise": _host_port(pod.ip, gossip_port),
            "seeds": ",".join(s for s in seeds if not _names_pod(s, pod)),
        },
        cluster={"meta": "" if meta and _names_pod(meta, pod) else meta},
    )
    return config_mod.render(cfg)


def install_secret(secret_text: str, data_dir: Path) -> bool:
    """Put the cluster secret into ``data_dir``; True when it was written (first start)."""
    try:
        given = Credential.from_text(secret_text, str(SECRET_PATH))
    except AuthFailed as exc:
        raise ConfigError(
            f"{exc.message}: fill the Secret dfs-cluster (key node.credential) before the first"
            " start; README, section Kubernetes"
        ) from None
    if given.caller is not CallerClass.NODE:
        raise ConfigError(f"{SECRET_PATH} holds a {given.caller.value} credential, not the cluster secret")
    target = data_dir / "node.credential"
    if target.exists():
        held = Credential.from_text(target.read_text(), str(target))
        if held != given:
            raise ConfigError(
                f"{target} holds another cluster secret than the Secret dfs-cluster: this volume"
                " belongs to another cluster (delete its PVC, or put that secret in the Secret)"
            )
        return False
    write_private(target, given.to_text().encode())
    return True


def node_zone(node_name: str) -> str:
    """The zone label of the node ``node_name``, read with the pod's service account."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    url = f"https://{_host_port(host, int(port))}/api/v1/nodes/{urllib.parse.quote(node_name)}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    for attempt in range(1, API_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT_S, context=context) as reply:
                node = json.loads(reply.read(4 * 1024 * 1024))
            break
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 404):  # no retry fixes RBAC or a wrong name
                raise ConfigError(f"reading node {node_name} from the API server: {exc}") from None
            error: Exception = exc
        except (OSError, ValueError) as exc:
            error = exc
        if attempt == API_ATTEMPTS:
            raise ConfigError(f"reading node {node_name} from the API server: {error}") from None
        time.sleep(API_RETRY_DELAY_S)  # a one-shot init program: nothing else to run meanwhile
    labels = node.get("metadata", {}).get("labels") or {}
    zone = labels.get(ZONE_LABEL, "")
    return zone if isinstance(zone, str) and zone else DEFAULT_ZONE


def main() -> int:
    try:
        env = os.environ
        zone = env.get("ZONE") or node_zone(env["NODE_NAME"])
        pod = Pod(env["POD_NAME"], env["POD_IP"], zone, env.get("PEER_SERVICE", "dfs-peers"))
        text = pod_config(TEMPLATE_PATH.read_text(), pod)
        data_dir = config_mod.parse(text, origin=str(OUTPUT_PATH), env={}).data_path
        written = install_secret(SECRET_PATH.read_text(), data_dir)
        OUTPUT_PATH.write_text(text)
    except (ConfigError, AuthFailed) as exc:
        print(f"dfs-k8s-prepare: {exc.message}", file=sys.stderr)
        return exit_code(exc)  # the error table's code (EX_CONFIG for ConfigError)
    except (KeyError, OSError) as exc:
        print(f"dfs-k8s-prepare: {exc!r}", file=sys.stderr)
        return 1
    print(f"dfs-k8s-prepare: {pod.name} zone={zone} secret={'installed' if written else 'kept'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
