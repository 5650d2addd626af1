"""Which incident an alert belongs to: its group key under the policy."""

from __future__ import annotations

from classifier.policy import Policy
from schemas import AlertEventData


def incident_key(data: AlertEventData, policy: Policy) -> str:
    """The webhook's groupKey, or the policy's ``group_by`` labels (missing ones as "")."""
    if not policy.group_by:
        return data.group.group_key
    return "{" + ",".join(f'{n}="{data.labels.get(n, "")}"' for n in policy.group_by) + "}"
