"""The Grafana dashboard and the alerting rules on sevpipe itself name only what sevpipe exports
(the metrics as ``metrics_support`` reads them from the code) and cover what an SRE team
watches. Syntax and evaluation by the real tools: tests/integration/test_watching_prometheus.py.
"""

from __future__ import annotations

from typing import Final

import yaml
from metrics_support import (
    PROMETHEUS_OWN,
    RULE_TESTS,
    RULES,
    dashboard,
    dashboard_queries,
    names_in,
    panels,
    problems,
    rules,
)

DATASOURCE: Final = "${datasource}"


# -- the dashboard -----------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "sevpipe"
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(board):
        assert isinstance(panel["id"], int)
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE}
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))


def test_the_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard()):
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["w"] > 0
        assert grid["h"] > 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = taken.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_dashboard_query_names_only_metrics_sevpipe_exports() -> None:
    wrong = [
        f"{where}: {problem}" for where, expr in dashboard_queries() for problem in problems(expr)
    ]
    assert not wrong, "\n".join(wrong)
    assert len(dashboard_queries()) >= 20


def test_the_dashboard_shows_what_the_sre_team_watches() -> None:
    used = set().union(*(names_in(expr) for _, expr in dashboard_queries()))
    for name in (
        "sevpipe_webhooks_received_total",  # ingest rate
        "sevpipe_eventlog_append_seconds_bucket",  # ingest latency
        "sevpipe_webhooks_rejected_total",  # 503s and rejections by reason
        "sevpipe_consumer_lag",  # lag by group
        "sevpipe_stage_ready",
        "sevpipe_deadletters_total",
        "sevpipe_incident_events_total",
        "sevpipe_actions_total",
        "sevpipe_notifications_total",
    ):
        assert name in used, name
    queries = [e for _, e in dashboard_queries()]
    by_sev = [e for e in queries if "sevpipe_incident_events_total" in e and "severity" in e]
    assert by_sev, "no panel shows incidents by SEV"


def test_the_checker_catches_what_sevpipe_does_not_export() -> None:
    # The check above must be able to fail: a typo, a foreign metric, a wrong suffix, a label
    # the metric lacks.
    assert problems('sum(rate(sevpipe_webhook_received_total{job=~"$job"}[5m]))')
    assert problems("rate(node_cpu_seconds_total[5m])")
    assert problems("sevpipe_consumer_lag_total")
    assert problems("sum by (le) (rate(sevpipe_stage_ready_bucket[5m]))")
    assert problems("sum by (reason) (rate(sevpipe_webhooks_received_total[5m]))")
    assert problems("up == 0")
    assert not problems("up == 0", allowed=PROMETHEUS_OWN)
    assert not problems(
        "histogram_quantile(0.99, sum by (stage, le) "
        '(rate(sevpipe_stage_batch_seconds_bucket{job=~"$job"}[$__rate_interval])))'
    )


# -- the alerting rules ------------------------------------------------------------------------


def test_every_rule_names_only_metrics_sevpipe_exports_and_up() -> None:
    wrong = [
        f"{rule['alert']}: {problem}"
        for rule in rules()
        for problem in problems(rule["expr"], allowed=PROMETHEUS_OWN)
    ]
    assert not wrong, "\n".join(wrong)


def test_every_rule_is_an_alert_with_a_severity_and_words() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["alert"].startswith("Sevpipe")
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["labels"]["service"] == "sevpipe", rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_the_rules_watch_what_the_issue_asks() -> None:
    used = set().union(*(names_in(rule["expr"]) for rule in rules()))
    for name in (
        "sevpipe_webhooks_rejected_total",  # receiver 503s and rejections
        "sevpipe_consumer_lag",  # lag high and growing
        "sevpipe_deadletters_total",  # dead letters appearing
        "sevpipe_stage_ready",  # a stage down
        "up",  # a process down
        "sevpipe_actions_total",  # actions failing
        "sevpipe_notifications_total",  # notifications failing
    ):
        assert name in used, name


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in rules()}
