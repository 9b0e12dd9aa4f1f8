"""A throwaway Prometheus server for tests, and the shipped monitoring files rendered for it.

Debian's ``prometheus`` package provides /usr/bin/prometheus and /usr/bin/promtool.  The
server gets its own storage directory, a free loopback port and the scrape configuration
rendered from deploy/monitoring/prometheus.example.yml (targets, token file and rule file
replaced, intervals shortened); the alert rules are the shipped ones with only their
``for:`` durations shortened, so the expressions under test are the shipped expressions.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "dfs-dashboard.json"
ALERTS = MONITORING / "dfs-alerts.yml"
EXAMPLE_CONFIG = MONITORING / "prometheus.example.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# Grafana's variables as the tests substitute them: every node, every mount, a rate window
# that holds several 1 s scrapes.
VARIABLES = {"instance": ".+", "mount": ".+", "__rate_interval": "15s"}
_VARIABLE_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels that show data (not rows), rows' nested panels included."""
    out: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        if panel.get("type") == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def substitute(expr: str, variables: dict[str, str] = VARIABLES) -> str:
    """``expr`` with Grafana's ``$name`` / ``${name}`` replaced; KeyError on an unknown one."""
    return _VARIABLE_RE.sub(lambda m: variables[m.group(1) or m.group(2)], expr)


def rule_names() -> list[str]:
    """The alert names of the shipped rules, in file order."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule["alert"] for group in doc["groups"] for rule in group["rules"]]


def render_rules(dest: Path, for_s: float) -> Path:
    """The shipped rules with every ``for:`` set to ``for_s``, and nothing else changed."""
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert "for" in rule, f"{rule.get('alert')}: no for:"
            rule["for"] = f"{for_s:g}s"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def render_config(
    dest: Path, *, targets: list[str], mount_targets: list[str], token_file: Path, rules_file: Path
) -> Path:
    """prometheus.example.yml with our targets, token file and rules, scraping every second."""
    doc = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    doc["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    doc["rule_files"] = [str(rules_file)]
    doc.pop("alerting", None)  # no Alertmanager here: the tests read /api/v1/alerts
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    jobs["dfs"]["authorization"]["credentials_file"] = str(token_file)
    jobs["dfs"]["static_configs"] = [{"targets": targets}]
    jobs["dfs-mount"]["static_configs"] = [{"targets": mount_targets}]
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


@dataclass
class Prometheus:
    """One prometheus process on 127.0.0.1; :meth:`start` returns once it is ready."""

    config_file: Path
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "prometheus.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            wait_for(self._ready, 30, "prometheus to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"prometheus exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: the ``data`` of a successful answer."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or a one-element list for a scalar)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            result: list[dict[str, Any]] = data["result"]
            return result
        return [{"metric": {}, "value": data["result"]}]

    def targets_up(self) -> dict[str, str]:
        """scrape URL -> health ("up", "down", "unknown") of every active target."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def alerts(self) -> dict[str, set[str]]:
        """Alert name -> the states (pending, firing) of its active alerts."""
        out: dict[str, set[str]] = {}
        for alert in self.api("alerts")["alerts"]:
            out.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return out

    def rules(self) -> list[dict[str, Any]]:
        """Every alerting rule with its health and last evaluation error."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
