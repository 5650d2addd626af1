"""The severity policy: which alert inputs decide a SEV, as a YAML file checked at load time.

The model's defaults are the runbook's table (DESIGN.md, "Severity policy");
``default_policy.yaml`` next to this module spells the same policy out with comments.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from classifier.compiled import CompiledPolicy, compile_policy, normalise_impact
from schemas.durations import Duration
from schemas.severity import Severity
from schemas.yamlfile import ConfigFileError, LocatedError, YamlDocument, describe

RESERVED_RULE_NAMES: Final = frozenset({"fallback", "unmatched"})


class PolicyError(ConfigFileError):
    """A policy file that cannot be used; the message names the file and line."""


def _impact_name(value: str) -> str:
    if normalise_impact(value) != value:
        raise ValueError(f"write impact {value!r} as {normalise_impact(value)!r}")
    return value


def _plain_number(value: float) -> float | int:
    # 90 reads better than 90.0 in `sevpipe policy show`; it loads back as the same float.
    return int(value) if value.is_integer() else value


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
ImpactName = Annotated[str, StringConstraints(min_length=1), AfterValidator(_impact_name)]
Threshold = Annotated[
    float,
    Field(strict=True, allow_inf_nan=False),
    PlainSerializer(_plain_number, when_used="json"),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Inputs(_Model):
    """Alert label/annotation names each input is read from, labels first, then annotations."""

    impact: tuple[Name, ...] = ("impact",)
    user_impact_pct: tuple[Name, ...] = ("user_impact_pct",)
    revenue_impact_usd_per_hour: tuple[Name, ...] = ("revenue_impact_usd_per_hour",)
    severity: tuple[Name, ...] = Field(
        ("severity",), description="Alertmanager's severity label, read only by the fallback"
    )

    @model_validator(mode="after")
    def _names_are_distinct(self) -> Inputs:
        owner: dict[str, str] = {}
        for field in type(self).model_fields:
            for i, name in enumerate(getattr(self, field)):
                if name in owner:
                    raise LocatedError(f"{name!r} is already read as {owner[name]}", (field, i))
                owner[name] = field
        return self


class Range(_Model):
    """A numeric criterion: ``above`` is strict (>), ``at_most`` inclusive (<=)."""

    above: Threshold | None = None
    at_most: Threshold | None = None

    @model_validator(mode="after")
    def _is_a_range(self) -> Range:
        if self.above is None and self.at_most is None:
            raise ValueError("give above, at_most or both")
        if self.above is not None and self.at_most is not None and self.above >= self.at_most:
            above, at_most = _plain_number(self.above), _plain_number(self.at_most)
            raise ValueError(f"empty range: above {above} and at_most {at_most}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class Condition(_Model):
    """Holds when every criterion given holds."""

    impact: tuple[ImpactName, ...] | None = Field(None, min_length=1, description="one of these")
    no_impact: bool = Field(False, strict=True, description="the alert gives no impact")
    user_impact_pct: Range | None = None
    revenue_impact_usd_per_hour: Range | None = None

    @model_validator(mode="after")
    def _is_consistent(self) -> Condition:
        criteria = (self.impact, self.user_impact_pct, self.revenue_impact_usd_per_hour)
        if not self.no_impact and all(c is None for c in criteria):
            raise ValueError(
                "a condition needs impact, no_impact, user_impact_pct or "
                "revenue_impact_usd_per_hour"
            )
        if self.impact is not None and self.no_impact:
            raise ValueError("impact and no_impact: true can never both hold")
        pct = self.user_impact_pct
        for bound in ("above", "at_most"):
            value = getattr(pct, bound) if pct is not None else None
            if value is not None and not 0 <= value <= 100:
                raise LocatedError(
                    "a percentage threshold must be within 0..100", ("user_impact_pct", bound)
                )
        return self

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None and v is not False}


class Rule(_Model):
    name: Name = Field(description='reported as the Classification\'s "rule"')
    severity: Severity
    when: tuple[Condition, ...] = Field(description="any one of these")

    @field_validator("when", mode="after")
    @classmethod
    def _not_empty(cls, value: tuple[Condition, ...]) -> tuple[Condition, ...]:
        # Checked here, not with min_length: that also fires when an item was invalid.
        if not value:
            raise ValueError("a rule needs at least one condition")
        return value


def _default_severity_labels() -> dict[str, Severity]:
    return {"critical": "SEV-1", "warning": "SEV-2", "error": "SEV-2"}


class Fallback(_Model):
    """For alerts that give none of impact, users or revenue: Alertmanager's severity label."""

    severity_label: dict[str, Severity] = Field(
        default_factory=_default_severity_labels,
        description="label value (any case) -> SEV",
    )
    otherwise: Severity = Field("SEV-3", description="no severity label, or another value")

    @field_validator("severity_label")
    @classmethod
    def _lower_case_values(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        out = {k.strip().lower(): v for k, v in value.items()}
        if "" in out:
            raise ValueError("a severity label value must not be blank")
        return out


DEFAULT_IMPACTS: Final[tuple[str, ...]] = (
    *("outage", "data_loss", "security_breach", "feature_degraded", "performance"),
    *("db_connectivity", "cdn_failure", "lb_failure", "partial_degradation"),
    *("service_failure", "error_rate", "minor", "single_user", "documentation", "cosmetic"),
)


def _default_rules() -> tuple[Rule, ...]:
    def impact(*names: str) -> Condition:
        return Condition(impact=names)

    def pct(above: float, at_most: float | None = None, no_impact: bool = False) -> Condition:
        return Condition(user_impact_pct=Range(above=above, at_most=at_most), no_impact=no_impact)

    revenue = Condition(revenue_impact_usd_per_hour=Range(above=10000))
    return (
        Rule(
            name="sev0",
            severity="SEV-0",
            when=(impact("outage", "data_loss", "security_breach"), revenue, pct(90)),
        ),
        Rule(
            name="sev1",
            severity="SEV-1",
            when=(
                impact("feature_degraded", "db_connectivity", "cdn_failure", "lb_failure"),
                pct(50),
            ),
        ),
        Rule(
            name="sev2",
            severity="SEV-2",
            when=(
                impact("partial_degradation", "service_failure", "error_rate", "performance"),
                pct(0, 50, no_impact=True),
            ),
        ),
        Rule(
            name="sev3",
            severity="SEV-3",
            when=(impact("minor", "single_user", "documentation", "cosmetic"),),
        ),
    )


class Policy(_Model):
    """A severity policy plus the incident lifecycle settings that go with it."""

    inputs: Inputs = Field(default_factory=Inputs)
    impacts: tuple[ImpactName, ...] = Field(
        DEFAULT_IMPACTS, description="the impact categories alerts may name"
    )
    rules: tuple[Rule, ...] = Field(
        default_factory=_default_rules, description="tried in order; the first match wins"
    )
    unmatched: Severity = Field("SEV-3", description="inputs given, but no rule matched")
    fallback: Fallback = Field(default_factory=Fallback)
    group_by: tuple[Name, ...] = Field(
        (), description="labels making one incident; empty: groupKey"
    )
    reopen_window: Duration = Field(
        timedelta(hours=1), description="a group firing again this soon after resolving reopens"
    )
    resolve_grace: Duration = Field(
        timedelta(0), description="an incident stays open this long after its last alert resolves"
    )

    @model_validator(mode="after")
    def _names_are_known(self) -> Policy:
        known = set(self.impacts)
        if len(known) != len(self.impacts):
            dup = next(i for i, v in enumerate(self.impacts) if v in self.impacts[:i])
            raise LocatedError(f"impact {self.impacts[dup]!r} is listed twice", ("impacts", dup))
        seen: set[str] = set()
        for r, rule in enumerate(self.rules):
            if rule.name in RESERVED_RULE_NAMES or rule.name in seen:
                what = "reserved" if rule.name in RESERVED_RULE_NAMES else "used twice"
                raise LocatedError(f"rule name {rule.name!r} is {what}", ("rules", r, "name"))
            seen.add(rule.name)
            for c, cond in enumerate(rule.when):
                for i, name in enumerate(cond.impact or ()):
                    if name not in known:
                        raise LocatedError(
                            f"unknown impact {name!r} (not in impacts)",
                            ("rules", r, "when", c, "impact", i),
                        )
        return self

    @functools.cached_property
    def compiled(self) -> CompiledPolicy:
        """The classifier's view of the policy, built on first use."""
        return compile_policy(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        # The copy may have other rules or inputs (model_copy does not validate): compile afresh.
        copy.__dict__.pop("compiled", None)
        return copy


def load_policy(path: Path | str) -> Policy:
    """Read and check a policy file; missing keys take the defaults (the runbook's)."""
    try:
        doc = YamlDocument(Path(path))
    except ConfigFileError as exc:
        raise PolicyError(str(exc)) from None
    try:
        return Policy.model_validate(doc.data)
    except ValidationError as exc:
        raise PolicyError(_describe(exc, doc)) from None


def default_policy() -> Policy:
    """The policy shipped as ``classifier/default_policy.yaml`` (the runbook's table)."""
    with resources.as_file(resources.files("classifier") / "default_policy.yaml") as path:
        return load_policy(path)


def policy_yaml(policy: Policy) -> str:
    """The policy as YAML that ``load_policy`` reads back to an equal policy."""
    data = policy.model_dump(mode="json")
    return yaml.safe_dump(
        data, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True
    )


def _describe(exc: ValidationError, doc: YamlDocument) -> str:
    return describe(exc, doc, (Policy, Inputs, Rule, Condition, Range, Fallback), "policy")
