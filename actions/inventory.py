"""The inventory: every object an action may touch, as a YAML file checked at load (errors name
the file and line, like the policy).

Targets come only from here. A playbook step names its target as a ``TargetRef``; an alert's
labels may choose among inventory entries (``name_from_label: deployment`` picks the
inventory Deployment whose name is the alert's ``deployment`` label) but never name a new one:
a label naming anything outside the inventory is a ``Refusal`` that says so.

    default_namespace: origin-production    # steps that name no namespace act here
    namespaces:
      origin-production:
        deployments:
          origin-backend:
            max_replicas: 20                 # scale requests above this are capped
            hpa: {min: 3, max: 20}           # the emergency HPA's bounds
            emergency_image: registry.example/origin-backend:stable  # set_image may use only this
        configmaps:
          origin-backend-config: {keys: [DB_POOL_MAX]}  # the keys that may be patched
        pods:
          origin-backend: {app: origin-backend}         # pod groups (for logs): name -> selector

Targets by kind: ``Namespace`` (namespace set, name empty), ``Deployment`` and ``ConfigMap``
(namespace and name), ``Pods`` (namespace and the group's selector, name empty). The sections
beyond Kubernetes (``aws``, ``databases``, ``redis``, ``probes``, ``prometheus``) are in
:mod:`actions.inventory_services`; their targets have a name and no namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from actions.inventory_services import (
    SERVICE_KINDS,
    SERVICE_MODELS,
    ServiceKind,
    ServicesInventory,
)
from schemas.actions import Target
from schemas.yamlfile import ConfigFileError, LocatedError, YamlDocument, describe

KubernetesKind = Literal["Namespace", "Deployment", "ConfigMap", "Pods"]
Kind = KubernetesKind | ServiceKind
KINDS: Final[tuple[str, ...]] = ("Namespace", "Deployment", "ConfigMap", "Pods", *SERVICE_KINDS)
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class InventoryError(ConfigFileError):
    """An inventory file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a target could not be resolved; fit for an ``action.skipped`` event's reason."""

    reason: str


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HpaBounds(_Model):
    """The emergency HPA's bounds: its min and max replicas are kept within these."""

    min: int = Field(1, ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> HpaBounds:
        if self.min > self.max:
            raise LocatedError(f"min {self.min} is above max {self.max}", ("min",))
        return self


class DeploymentEntry(_Model):
    max_replicas: int = Field(ge=1, description="scale requests above this are capped")
    hpa: HpaBounds | None = Field(None, description="default: min 1, max max_replicas")
    emergency_image: str | None = Field(
        None, description="the only image set_image may use; none: set_image is refused"
    )

    @model_validator(mode="after")
    def _hpa_within_cap(self) -> DeploymentEntry:
        if self.hpa is not None and self.hpa.max > self.max_replicas:
            raise LocatedError(
                f"hpa max {self.hpa.max} is above max_replicas {self.max_replicas}",
                ("hpa", "max"),
            )
        return self

    def hpa_bounds(self) -> HpaBounds:
        return self.hpa or HpaBounds(min=1, max=self.max_replicas)


class ConfigMapEntry(_Model):
    keys: tuple[Name, ...] = Field(min_length=1, description="the keys that may be patched")


class NamespaceEntry(_Model):
    deployments: dict[Name, DeploymentEntry] = Field(default_factory=dict)
    configmaps: dict[Name, ConfigMapEntry] = Field(default_factory=dict)
    pods: dict[Name, dict[Name, str]] = Field(
        default_factory=dict, description="pod group name -> its label selector"
    )

    @model_validator(mode="after")
    def _selectors_not_empty(self) -> NamespaceEntry:
        for name, selector in self.pods.items():
            if not selector:
                raise LocatedError("a pod group needs a label selector", ("pods", name))
        return self


class Inventory(ServicesInventory):
    default_namespace: Name | None = Field(
        None, description="where steps that name no namespace act; default: the only one"
    )
    namespaces: dict[Name, NamespaceEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_is_known(self) -> Inventory:
        if self.default_namespace is not None and self.default_namespace not in self.namespaces:
            raise LocatedError(
                f"namespace {self.default_namespace} is not in namespaces", ("default_namespace",)
            )
        return self

    def home_namespace(self) -> str | None:
        if self.default_namespace is not None:
            return self.default_namespace
        return next(iter(self.namespaces)) if len(self.namespaces) == 1 else None

    def target(
        self,
        kind: str,
        namespace: str,
        name: str | None = None,
        selector: Mapping[str, str] | None = None,
    ) -> Target | Refusal:
        """The inventory's target of ``kind`` named ``name`` (or, for Pods, with ``selector``
        or the group ``name``) in ``namespace``, or why there is none."""
        if (section := self.section(kind)) is not None:
            return _service(section, kind, name)
        ns = self.namespaces.get(namespace)
        if ns is None:
            return Refusal(f"namespace {namespace} is not in the inventory")
        return _namespaced(ns, kind, namespace, name, selector)

    def resolve(self, ref: TargetRef, labels: Mapping[str, str]) -> Target | Refusal:
        """A step's target for an alert with ``labels``: a label may choose among inventory
        entries, never name a new one."""
        if ref.kind in SERVICE_KINDS:
            namespace: str | None = ""
        elif ref.namespace_from_label and labels.get(ref.namespace_from_label):
            namespace = labels[ref.namespace_from_label]
        else:
            namespace = ref.namespace or self.home_namespace()
        if namespace is None:
            return Refusal(f"no namespace for the {ref.kind} target, and no default_namespace")
        name = ref.name
        if ref.name_from_label:
            chosen = labels.get(ref.name_from_label)
            if chosen:
                name = chosen
            elif name is None:
                return Refusal(f"no alert label {ref.name_from_label} to choose a {ref.kind}")
        return self.target(ref.kind, namespace, name, ref.selector)

    def deployment(self, target: Target) -> DeploymentEntry | None:
        ns = self.namespaces.get(target.namespace)
        return ns.deployments.get(target.name) if ns and target.kind == "Deployment" else None

    def configmap(self, target: Target) -> ConfigMapEntry | None:
        ns = self.namespaces.get(target.namespace)
        return ns.configmaps.get(target.name) if ns and target.kind == "ConfigMap" else None

    def contains(self, target: Target) -> bool:
        """True when ``target`` is exactly one the inventory resolves to."""
        found = self.target(target.kind, target.namespace, target.name or None, target.selector)
        return found == target


def _namespaced(
    ns: NamespaceEntry,
    kind: str,
    namespace: str,
    name: str | None,
    selector: Mapping[str, str] | None,
) -> Target | Refusal:
    if kind == "Namespace":
        return Target(kind="Namespace", namespace=namespace)
    if kind == "Pods":
        return _pods(ns, namespace, name, selector)
    by_kind: dict[str, Mapping[str, object]] = {
        "Deployment": ns.deployments,
        "ConfigMap": ns.configmaps,
    }
    entries = by_kind.get(kind)
    if entries is None:
        return Refusal(f"kind {kind} is not one the inventory holds ({', '.join(KINDS)})")
    if not name or name not in entries:
        return Refusal(f"{kind} {namespace}/{name or '(no name)'} is not in the inventory")
    return Target(kind=kind, namespace=namespace, name=name)


def _service(section: Mapping[str, object], kind: str, name: str | None) -> Target | Refusal:
    if not name or name not in section:
        return Refusal(f"{kind} {name or '(no name)'} is not in the inventory")
    return Target(kind=kind, name=name)


def _pods(
    ns: NamespaceEntry, namespace: str, name: str | None, selector: Mapping[str, str] | None
) -> Target | Refusal:
    if name:
        if name not in ns.pods:
            return Refusal(f"pod group {namespace}/{name} is not in the inventory")
        return Target(kind="Pods", namespace=namespace, selector=dict(ns.pods[name]))
    wanted = dict(selector or {})
    if wanted and wanted in ns.pods.values():
        return Target(kind="Pods", namespace=namespace, selector=wanted)
    shown = ",".join(f"{k}={v}" for k, v in sorted(wanted.items())) or "(none)"
    return Refusal(f"pods selector {shown} in {namespace} is not in the inventory")


class TargetRef(_Model):
    """How a playbook step names its target: fixed, or chosen by an alert label."""

    kind: Kind
    namespace: Name | None = Field(None, description="default: the inventory's default")
    namespace_from_label: Name | None = Field(None, description="an alert label may choose it")
    name: Name | None = Field(None, description="with name_from_label: used when no alert has it")
    name_from_label: Name | None = Field(None, description="the alert label naming the entry")
    selector: dict[Name, str] | None = Field(None, description="Pods: an inventory selector")

    @model_validator(mode="after")
    def _fits_kind(self) -> TargetRef:
        named = self.name is not None or self.name_from_label is not None
        if self.kind == "Namespace" and (named or self.selector is not None):
            raise LocatedError("a Namespace target takes no name or selector", ("kind",))
        if self.kind in ("Deployment", "ConfigMap"):
            if self.selector is not None:
                raise LocatedError(f"a {self.kind} target takes no selector", ("selector",))
            if not named:
                raise LocatedError(f"a {self.kind} target needs name or name_from_label", ())
        if self.kind == "Pods" and named == (self.selector is not None):
            raise LocatedError("a Pods target needs a group name (or label) or a selector", ())
        if self.kind in SERVICE_KINDS:
            if self.namespace is not None or self.namespace_from_label is not None:
                raise LocatedError(f"a {self.kind} target has no namespace", ("kind",))
            if self.selector is not None or not named:
                raise LocatedError(f"a {self.kind} target needs name or name_from_label", ())
        return self

    def uses_labels(self) -> bool:
        return self.name_from_label is not None or self.namespace_from_label is not None


def load_inventory(path: Path | str) -> Inventory:
    """Read and check an inventory file."""
    try:
        doc = YamlDocument(Path(path))
    except ConfigFileError as exc:
        raise InventoryError(str(exc)) from None
    try:
        return Inventory.model_validate(doc.data)
    except ValidationError as exc:
        models = (
            Inventory,
            NamespaceEntry,
            DeploymentEntry,
            HpaBounds,
            ConfigMapEntry,
            *SERVICE_MODELS,
        )
        raise InventoryError(describe(exc, doc, models, "inventory")) from None
