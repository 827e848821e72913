"""The monitoring files shipped in config/: Prometheus alert rules and the Grafana dashboard.

The rules are checked with ``promtool check rules`` when promtool is installed
(Debian's ``prometheus`` package), and in any case read here: every alert the
issue asks for is present, and every chatd metric any rule or panel queries is
one a running server actually exposes (so a renamed metric cannot leave a
silent alert behind).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import http, running_server

CONFIG = Path(__file__).resolve().parent.parent / "config"
RULES = CONFIG / "prometheus" / "chatd-alerts.yml"
DASHBOARD = CONFIG / "grafana" / "chatd-dashboard.json"
METRIC = re.compile(r"\bchatd_[a-z_]+\b")


def rule_exprs() -> dict[str, str]:
    """alert name -> expression, read from the YAML (block scalars or one-line values)."""
    alerts: dict[str, str] = {}
    name = None
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\S+)", line):
            name = m.group(1)
        elif (m := re.match(r"(\s*)expr: ?(.*)", line)) and name is not None:
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in ("|", ">", ">-", "|-"):
                block = []
                for follow in lines[i + 1:]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                        break
                    block.append(follow.strip())
                value = " ".join(block).strip()
            alerts[name] = value
            name = None
    return alerts


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    assert data["title"] == "chatd" and data["panels"]
    return [t["expr"] for panel in data["panels"] for t in panel["targets"]]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in result.stdout


def test_the_rules_cover_what_an_admin_is_paged_for() -> None:
    alerts = rule_exprs()
    for name, metric in {
        "ChatdEchoSlow": "chatd_echo_roundtrip_seconds_bucket",
        "ChatdEchoFailing": "chatd_echo_roundtrip_seconds_count",
        "ChatdInboxBacklog": "chatd_inbox_backlog_seconds",
        "ChatdPushQueueOld": "chatd_push_oldest_seconds",
        "ChatdDatabaseUnavailable": "chatd_database_up",
        "ChatdNodeMissingFromRegistry": "chatd_registry_registered",
    }.items():
        assert metric in alerts.get(name, ""), (name, alerts.get(name))
    for expr in alerts.values():
        assert expr.count("(") == expr.count(")"), expr


async def test_every_metric_the_rules_and_dashboard_query_is_exposed(db_url: str) -> None:
    async with running_server(db_url) as srv:
        async with http(srv) as api:
            text = (await api.get("/metrics")).text
    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    queried = {m for expr in [*rule_exprs().values(), *dashboard_exprs()] for m in METRIC.findall(expr)}
    assert queried, "no chatd metric queried at all"
    assert queried <= exposed, sorted(queried - exposed)
