"""The classifier's commands: policy show, check-config (settings, policy or routing), rebuild,
backtest."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

import orjson
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from actions.inventory import load_inventory
from actions.playbooks import load_playbooks
from classifier.backtest import BacktestReport, backtest
from classifier.policy import Policy, PolicyError, default_policy, load_policy, policy_yaml
from classifier.rebuild import rebuild_store
from comms.render import Renderer
from comms.routing import Routing, load_routing
from schemas.yamlfile import ConfigFileError
from sevpipe.backends import open_eventlog, open_store
from sevpipe.comms_wiring import channels_of
from sevpipe.settings import Settings, SettingsError, load_settings

ROUTING_KEYS = frozenset(Routing.model_fields)
POLICY_KEYS = frozenset(Policy.model_fields)  # group_by, reopen_window, ... make a policy too


def show_policy(settings: Settings, out: TextIO) -> None:
    out.write(policy_yaml(settings.policy()))


def check_config(path: Path, out: TextIO) -> None:
    """Validate a policy file or a settings file (and the policy it names)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        data = None  # the loaders below report it with file and line
    if isinstance(data, dict) and set(data) == {"playbooks"}:
        try:
            load_playbooks(path)
        except ConfigFileError as exc:
            raise SettingsError(str(exc)) from None
        out.write(f"{path}: valid playbooks\n")
        return
    if isinstance(data, dict) and "namespaces" in data:
        try:
            load_inventory(path)
        except ConfigFileError as exc:
            raise SettingsError(str(exc)) from None
        out.write(f"{path}: valid inventory\n")
        return
    if isinstance(data, dict) and set(data) and set(data) <= ROUTING_KEYS:
        try:
            load_routing(path)
        except ConfigFileError as exc:
            raise SettingsError(str(exc)) from None
        out.write(f"{path}: valid routing\n")
        return
    if isinstance(data, dict) and POLICY_KEYS & set(data):
        try:
            load_policy(path)
        except (PolicyError, ConfigFileError) as exc:
            raise SettingsError(str(exc)) from None
        out.write(f"{path}: valid policy\n")
        return
    settings = load_settings(path)
    settings.policy()
    settings.credentials()
    settings.operator_tokens()
    settings.routing()
    settings.playbooks()
    settings.inventory()
    Renderer(settings.templates_dir).check()
    try:
        channels = channels_of(settings)  # reads the secret files; connects nowhere
    except (OSError, ValueError) as exc:
        raise SettingsError(f"comms: {exc}") from None
    what = f" (policy {settings.policy_file})" if settings.policy_file else ""
    what += f"; channels: {', '.join(sorted(channels))}"
    out.write(f"{path}: valid settings{what}\n")


async def rebuild(settings: Settings, out: TextIO) -> None:
    async with (
        open_eventlog(settings, create=False) as eventlog,
        open_store(settings) as store,
    ):
        count = await rebuild_store(store, eventlog)
    out.write(f"store rebuilt from {count} incident events\n")


async def run_backtest(
    settings: Settings,
    candidate_file: Path,
    *,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
    out: TextIO,
) -> None:
    try:
        candidate = load_policy(candidate_file)
    except (PolicyError, ConfigFileError) as exc:
        raise SettingsError(str(exc)) from None
    current = settings.policy() if settings.policy_file else default_policy()
    console = Console(file=sys.stderr)
    async with open_eventlog(settings, create=False) as eventlog:
        with Progress(
            SpinnerColumn(),
            TextColumn("replaying alerts: {task.completed:,}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task("backtest", total=None)
            report = await backtest(
                eventlog,
                current,
                candidate,
                since=since,
                until=until,
                on_progress=lambda n: progress.update(task, completed=n),
            )
    (_write_json if fmt == "json" else _write_table)(report, out)


def _write_json(report: BacktestReport, out: TextIO) -> None:
    body = {
        "alerts": report.alerts,
        "incidents": report.incidents,
        "changed": [
            {
                "incident_id": c.incident_id,
                "key": c.key,
                "title": c.title,
                "old": c.old,
                "new": c.new,
                "why": list(c.why),
            }
            for c in report.changed
        ],
        "only_old": report.only_old,
        "only_new": report.only_new,
    }
    out.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")


def _write_table(report: BacktestReport, out: TextIO) -> None:
    out.write(
        f"{report.alerts} alerts, {report.incidents} incidents; "
        f"{len(report.changed)} would change severity\n"
    )
    if report.changed:
        out.write(f"{'INCIDENT':<32} {'OLD':<6} {'NEW':<6} TITLE / WHY\n")
    for c in report.changed:
        out.write(f"{c.incident_id:<32} {c.old:<6} {c.new:<6} {c.title}\n")
        for why in c.why:
            out.write(f"{'':<46}{why}\n")
    if report.only_old or report.only_new:
        out.write(
            f"grouping differs: {report.only_old} incidents only under the current policy, "
            f"{report.only_new} only under the new one\n"
        )
