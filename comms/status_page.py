"""The built-in public status page: components, current incidents and 90 days of history.

Pure: incidents and routing in, a view out; the HTTP edge (``sevpipe.status_http``) reads the
store and serves it. Like the public message templates, the view holds only what sevpipe says
itself (the severity's public wording, configured component names, times), never alert text:
an incident's title, reasons, group key and labels come from whoever sends alerts, and a
status page is read by everyone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import jinja2
from pydantic import BaseModel, ConfigDict

from comms.render import PUBLIC_IMPACT
from comms.routing import Routing
from schemas.incidents import Incident
from schemas.severity import Severity

HISTORY: Final = timedelta(days=90)
TEMPLATE: Final = "public/status.html.j2"

ComponentStatus = Literal["operational", "degraded_performance", "partial_outage", "major_outage"]
PublicStatus = Literal["investigating", "resolved"]

_STATUS_OF: Final[dict[Severity, ComponentStatus]] = {
    "SEV-0": "major_outage",
    "SEV-1": "partial_outage",
    "SEV-2": "degraded_performance",
    "SEV-3": "degraded_performance",
}
_RANK: Final[dict[ComponentStatus, int]] = {
    "operational": 0,
    "degraded_performance": 1,
    "partial_outage": 2,
    "major_outage": 3,
}
LABELS: Final[dict[ComponentStatus, str]] = {
    "operational": "Operational",
    "degraded_performance": "Degraded performance",
    "partial_outage": "Partial outage",
    "major_outage": "Major outage",
}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ComponentState(_Model):
    name: str
    status: ComponentStatus


class PublicIncident(_Model):
    id: str
    title: str
    impact: str
    status: PublicStatus
    components: tuple[str, ...]
    started_at: datetime
    resolved_at: datetime | None


class StatusView(_Model):
    generated_at: datetime
    overall: ComponentStatus
    components: tuple[ComponentState, ...]
    current: tuple[PublicIncident, ...]
    history: tuple[PublicIncident, ...]

    @classmethod
    def build(cls, incidents: Sequence[Incident], routing: Routing, now: datetime) -> StatusView:
        shown = {sev for sev, routes in routing.severities.items() if "status_page" in routes}
        public = [i for i in incidents if i.severity in shown]
        open_ = sorted(
            (i for i in public if i.status == "open"), key=lambda i: i.opened_at, reverse=True
        )
        since = now - HISTORY
        resolved = sorted(
            (
                i
                for i in public
                if i.status == "resolved" and i.resolved_at is not None and i.resolved_at >= since
            ),
            key=lambda i: i.resolved_at or now,
            reverse=True,
        )
        worst: dict[str, ComponentStatus] = dict.fromkeys(
            routing.components.values(), "operational"
        )
        # Overall also counts an incident that names no configured component: "all systems
        # operational" above a current major outage would be wrong.
        overall: ComponentStatus = "operational"
        for inc in open_:
            status = _STATUS_OF[inc.severity]
            overall = _worse(overall, status)
            for name in routing.components_of(inc.key):
                worst[name] = _worse(worst[name], status)
        return cls(
            generated_at=now,
            overall=overall,
            components=tuple(ComponentState(name=n, status=worst[n]) for n in sorted(worst)),
            current=tuple(_public(i, routing) for i in open_),
            history=tuple(_public(i, routing) for i in resolved),
        )


def public_id(incident_id: str) -> str:
    """Stable per incident and opaque: the internal id (a key into the authenticated API)
    stays internal."""
    digest = hashlib.sha256(b"sevpipe-status-page\0" + incident_id.encode()).hexdigest()
    return digest[:12]


def _worse(a: ComponentStatus, b: ComponentStatus) -> ComponentStatus:
    return a if _RANK[a] >= _RANK[b] else b


def _public(inc: Incident, routing: Routing) -> PublicIncident:
    components = routing.components_of(inc.key)
    impact = PUBLIC_IMPACT[inc.severity]
    resolved = inc.status == "resolved"
    # The same wording as the public subject template, so page and messages agree.
    title = f"{'Resolved' if resolved else 'Investigating'}: {impact}"
    if components:
        title += f" affecting {', '.join(components)}"
    return PublicIncident(
        id=public_id(inc.id),
        title=title,
        impact=impact,
        status="resolved" if resolved else "investigating",
        components=components,
        started_at=inc.opened_at,
        resolved_at=inc.resolved_at if resolved else None,
    )


class StatusPageRenderer:
    """The page's HTML from ``public/status.html.j2``; a ``templates_dir`` replaces it as it
    replaces the message templates. The template sees the view only, so a replacement cannot
    reach alert text either."""

    def __init__(self, templates_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            loaders.append(jinja2.FileSystemLoader(templates_dir))
        loaders.append(jinja2.PackageLoader("comms", "templates"))
        env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["when"] = _when
        env.filters["label"] = LABELS.__getitem__
        # Loaded now, so a broken replacement fails at start rather than on the first visit.
        self._template = env.get_template(TEMPLATE)

    def html(self, view: StatusView) -> str:
        return self._template.render(view=view)


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if at else ""
