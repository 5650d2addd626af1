"""Messages rendered from Jinja2 templates a team can replace, internal and public apart.

Internal templates (``internal/``) see the incident: its title and reasons come from alerts.
Public templates (``public/``: the status page, org-wide email) see only what sevpipe itself
says: the kind of message, the severity's public wording, the configured component names and
the times. No alert text can reach them, so an alert cannot put words on the status page.

Text templates are rendered without escaping (each channel escapes for its medium); HTML
templates autoescape. A directory given in settings is searched first, file by file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import jinja2

from comms.channel import Links, MessageKind
from schemas.incidents import Incident
from schemas.severity import Severity

PUBLIC_IMPACT: Final[dict[Severity, str]] = {
    "SEV-0": "a major outage",
    "SEV-1": "degraded service",
    "SEV-2": "a partial degradation",
    "SEV-3": "a minor issue",
}

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
        for side in ("internal", "public"):
            for name in ("subject.txt.j2", "body.txt.j2"):
                self._text.get_template(f"{side}/{name}")
            self._html.get_template(f"{side}/body.html.j2")

    def render(self, ctx: Context, *, public: bool) -> Rendered:
        side = "public" if public else "internal"
        values = _public(ctx) if public else _internal(ctx)
        subject = self._text.get_template(f"{side}/subject.txt.j2").render(values)
        return Rendered(
            subject=subject.translate(_CONTROL).strip()[:250],
            text=self._text.get_template(f"{side}/body.txt.j2").render(values).strip(),
            html=self._html.get_template(f"{side}/body.html.j2").render(values).strip(),
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


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else ""


def _span(span: timedelta | None) -> str:
    if span is None:
        return ""
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
