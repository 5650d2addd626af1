"""Playbooks: which steps an incident gets, as a YAML file checked at load (errors name the file
and line, like the policy). ``default_playbooks.yaml`` holds the runbook's SEV-0/SEV-1
Kubernetes procedures.

Matching (``Match``): a playbook matches an open incident when

1. the incident's severity is at least ``min_severity`` (SEV-0 is the most severe), and
2. no criterion is given, or ANY one of the given criteria holds for ANY firing alert:
   - ``impacts``: the alert's ``impact`` label (compared in lower case, ``-`` and spaces read
     as ``_``, as the policy does) is one of these;
   - ``alertnames``: the alert's name is one of these (exactly);
   - ``labels``: the alert carries every one of these labels with these values.

Playbooks are tried in file order and the FIRST match wins (like the policy's rules), so put
the specific before the general. A resolved incident plans nothing.

A step runs its ``action`` (a catalogue name) with ``params`` on its ``target`` (an inventory
target, see ``actions.inventory``) in ``mode`` ``auto``, ``approve`` (waits for a person) or
``never`` (planned and reported, never run). ``when: {step: ID, FIELD: VALUE, ...}`` runs a step
only if earlier step ID succeeded and every FIELD (a dotted path into its result) equals VALUE;
``when: {step: ID}`` alone asks only that ID succeeded.

With a ``Catalogue`` the loader also checks action names, params (against each action's
params model), the target kind each action takes, and that no destructive action is ``auto``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from actions.catalogue import Catalogue
from actions.inventory import Inventory, Refusal, TargetRef
from schemas.actions import Mode, Target
from schemas.incidents import Incident, IncidentAlert
from schemas.severity import Severity, severity_rank
from schemas.yamlfile import ConfigFileError, LocatedError, YamlDocument, describe

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
IMPACT_LABEL: Final = "impact"


class PlaybookError(ConfigFileError):
    """A playbooks file that cannot be used; the message names the file and line."""


def normalise_impact(value: str) -> str:
    """As the policy compares impacts: "Data-Loss " is data_loss."""
    return value.strip().lower().replace("-", "_").replace(" ", "_")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(BaseModel):
    """``step`` plus the result fields it must have (any other key is a field)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    step: Name

    @property
    def equals(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Match(_Model):
    min_severity: Severity = Field(description="the incident's severity is at least this")
    impacts: tuple[Name, ...] = ()
    alertnames: tuple[Name, ...] = ()
    labels: dict[Name, str] = Field(default_factory=dict)

    def holds(self, incident: Incident, alerts: Sequence[IncidentAlert]) -> bool:
        if incident.status != "open":
            return False
        if severity_rank(incident.severity) < severity_rank(self.min_severity):
            return False
        if not (self.impacts or self.alertnames or self.labels):
            return True
        impacts = {normalise_impact(i) for i in self.impacts}
        return any(self._alert_holds(a, impacts) for a in alerts if a.status == "firing")

    def _alert_holds(self, alert: IncidentAlert, impacts: set[str]) -> bool:
        impact = alert.labels.get(IMPACT_LABEL)
        if impact is not None and normalise_impact(impact) in impacts:
            return True
        if alert.alertname in self.alertnames:
            return True
        return bool(self.labels) and all(alert.labels.get(k) == v for k, v in self.labels.items())


class Step(_Model):
    id: Name
    action: Name = Field(description="a catalogue action, e.g. kubernetes.rollout_restart")
    params: dict[str, Any] = Field(default_factory=dict)
    params_from_labels: dict[Name, Name] = Field(
        default_factory=dict,
        description="param -> the alert label giving its value (e.g. cidr: client_ip); one "
        "action per distinct value among the firing alerts, each checked by the action",
    )
    target: TargetRef
    mode: Mode
    when: When | None = None
    description: str = ""

    @model_validator(mode="after")
    def _fits_catalogue(self, info: ValidationInfo) -> Step:
        catalogue = (info.context or {}).get("catalogue")
        if not isinstance(catalogue, Catalogue):
            return self
        spec = catalogue.actions.get(self.action)
        if spec is None:
            close = difflib.get_close_matches(self.action, catalogue.names(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise LocatedError(f"unknown action {self.action!r}{hint}", ("action",))
        if spec.target_kind != self.target.kind:
            raise LocatedError(
                f"{self.action} acts on a {spec.target_kind}, not a {self.target.kind}",
                ("target", "kind"),
            )
        if spec.risk == "destructive" and self.mode == "auto":
            raise LocatedError(f"{self.action} is destructive: approve or never", ("mode",))
        for param in self.params_from_labels:
            if param not in spec.params.model_fields:
                where = ("params_from_labels", param)
                raise LocatedError(f"{self.action} has no param {param!r}", where)
        if self.params_from_labels:
            return self  # the values come with the alerts; the action checks them then
        try:
            spec.params.model_validate(self.params)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise LocatedError(f"{self.action}: {err['msg']}", ("params", *err["loc"])) from None
        return self


class Playbook(_Model):
    name: Name
    description: str = ""
    match: Match
    steps: tuple[Step, ...]

    @field_validator("steps", mode="after")
    @classmethod
    def _not_empty(cls, value: tuple[Step, ...]) -> tuple[Step, ...]:
        # Checked here, not with min_length: that also fires when an item was invalid.
        if not value:
            raise ValueError("a playbook needs at least one step")
        return value

    @model_validator(mode="after")
    def _steps_in_order(self) -> Playbook:
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.id in seen:
                raise LocatedError(f"step id {step.id!r} is used twice", ("steps", i, "id"))
            if step.when is not None and step.when.step not in seen:
                later = any(s.id == step.when.step for s in self.steps[i:])
                what = "a later step" if later else "an unknown step"
                raise LocatedError(
                    f"when names {what} {step.when.step!r}; only earlier steps",
                    ("steps", i, "when", "step"),
                )
            seen.add(step.id)
        return self


class Playbooks(_Model):
    playbooks: tuple[Playbook, ...] = ()

    @model_validator(mode="after")
    def _names_unique(self) -> Playbooks:
        seen: set[str] = set()
        for i, book in enumerate(self.playbooks):
            if book.name in seen:
                where = ("playbooks", i, "name")
                raise LocatedError(f"playbook {book.name!r} is listed twice", where)
            seen.add(book.name)
        return self


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step of a matched playbook on one target (or why it has none)."""

    playbook: str
    step: str
    action: str
    params: Mapping[str, Any]
    mode: Mode
    target: Target | None
    refusal: str | None = None
    """Why no inventory target: the step is reported skipped with this reason."""
    when: When | None = None
    variant: str = ""
    """The params an alert's labels gave (``cidr=203.0.113.7``): one action per variant."""


def matching(
    playbooks: Playbooks | Iterable[Playbook],
    incident: Incident,
    alerts: Sequence[IncidentAlert],
    inventory: Inventory,
) -> list[PlannedStep]:
    """The steps of the first playbook matching ``incident``, one per distinct target the
    firing alerts' labels choose (a step naming no label has one target). Pure."""
    books = playbooks.playbooks if isinstance(playbooks, Playbooks) else tuple(playbooks)
    book = next((b for b in books if b.match.holds(incident, alerts)), None)
    if book is None:
        return []
    label_sets = [a.labels for a in alerts if a.status == "firing"] or [{}]
    planned: list[PlannedStep] = []
    for step in book.steps:
        found: dict[str, Target | Refusal] = {}
        for labels in label_sets if step.target.uses_labels() else [{}]:
            got = inventory.resolve(step.target, labels)
            found.setdefault(got.key() if isinstance(got, Target) else got.reason, got)
        for got in found.values():
            target = got if isinstance(got, Target) else None
            refusal = got.reason if isinstance(got, Refusal) else None
            for params, variant, missing in _variants(step, label_sets):
                planned.append(
                    PlannedStep(
                        book.name,
                        step.id,
                        step.action,
                        params,
                        step.mode,
                        target,
                        refusal or missing,
                        step.when,
                        variant,
                    )
                )
    return planned


def _variants(
    step: Step, label_sets: Sequence[Mapping[str, str]]
) -> list[tuple[Mapping[str, Any], str, str | None]]:
    """The step's params for each distinct set of label values its ``params_from_labels``
    name among the firing alerts: (params, variant, why none when no alert has them)."""
    if not step.params_from_labels:
        return [(step.params, "", None)]
    seen: dict[str, Mapping[str, Any]] = {}
    for labels in label_sets:
        values = {p: labels.get(label) for p, label in step.params_from_labels.items()}
        if any(v is None or v == "" for v in values.values()):
            continue
        variant = ",".join(f"{p}={values[p]}" for p in sorted(values))
        seen.setdefault(variant, {**step.params, **values})
    if not seen:
        labels_named = ", ".join(sorted(step.params_from_labels.values()))
        return [(step.params, "", f"no firing alert has the label(s) {labels_named}")]
    return [(params, variant, None) for variant, params in seen.items()]


_MISSING: Final = object()


def _field(result: Mapping[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def unmet(when: When | None, results: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why a step with ``when`` must not run given the earlier steps' results (step id ->
    result of a step that succeeded), or None when it may run."""
    if when is None:
        return None
    result = results.get(when.step)
    if result is None:
        return f"step {when.step} did not succeed"
    for path, wanted in when.equals.items():
        got = _field(result, path)
        if got is _MISSING:
            return f"step {when.step}'s result has no {path}"
        if got != wanted:
            return f"step {when.step}'s {path} is {got!r}, not {wanted!r}"
    return None


def load_playbooks(path: Path | str, catalogue: Catalogue | None = None) -> Playbooks:
    """Read and check a playbooks file; with ``catalogue`` its actions and params too."""
    try:
        doc = YamlDocument(Path(path))
    except ConfigFileError as exc:
        raise PlaybookError(str(exc)) from None
    try:
        return Playbooks.model_validate(doc.data, context={"catalogue": catalogue})
    except ValidationError as exc:
        models = (Playbooks, Playbook, Match, Step, TargetRef, When)
        raise PlaybookError(describe(exc, doc, models, "playbooks")) from None


def default_playbooks(catalogue: Catalogue | None = None) -> Playbooks:
    """The playbooks shipped as ``actions/default_playbooks.yaml`` (the runbook's)."""
    with resources.as_file(resources.files("actions") / "default_playbooks.yaml") as path:
        return load_playbooks(path, catalogue)
