"""The alerting rules on sevpipe itself and the Grafana dashboard, by the real tools: Debian's
``promtool`` checks and unit-tests the rules (deploy/prometheus/sevpipe-rules.test.yml), and a
real Prometheus loads them while it scrapes sevpipe's own metric objects (every part's, on one
registry, as ``metrics_support`` makes them): every group loads, every rule evaluates with
health ok, the alerts that should fire on what is scraped do (with the labels the code
exports), and every dashboard query is PromQL that Prometheus answers with data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml
from metrics_support import RULE_TESTS, RULES, Parts, dashboard_queries
from prometheus_support import JOB, PROMETHEUS, Exporter, PrometheusServer, free_port

from schemas import TOPIC_INCIDENTS

PROMTOOL: Final = os.environ.get("SEVPIPE_PROMTOOL_BIN") or "/usr/bin/promtool"
WAIT: Final = 60.0

CONFIG: Final = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if not (os.path.isfile(PROMTOOL) and os.access(PROMTOOL, os.X_OK)):
        pytest.fail(
            f"{PROMTOOL} is missing: install Debian's prometheus "
            "(apt-get install --no-install-recommends prometheus)",
            pytrace=False,
        )
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def alert_names() -> list[str]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout


def test_promtool_test_rules() -> None:
    # The rules' own unit tests: each alert fires on the series it is about, at the time it
    # should, with its labels and words, and not before or on what it is not about.
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# -- a real Prometheus with the rules, scraping sevpipe's metrics --------------------------------


def what_sevpipe_shows(parts: Parts) -> None:
    """A sevpipe in trouble, as its metrics show it: a stage waiting out a backend, dead
    letters, a failed action, failed notifications; and some of everything else, so that
    every dashboard query has something to show."""
    parts.receiver.webhooks.inc(5)
    parts.receiver.alerts.labels("firing").inc(4)
    parts.receiver.repeats.inc()
    parts.receiver.rejected.labels("log_unavailable").inc()
    for seconds in (0.002, 0.004, 0.3):
        parts.receiver.append_seconds.observe(seconds)
    parts.classifier.alerts.inc(4)
    parts.classifier.events.labels("incident.opened", "SEV-0").inc()
    parts.classifier.batch_seconds.observe(0.01)
    parts.stages.records.labels("classifier").inc(4)
    parts.stages.batch_seconds.labels("classifier").observe(0.02)
    parts.stages.retries.labels("comms", "handle").inc()
    parts.stages.ready.labels("classifier").set(1)
    parts.stages.ready.labels("comms").set(0)
    parts.stages.deadletters.labels("classifier", "undecodable").inc()
    parts.comms.notifications.labels("sev-0-1", "slack", "failed").inc()
    parts.comms.notifications.labels("sev-0-1", "email", "succeeded").inc()
    parts.actions.events.labels("kubernetes.restart", "failed").inc()
    parts.actions.events.labels("kubernetes.scale", "succeeded").inc()
    parts.backpressure.held.inc()
    parts.backpressure.held_seconds.inc(0.5)
    parts.lag_watch.lag.set(3)
    parts.lag[(TOPIC_INCIDENTS, 1)] = 7


@pytest.fixture(scope="module")
def prometheus_with_rules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus with sevpipe-rules.yml, scraping an exporter that serves sevpipe's metrics
    (job ``sevpipe-test``, which the rules' ``job=~"sevpipe.*"`` takes) every second."""
    if not (os.path.isfile(PROMETHEUS) and os.access(PROMETHEUS, os.X_OK)):
        pytest.fail(f"{PROMETHEUS} is missing: install Debian's prometheus", pytrace=False)
    workdir = tmp_path_factory.mktemp("prometheus-rules")
    exporter = Exporter()
    what_sevpipe_shows(Parts.on(exporter.registry))
    exporter.start()
    config = workdir / "prometheus.yml"
    config.write_text(CONFIG.format(rules=RULES, job=JOB, port=exporter.port))
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", exporter, process, workdir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def api(server: PrometheusServer, path: str, **params: str) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{server.url}{path}", params=params) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def wait_for(server: PrometheusServer, path: str, done: Any) -> Any:
    """``path``'s data once ``done(data)`` holds; fails with the last answer after WAIT."""
    deadline = time.monotonic() + WAIT
    body: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            status, body = await api(server, path)
            if status == 200 and done(body["data"]):
                return body["data"]
        await asyncio.sleep(0.5)
    pytest.fail(f"{path} did not get there in {WAIT:g}s; last answer: {body}\n{server.log_tail()}")


