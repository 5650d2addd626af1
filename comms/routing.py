"""Which routes each severity reaches (and, by the impact of an incident's alerts, which
more), how often open incidents are updated: a YAML file checked at load like the policy
(errors name the file and line); defaults are the runbook's.

A route is one of a fixed set, each a channel and an audience:

| route              | channel    | audience   | text     |
|--------------------|------------|------------|----------|
| outbox             | console    | team       | internal |
| incident_channel   | slack      | team       | internal |
| team_channel       | slack      | team       | internal |
| team_email         | email      | team       | internal |
| leadership_email   | email      | leadership | internal |
| org_email          | email      | org        | public   |
| support_email      | email      | support    | public   |
| status_page        | statuspage | public     | public   |
| security_channel   | slack      | security   | internal |
| security_email     | email      | security   | internal |

``severities`` gives each severity its routes. ``impact_routes`` adds routes to a severity's
for an incident with an impact among its alerts (what the classification matched, or the
alerts' ``impact`` label; see ``comms.impacts``); a route both give is used once:

    impact_routes:
      SEV-0: {security_breach: [security_channel, security_email]}

The status page is chosen by severity only (it shows which severities are public), so it
cannot be an impact route.

A route whose channel is not configured goes to the console outbox instead, so the embedded
default shows what would have been sent.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from comms.channel import Audience
from schemas.durations import Duration
from schemas.severity import SEVERITIES, Severity
from schemas.yamlfile import ConfigFileError, LocatedError, YamlDocument, describe

RouteName = Literal[
    "outbox",
    "incident_channel",
    "team_channel",
    "team_email",
    "leadership_email",
    "org_email",
    "support_email",
    "status_page",
    "security_channel",
    "security_email",
]


@dataclass(frozen=True)
class Route:
    name: RouteName
    channel: Literal["console", "slack", "email", "statuspage"]
    audience: Audience
    public: bool
    threaded: bool
    """Later messages of an incident follow its first on this route (a Slack thread, the
    same Statuspage incident, an email In-Reply-To)."""


ROUTES: Final[dict[str, Route]] = {
    r.name: r
    for r in (
        Route("outbox", "console", "team", public=False, threaded=False),
        Route("incident_channel", "slack", "team", public=False, threaded=True),
        Route("team_channel", "slack", "team", public=False, threaded=True),
        Route("team_email", "email", "team", public=False, threaded=True),
        Route("leadership_email", "email", "leadership", public=False, threaded=True),
        Route("org_email", "email", "org", public=True, threaded=True),
        Route("support_email", "email", "support", public=True, threaded=True),
        Route("status_page", "statuspage", "public", public=True, threaded=True),
        Route("security_channel", "slack", "security", public=False, threaded=True),
        Route("security_email", "email", "security", public=False, threaded=True),
    )
}


CHAT_ROUTES: Final = frozenset({"outbox", "incident_channel", "team_channel", "security_channel"})
"""The responders' own channels: where who acknowledged, who commands, and remediation news
(an approval waiting, an action's outcome) are said."""
TASK_ROUTES: Final = CHAT_ROUTES | {"security_email"}
"""Where a task for people (``task``: credentials to rotate) is said: the chat routes, and
the security team's mail."""
SEVERITY_ONLY: Final = frozenset({"status_page"})
"""Routes ``impact_routes`` may not add (see the module doc)."""

_IMPACT_NAME = re.compile(r"[a-z0-9_]+")


def _impact_name(value: str) -> str:
    """As the policy writes impacts: lower case, ``_`` for ``-`` and spaces."""
    normal = value.strip().lower().replace("-", "_").replace(" ", "_")
    if not _IMPACT_NAME.fullmatch(normal):
        raise ValueError(f"impact {value!r} is not an impact name (a-z, 0-9 and _)")
    if normal != value:
        raise ValueError(f"write impact {value!r} as {normal!r}")
    return value


ImpactName = Annotated[str, AfterValidator(_impact_name)]

DEFAULT_ROUTES: Final[dict[Severity, tuple[RouteName, ...]]] = {
    "SEV-0": ("incident_channel", "team_email", "leadership_email", "org_email", "status_page"),
    "SEV-1": ("incident_channel", "leadership_email", "status_page"),
    "SEV-2": ("team_channel",),
    "SEV-3": ("outbox",),
}
"""The runbook's: who hears about an incident of each severity."""


class RoutingError(ConfigFileError):
    """A routing file that cannot be used; the message names the file and line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cadence(_Model):
    """Updates while an incident of ``severities`` is open (the runbook: 15 and 30 minutes)."""

    severities: tuple[Severity, ...] = ("SEV-0", "SEV-1")
    channel_every: Duration = Field(timedelta(minutes=15), description="incident_channel")
    leadership_every: Duration = Field(timedelta(minutes=30), description="leadership_email")

    @model_validator(mode="after")
    def _positive(self) -> Cadence:
        for name in ("channel_every", "leadership_every"):
            if getattr(self, name) <= timedelta(0):
                raise LocatedError("must be longer than 0s", (name,))
        return self


class Routing(_Model):
    severities: dict[Severity, tuple[RouteName, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_ROUTES)
    )
    cadence: Cadence = Field(default_factory=Cadence)
    acknowledge_within: Duration = Field(
        timedelta(minutes=5),
        description="an open incident of the cadence's severities nobody acknowledged by then "
        "is told to leadership",
    )
    components: dict[str, str] = Field(
        default_factory=dict,
        description="label value in an incident's group key -> component name (status pages)",
    )
    runbook_url: str = ""
    impact_routes: dict[Severity, dict[ImpactName, tuple[RouteName, ...]]] = Field(
        default_factory=dict,
        description="severity -> impact -> routes an incident with that impact also reaches",
    )

    @model_validator(mode="after")
    def _every_severity(self) -> Routing:
        missing = [s for s in SEVERITIES if s not in self.severities]
        if missing:
            raise LocatedError(f"no routes for {', '.join(missing)} (write [] for none)", ())
        for sev, routes in self.severities.items():
            _once_each(routes, ("severities", sev))
        for sev, by_impact in self.impact_routes.items():
            for impact, routes in by_impact.items():
                where = ("impact_routes", sev, impact)
                _once_each(routes, where)
                for i, name in enumerate(routes):
                    if name in SEVERITY_ONLY:
                        raise LocatedError(
                            f"{name} is chosen by severity only, not by impact", (*where, i)
                        )
        return self

    def routes(self, severity: Severity, impacts: Collection[str] = ()) -> tuple[Route, ...]:
        """The severity's routes, then those its ``impact_routes`` add for ``impacts``."""
        names = list(self.severities[severity])
        for impact, more in self.impact_routes.get(severity, {}).items():
            if impact in impacts:
                names += [name for name in more if name not in names]
        return tuple(ROUTES[name] for name in names)

    def routed_impacts(self, severity: Severity) -> frozenset[str]:
        """The impacts that add routes to ``severity``'s (empty: the impact changes nothing)."""
        return frozenset(i for i, more in self.impact_routes.get(severity, {}).items() if more)

    def components_of(self, key: str) -> tuple[str, ...]:
        """The components an incident's group key names (its label values, as configured)."""
        return tuple(name for value, name in self.components.items() if f'"{value}"' in key)


def _once_each(routes: tuple[str, ...], where: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(routes):
        if name in seen:
            raise LocatedError(f"{name} is listed twice", (*where, i))
        seen.add(name)


def load_routing(path: Path | str) -> Routing:
    try:
        doc = YamlDocument(Path(path))
    except ConfigFileError as exc:
        raise RoutingError(str(exc)) from None
    try:
        return Routing.model_validate(doc.data)
    except ValidationError as exc:
        raise RoutingError(describe(exc, doc, (Routing, Cadence), "routing")) from None


def default_routing() -> Routing:
    """The routing shipped as ``comms/default_routing.yaml`` (the runbook's)."""
    with resources.as_file(resources.files("comms") / "default_routing.yaml") as path:
        return load_routing(path)
