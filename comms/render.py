"""Messages rendered from Jinja2 templates a team can replace, internal and public apart.

Internal templates (``internal/``) see the incident: its title and reasons come from alerts.
Public templates (``public/``: the status page, org-wide email) see only what sevpipe itself
says: the kind of message, the severity's public wording, the configured component names and
the times. No alert text can reach them, so an alert cannot put words on the status page.

Remediation news (``approval``, ``action``, ``task``) is internal only and has templates of
its own (``internal/approval.*.j2``, ``internal/action.*.j2``, ``internal/task.*.j2``): a team
that replaced the incident templates still tells its approvers what waits for them. A
``task`` (work a ``people.*`` action opened) is given ``task``, ``checklist``,
``more_checklist`` and ``task_reason`` besides what an action message is given.

Text templates are rendered without escaping (each channel escapes for its medium); HTML
templates autoescape. A directory given in settings is searched first, file by file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import jinja2

from comms.channel import Links, MessageKind
from schemas.actions import ActionEventData, Target
from schemas.incidents import Incident
from schemas.severity import Severity

PUBLIC_IMPACT: Final[dict[Severity, str]] = {
    "SEV-0": "a major outage",
    "SEV-1": "degraded service",
    "SEV-2": "a partial degradation",
    "SEV-3": "a minor issue",
}

ACTION_KINDS: Final[frozenset[MessageKind]] = frozenset({"approval", "action", "task"})
"""Kinds about a remediation action: internal, rendered from ``internal/<kind>.<name>``."""
MAX_ITEMS: Final = 20
"""Parameters and requests listed in a message about an action; the rest are counted."""
MAX_VALUE: Final = 300
"""Characters of one parameter, request body, result or reason in such a message."""
MAX_CHECKLIST: Final = 100
"""Items of a task's checklist listed; the rest are counted."""

_CONTROL = dict.fromkeys(range(32), " ")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class Context:
    """Everything a template may be given; public templates get only part of it."""

    kind: MessageKind
    incident: Incident
    links: Links
    components: tuple[str, ...] = ()
    previous_severity: Severity | None = None
    change: str = ""
    update_number: int = 0
    next_update: timedelta | None = None
    waited: timedelta | None = None
    action: ActionEventData | None = None
    """The remediation action an ``approval`` or ``action`` message is about."""
    now: datetime | None = None
    """When the message is decided (how long an approval has left)."""


