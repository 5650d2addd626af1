"""What sevpipe exports to Prometheus, read from the code, and the names a PromQL query uses.

``exported()`` instantiates every part's metrics on a fresh ``CollectorRegistry`` (as the
processes do on theirs) and reads back each metric's name, type and labels.
``declared_in_source()`` finds every prometheus_client constructor call in sevpipe's packages:
a metric whose owner ``exported()`` does not instantiate yet shows up there, so the tests
that hold the README, the Grafana dashboard and the alerting rules to the code cannot miss it.

``dashboard_queries()`` and ``rules()`` read the PromQL of deploy/grafana/sevpipe.json and
deploy/prometheus/sevpipe-rules.yml. ``names_in(expr)`` and ``labels_in(expr)`` read the
metric and label names a PromQL expression uses (Grafana's ``$variables`` allowed), without a
PromQL parser: strings, durations and label lists are taken out, and what is left that is not
a function, keyword or number is a metric name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import orjson
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from actions.stage import ActionsMetrics
from classifier.stage import ClassifierMetrics
from comms.stage import CommsMetrics
from eventlog import GroupLag
from ingest.metrics import ReceiverMetrics
from runtime.metrics import StageMetrics
from schemas import TOPIC_ALERTS
from sevpipe.backpressure import Backpressure, LagWatch
from sevpipe.http import ConsumerLagCollector

ROOT: Final = Path(__file__).resolve().parent.parent
DASHBOARD: Final = ROOT / "deploy" / "grafana" / "sevpipe.json"
RULES: Final = ROOT / "deploy" / "prometheus" / "sevpipe-rules.yml"
RULE_TESTS: Final = ROOT / "deploy" / "prometheus" / "sevpipe-rules.test.yml"
PACKAGES: Final = (
    "schemas",
    "eventlog",
    "store",
    "runtime",
    "ingest",
    "classifier",
    "actions",
    "comms",
    "sevpipe",
)
SUFFIXES: Final = {
    # The series a scrape shows for each type (prometheus_client adds ``_created``).
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
PROMETHEUS_OWN: Final = frozenset({"up"})
"""What Prometheus adds to every scrape target itself, which rules may use."""
ALWAYS_LABELS: Final = frozenset({"job", "instance", "__name__"})
"""Labels every scraped series has (the target's), whatever the metric."""


@dataclass(frozen=True)
class Exported:
    """One metric as a scrape shows it."""

    name: str
    """As the README and queries name it: a counter with its ``_total``."""
    type: str
    labels: tuple[str, ...]

    @property
    def base(self) -> str:
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    @property
    def series(self) -> frozenset[str]:
        """The names of the series a scrape shows for it."""
        return frozenset(self.base + suffix for suffix in SUFFIXES[self.type])

    @property
    def series_labels(self) -> frozenset[str]:
        extra = {"le"} if self.type == "histogram" else set()
        return frozenset(self.labels) | extra


async def _no_lag() -> GroupLag:
    return GroupLag(0, 0)


@dataclass
class Parts:
    """Every part's metrics on one registry, made as the processes make them."""

    receiver: ReceiverMetrics
    classifier: ClassifierMetrics
    stages: StageMetrics
    comms: CommsMetrics
    actions: ActionsMetrics
    backpressure: Backpressure
    lag_watch: LagWatch
    consumer_lag: ConsumerLagCollector
    lag: dict[tuple[str, int], int]
    """What ``consumer_lag`` reports (group ``sevpipe-classifier``); change it at will."""

    @classmethod
    def on(cls, registry: CollectorRegistry) -> Parts:
        lag = {(TOPIC_ALERTS, 0): 0}
        consumer_lag = ConsumerLagCollector("sevpipe-classifier", lambda: lag)
        registry.register(consumer_lag)
        return cls(
            receiver=ReceiverMetrics(registry),
            classifier=ClassifierMetrics(registry),
            stages=StageMetrics.of(registry),
            comms=CommsMetrics(registry),
            actions=ActionsMetrics(registry),
            backpressure=Backpressure(lambda: 0, registry, limit=1, timeout=1.0),
            lag_watch=LagWatch(_no_lag, registry),
            consumer_lag=consumer_lag,
            lag=lag,
        )

    def labels(self) -> dict[str, tuple[str, ...]]:
        """Label names by family name: a wrapper's own, the custom collector's from its
        samples (it reports the lag it is given)."""
        found: dict[str, tuple[str, ...]] = {}
        for family in self.consumer_lag.collect():
            for sample in family.samples:
                found[family.name] = tuple(sample.labels)
        for part in vars(self).values():
            for value in getattr(part, "__dict__", {}).values():
                if isinstance(value, MetricWrapperBase):
                    found[value._name] = tuple(value._labelnames)
        return found


@cache
def exported() -> dict[str, Exported]:
    """Every ``sevpipe_*`` metric the code registers, by name."""
    registry = CollectorRegistry()
    labels = Parts.on(registry).labels()
    out: dict[str, Exported] = {}
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = Exported(name, family.type, labels.get(family.name, ()))
    return out


def series_names() -> frozenset[str]:
    """Every series name a scrape of sevpipe shows."""
    return frozenset().union(*(m.series for m in exported().values()))


def metric_of_series(name: str) -> Exported | None:
    """The metric a series name belongs to (``x_bucket`` -> ``x``), if it is sevpipe's."""
    for metric in exported().values():
        if name in metric.series:
            return metric
    return None


# -- the dashboard and the rules ---------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return loaded


def panels(within: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in within.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found = []
    board = dashboard()
    for panel in panels(board):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']}", grafana_query(text)))
    return found


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


# -- every constructor call in the source ------------------------------------------------------

_NAME_ARGS: Final = {
    # constructor -> how a scrape names the metric it is given
    "Counter": "_total",
    "CounterMetricFamily": "_total",
    "Gauge": "",
    "GaugeMetricFamily": "",
    "Histogram": "",
    "HistogramMetricFamily": "",
    "GaugeHistogramMetricFamily": "",
    "Summary": "",
    "SummaryMetricFamily": "",
    "Info": "_info",
    "InfoMetricFamily": "_info",
    "Enum": "",
    "StateSetMetricFamily": "",
    "UnknownMetricFamily": "",
}


def _prometheus_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> constructor, for the constructors a module imports from prometheus_client."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client"):
            for alias in node.names:
                if alias.name in _NAME_ARGS:
                    found[alias.asname or alias.name] = alias.name
    return found


def _calls(tree: ast.Module, names: dict[str, str]) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:
            yield node, names[func.id]
        elif isinstance(func, ast.Attribute) and func.attr in _NAME_ARGS:
            # prometheus_client.Counter(...), core.GaugeMetricFamily(...)
            root = func.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in {"prometheus_client", "core"}:
                yield node, func.attr


def declared_in_source() -> dict[str, str]:
    """Scraped metric name -> ``file:line`` of each prometheus_client constructor call in
    sevpipe's packages. A name that is not a literal is listed as ``<dynamic>`` so that a test
    notices it."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            names = _prometheus_names(tree)
            for call, constructor in _calls(tree, names):
                arg: ast.expr | None = call.args[0] if call.args else None
                for keyword in call.keywords:
                    if keyword.arg == "name":
                        arg = keyword.value
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    suffix = _NAME_ARGS[constructor]
                    name = arg.value
                    found[name if name.endswith(suffix) else name + suffix] = where
                else:
                    found[f"<dynamic> {where}"] = where
    return found


# -- PromQL ----------------------------------------------------------------------------------

_STRINGS: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLES: Final = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS: Final = re.compile(r"\{([^{}]*)\}")
_RANGES: Final = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS: Final = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)"
)
_OFFSETS: Final = re.compile(r"\boffset\s+-?\w+")
_AT: Final = re.compile(r"@\s*(?:start\s*\(\s*\)|end\s*\(\s*\)|[0-9.]+)")
_TOKENS: Final = re.compile(
    r"(?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)
_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left"}
    | {"group_right", "offset", "inf", "nan"}
)
_LABEL_VALUES: Final = re.compile(r"^\s*label_values\s*\((?:(.*),)?\s*(\w+)\s*\)\s*$", re.S)
_MATCHER_LABEL: Final = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_NAME_MATCHER: Final = re.compile(r'__name__\s*=~?\s*"((?:[^"\\]|\\.)*)"')
_METRIC_NAME: Final = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _without_strings(expr: str) -> str:
    """``expr`` with every string emptied and Grafana's variables outside them made ``1``."""
    return _VARIABLES.sub("1", _STRINGS.sub('""', expr))


def grafana_query(query: str) -> str:
    """A Grafana variable query as PromQL: ``label_values(selector, label)`` -> selector."""
    found = _LABEL_VALUES.match(query)
    if found is None:
        return query
    return found.group(1) or ""


def names_in(expr: str) -> set[str]:
    """The metric names ``expr`` selects. A ``__name__`` matcher names metrics too: each of
    ``"a|b"``; a pattern that is more than names is returned whole (and names nothing
    sevpipe exports)."""
    names = set()
    for value in _NAME_MATCHER.findall(expr):
        alternatives = value.split("|")
        if all(_METRIC_NAME.fullmatch(a) for a in alternatives):
            names |= set(alternatives)
        else:
            names.add(value)
    text = _without_strings(expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _OFFSETS.sub(" ", text)
    text = _AT.sub(" ", text)
    for token in _TOKENS.finditer(text):
        ident = token.group("ident")
        if ident is None or token.group("call") or ident.lower() in _KEYWORDS:
            continue
        names.add(ident)
    return names


def labels_in(expr: str) -> set[str]:
    """The label names ``expr`` matches on, groups by or joins on."""
    text = _without_strings(expr)
    labels = set()
    for matchers in _MATCHERS.findall(text):
        labels |= set(_MATCHER_LABEL.findall(matchers))
    for listed in _LABEL_LISTS.findall(text):
        labels |= {label.strip() for label in listed.split(",") if label.strip()}
    return labels


def problems(expr: str, *, allowed: frozenset[str] = frozenset()) -> list[str]:
    """What is wrong with ``expr``: names that are not series sevpipe exports (nor
    ``allowed``), labels that none of its metrics has. Empty when it is fine."""
    out: list[str] = []
    names = names_in(expr)
    if not names:
        out.append("names no metric")
    labels = set(ALWAYS_LABELS)
    for name in sorted(names):
        metric = metric_of_series(name)
        if metric is not None:
            labels |= metric.series_labels
        elif name not in allowed:
            out.append(f"{name} is not a series sevpipe exports")
    unknown = labels_in(expr) - labels
    if unknown:
        out.append(f"labels {sorted(unknown)} are on none of {sorted(names)}")
    return out
