"""Which routes each severity reaches, how often open incidents are updated: a YAML file
checked at load like the policy (errors name the file and line); defaults are the runbook's.

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

A route whose channel is not configured goes to the console outbox instead, so the embedded
default shows what would have been sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    )
}


CHAT_ROUTES: Final = frozenset({"outbox", "incident_channel", "team_channel"})
"""The responders' own channels: where who acknowledged, who commands, and remediation news
(an approval waiting, an action's outcome) are said."""

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

    @model_validator(mode="after")
    def _every_severity(self) -> Routing:
        missing = [s for s in SEVERITIES if s not in self.severities]
        if missing:
            raise LocatedError(f"no routes for {', '.join(missing)} (write [] for none)", ())
        for sev, routes in self.severities.items():
            seen: set[str] = set()
            for i, name in enumerate(routes):
                if name in seen:
                    raise LocatedError(f"{name} is listed twice", (sev, i))
                seen.add(name)
        return self

    def routes(self, severity: Severity) -> tuple[Route, ...]:
        return tuple(ROUTES[name] for name in self.severities[severity])

    def components_of(self, key: str) -> tuple[str, ...]:
        """The components an incident's group key names (its label values, as configured)."""
        return tuple(name for value, name in self.components.items() if f'"{value}"' in key)


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