class Renderer:
    def __init__(self, templates_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            loaders.append(jinja2.FileSystemLoader(templates_dir))
        loaders.append(jinja2.PackageLoader("comms", "templates"))
        loader = jinja2.ChoiceLoader(loaders)
        self._text = jinja2.Environment(
            loader=loader,
            autoescape=False,  # noqa: S701 - plain text; each channel escapes for its medium
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        self._html = jinja2.Environment(
            loader=loader, autoescape=True, undefined=jinja2.StrictUndefined
        )

    def check(self) -> None:
        """Load every template now, so a broken replacement fails at start, not mid-incident."""
        prefixes = ("internal/", "public/", *(f"internal/{k}." for k in sorted(ACTION_KINDS)))
        for prefix in prefixes:
            for name in ("subject.txt.j2", "body.txt.j2"):
                self._text.get_template(prefix + name)
            self._html.get_template(prefix + "body.html.j2")

    def render(self, ctx: Context, *, public: bool) -> Rendered:
        if ctx.kind in ACTION_KINDS:
            if public or ctx.action is None:
                raise ValueError(f"{ctx.kind} messages are internal, and need their action")
            # Beside the incident templates (the package ships templates/*/*.j2 only).
            prefix, values = f"internal/{ctx.kind}.", {**_internal(ctx), **_action(ctx)}
            if ctx.kind == "task":
                values.update(_task(ctx))
        else:
            prefix = "public/" if public else "internal/"
            values = _public(ctx) if public else _internal(ctx)
        subject = self._text.get_template(prefix + "subject.txt.j2").render(values)
        return Rendered(
            subject=subject.translate(_CONTROL).strip()[:250],
            text=self._text.get_template(prefix + "body.txt.j2").render(values).strip(),
            html=self._html.get_template(prefix + "body.html.j2").render(values).strip(),
        )


def _public(ctx: Context) -> dict[str, Any]:
    inc = ctx.incident
    return {
        "kind": ctx.kind,
        "severity": inc.severity,
        "status": inc.status,
        "impact": PUBLIC_IMPACT[inc.severity],
        "components": list(ctx.components),
        "opened_at": _when(inc.opened_at),
        "resolved_at": _when(inc.resolved_at) if inc.resolved_at else "",
        "next_update": _span(ctx.next_update),
    }


def _internal(ctx: Context) -> dict[str, Any]:
    inc = ctx.incident
    return {
        **_public(ctx),
        "incident_id": inc.id,
        "title": inc.title,
        "reasons": list(inc.reasons),
        "counts": inc.counts,
        "previous_severity": ctx.previous_severity or inc.severity,
        "change": ctx.change,
        "links": ctx.links,
        "update_number": ctx.update_number,
        "open_for": _span(ctx.update_number * ctx.next_update if ctx.next_update else None),
        "waited": _span(ctx.waited),
        "acknowledged_by": inc.acknowledged_by or "",
        "acknowledged_at": _when(inc.acknowledged_at),
        "commander": inc.commander or "",
    }


def _action(ctx: Context) -> dict[str, Any]:
    action = ctx.action
    assert action is not None  # noqa: S101 - render() checked
    expires = action.expires_at.astimezone(UTC) if action.expires_at else None
    left = expires - ctx.now if expires is not None and ctx.now is not None else None
    base = ctx.links.action
    return {
        "action_id": action.action_id,
        "action": action.action,
        "target": describe_target(action.target),
        "playbook": action.playbook,
        "step": action.step,
        "risk": action.risk,
        "mode": action.mode,
        "state": action.state,
        "dry_run": action.dry_run,
        "params": [(name, _json(v)) for name, v in sorted(action.params.items())[:MAX_ITEMS]],
        "more_params": max(0, len(action.params) - MAX_ITEMS),
        "requests": [
            {
                "method": r.method,
                "path": _cap(r.path),
                "body": "" if r.body is None else _json(r.body),
            }
            for r in action.requests[:MAX_ITEMS]
        ],
        "more_requests": max(0, len(action.requests) - MAX_ITEMS),
        "result": _json(action.result) if action.result else "",
        "reason": _cap(action.reason or ""),
        "actor": action.actor or "",
        "expires_at": _when(expires),
        "expires_time": expires.strftime("%H:%M UTC") if expires else "",
        "expires_in": _left(left),
        "expired_already": left is not None and left <= timedelta(0),
        "approve_url": f"{base}/approve" if base else "",
        "deny_url": f"{base}/deny" if base else "",
    }


def _task(ctx: Context) -> dict[str, Any]:
    """What a ``people.*`` action's outcome says is to be done."""
    action = ctx.action
    assert action is not None  # noqa: S101 - render() checked
    result = action.result
    items = result.get("checklist")
    checklist = [_cap(str(i)) for i in items] if isinstance(items, list) else []
    reason = action.params.get("reason", result.get("reason", ""))
    return {
        "task": _cap(
            str(result.get("task") or f"{action.action} on {describe_target(action.target)}")
        ),
        "checklist": checklist[:MAX_CHECKLIST],
        "more_checklist": max(0, len(checklist) - MAX_CHECKLIST),
        "task_reason": _cap(str(reason or "")),
    }


def describe_target(target: Target) -> str:
    """``Deployment origin-production/origin-backend``, ``Pods origin-production [app=x]``."""
    where = "/".join(p for p in (target.namespace, target.name) if p)
    labels = ",".join(f"{k}={v}" for k, v in sorted(target.selector.items()))
    return " ".join(p for p in (target.kind, where, f"[{labels}]" if labels else "") if p)


def _json(value: Any) -> str:
    return _cap(json.dumps(value, separators=(",", ":"), sort_keys=True, default=str))


def _cap(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _left(left: timedelta | None) -> str:
    if left is None or left <= timedelta(0):
        return ""
    return "under 1 min" if left < timedelta(minutes=1) else _span(left)


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else ""


def _span(span: timedelta | None) -> str:
    if span is None:
        return ""
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