def evaluated(data: dict[str, Any]) -> bool:
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    return bool(rules) and all(rule["health"] != "unknown" for rule in rules)


async def test_every_rule_group_loads_and_evaluates_ok(
    prometheus_with_rules: PrometheusServer,
) -> None:
    data = await wait_for(prometheus_with_rules, "/api/v1/rules", evaluated)
    # Prometheus lists the groups by name; each group's rules in the file's order.
    loaded = yaml.safe_load(RULES.read_text())
    wanted = {g["name"]: [r["alert"] for r in g["rules"]] for g in loaded["groups"]}
    found = {g["name"]: [r["name"] for r in g["rules"]] for g in data["groups"]}
    assert found == wanted
    assert {g["file"] for g in data["groups"]} == {str(RULES)}
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    bad = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not bad, bad
    assert all(rule["type"] == "alerting" for rule in rules)


def alerts_by_name(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for alert in data["alerts"]:
        found.setdefault(alert["labels"]["alertname"], []).append(alert)
    return found


async def test_what_is_scraped_fires_the_alerts_about_it(
    prometheus_with_rules: PrometheusServer,
) -> None:
    expected = {"SevpipeDeadLetters", "SevpipeActionsFailing", "SevpipeNotificationsFailing"}
    data = await wait_for(
        prometheus_with_rules, "/api/v1/alerts", lambda d: expected <= set(alerts_by_name(d))
    )
    alerts = alerts_by_name(data)
    (dead,) = alerts["SevpipeDeadLetters"]
    assert dead["state"] == "firing"
    assert (dead["labels"]["stage"], dead["labels"]["reason"]) == ("classifier", "undecodable")
    assert dead["labels"]["job"] == JOB
    assert dead["labels"]["severity"] == "warning"
    description = dead["annotations"]["description"]
    assert "sevpipe deadletter list --since 1h --stage classifier" in description
    (failed,) = alerts["SevpipeActionsFailing"]
    assert failed["labels"]["action"] == "kubernetes.restart"
    (told,) = alerts["SevpipeNotificationsFailing"]
    assert (told["labels"]["channel"], told["labels"]["route"]) == ("slack", "sev-0-1")
    # A stage waiting: pending for its 5 minutes, about the stage that waits.
    data = await wait_for(
        prometheus_with_rules,
        "/api/v1/alerts",
        lambda d: "SevpipeStageNotConsuming" in alerts_by_name(d),
    )
    (waiting,) = alerts_by_name(data)["SevpipeStageNotConsuming"]
    assert waiting["state"] == "pending"
    assert waiting["labels"]["stage"] == "comms"
    # The target is up: neither "down" nor "absent".
    assert not {"SevpipeDown", "SevpipeAbsent"} & set(alerts_by_name(data))


GRAFANA_VARIABLES: Final = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "10m",
    "$job": ".+",
}


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables given values, as Grafana sends it."""
    return re.sub(
        r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES.get("$" + m.group(1), m.group(0)), expr
    )


async def test_every_dashboard_query_is_answered_with_data(
    prometheus_with_rules: PrometheusServer,
) -> None:
    # Once a few scrapes are in (a rate needs two), every panel of the dashboard shows
    # something: its names, labels and PromQL agree with what sevpipe exports.
    await wait_for(prometheus_with_rules, "/api/v1/rules", evaluated)
    empty, refused = [], []
    for where, expr in dashboard_queries():
        query = as_promql(expr)
        assert "$" not in query, f"{where}: a Grafana variable without a test value: {expr}"
        if query.startswith("{"):  # a variable's selector: its series, not a query
            status, body = await api(prometheus_with_rules, "/api/v1/series", **{"match[]": query})
        else:
            status, body = await api(prometheus_with_rules, "/api/v1/query", query=query)
        if status != 200:
            refused.append(f"{where}: {status} {body.get('error')}: {query}")
        elif not (body["data"]["result"] if isinstance(body["data"], dict) else body["data"]):
            empty.append(f"{where}: {query}")
    assert not refused, "\n".join(refused)
    assert not empty, "no data for:\n" + "\n".join(empty)
