"""Alertmanager's webhook body, version 4, as any Alertmanager since 0.15 sends it.

Only ``status``, ``labels`` and ``alerts`` are required; unknown keys are ignored because
4xx answers are final for Alertmanager (an alert refused for an extra key is an alert lost).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF
_SEPARATOR = 0xFF

AlertStatus = Literal["firing", "resolved"]


def labels_fingerprint(labels: dict[str, str]) -> str:
    """Prometheus' label-set fingerprint, as Alertmanager >= 0.19 sends it.

    64-bit FNV-1a over the labels sorted by name, hashing name, 0xff, value, 0xff for each
    pair; printed as 16 lowercase hex digits. Used only when a body carries no fingerprint,
    so an older Alertmanager's alert gets the id a newer one would have sent.
    """
    h = FNV64_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                h = ((h ^ byte) * FNV64_PRIME) & _MASK64
            h = ((h ^ _SEPARATOR) * FNV64_PRIME) & _MASK64
    return f"{h:016x}"


def _zero_time_is_none(value: datetime | None) -> datetime | None:
    # Go's zero time.Time is how Alertmanager says "not set" (endsAt of a firing alert).
    if value is None or value.year <= 1:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past datetime.max in UTC
        raise ValueError("time out of range in UTC") from None


OptionalTime = Annotated[datetime | None, AfterValidator(_zero_time_is_none)]


class Alert(BaseModel):
    """One alert of a webhook body."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    status: AlertStatus = Field(description="firing or resolved, per alert")
    labels: dict[str, str] = Field(description="the alert's identifying label set")
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: OptionalTime = Field(
        default=None, alias="startsAt", description="RFC 3339; stored in UTC, microseconds"
    )
    ends_at: OptionalTime = Field(
        default=None,
        alias="endsAt",
        description="RFC 3339; 0001-01-01T00:00:00Z (still firing) becomes null",
    )
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str | None = Field(
        default=None, max_length=128, description="sent since Alertmanager 0.19"
    )

    @field_validator("fingerprint")
    @classmethod
    def _blank_fingerprint_is_none(cls, value: str | None) -> str | None:
        return value or None

    def effective_fingerprint(self) -> tuple[str, bool]:
        """The fingerprint sent, or the one computed from the labels; and whether computed."""
        if self.fingerprint:
            return self.fingerprint, False
        return labels_fingerprint(self.labels), True


class Webhook(BaseModel):
    """Alertmanager's webhook body (``version`` "4")."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    version: str | None = Field(default=None, description='"4" for every Alertmanager since 0.x')
    group_key: str | None = Field(default=None, alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: AlertStatus
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[Alert] = Field(min_length=1)

    def incident_group_key(self) -> str:
        """The body's groupKey, or one made like Alertmanager's from receiver and group labels."""
        if self.group_key:
            return self.group_key
        pairs = ",".join(f'{k}="{v}"' for k, v in sorted(self.group_labels.items()))
        return f"{{}}:{{{pairs}}}@{self.receiver}"
