"""What comms knows of an incident's impacts (for ``Routing.impact_routes``).

An incident does not carry its impacts (``schemas.incidents.Incident`` has none): comms reads
them where the classifier left them.

- The reasons, the incident's and each alert's: a classification that matched an impact says
  so first in its reason, ``impact security_breach`` (``impact (category) security_breach``
  when the policy reads the impact from another key), behind the alert's name in the
  incident's (``BreachDetected: impact security_breach``). That is the impact the policy
  knows, normalised. A person's reason (``set by alice: ...``) and "no rule matched" are not
  read.
- The alerts' ``impact`` label, normalised as the policy and the playbooks compare it.

The alerts are those an incident event carries (the ones that changed) and, when those and
the incident's reasons do not already show every impact the routing asks about, the first
``ALERTS_READ`` of the incident's alerts in the store: an incident opened by an outage that a
security alert joined later has the outage's reasons, and its event after that (resolved, an
action's news) may not carry the security alert.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from comms.routing import Route, Routing
from schemas.incidents import Incident, IncidentAlert
from store import IncidentStore

IMPACT_LABEL: Final = "impact"
ALERTS_READ: Final = 200
_REASON = re.compile(r"^(?:\S+: )?impact(?: \([^)]*\))? ([a-z0-9_]+)(?: and |$)")


def normalise_impact(value: str) -> str:
    """As the policy compares impacts: "Security-Breach " is security_breach."""
    return value.strip().lower().replace("-", "_").replace(" ", "_")


def impacts_of(reasons: Iterable[str], alerts: Iterable[IncidentAlert] = ()) -> frozenset[str]:
    """The impacts REASONS and ALERTS show (see the module doc). Pure."""
    found: set[str] = set()
    for reason in reasons:
        matched = _REASON.match(reason)
        if matched:
            found.add(matched[1])
    for alert in alerts:
        for reason in alert.reasons:
            matched = _REASON.match(reason)
            if matched:
                found.add(matched[1])
        label = alert.labels.get(IMPACT_LABEL)
        if label and label.strip():
            found.add(normalise_impact(label))
    return frozenset(found)


async def incident_routes(
    routing: Routing,
    store: IncidentStore,
    incident: Incident,
    alerts: Sequence[IncidentAlert] = (),
) -> tuple[Route, ...]:
    """The routes of INCIDENT: its severity's, and those its impacts add. The store is read
    only when the severity has impact routes that the incident's reasons and ALERTS (those
    its event carries) do not already settle."""
    wanted = routing.routed_impacts(incident.severity)
    if not wanted:
        return routing.routes(incident.severity)
    found = impacts_of(incident.reasons, alerts)
    if not wanted <= found:
        stored = await store.list_alerts(incident.id, limit=ALERTS_READ)
        found |= impacts_of((), stored)
    return routing.routes(incident.severity, found)
