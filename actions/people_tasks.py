"""Tasks for people, recorded as actions: ``people_catalogue``.

Some of a runbook's steps are no API call: rotating the credentials a breach may have exposed
needs a person (a new database password, new API keys, the old ones revoked). Such a step is
still an action of the catalogue, so a playbook plans it, the guard admits it, a person may
approve it, and its events tell who must do what (the comms stage turns an ``action.succeeded``
of a ``people.*`` action into a ``task`` message for the security routes). It acts on nothing:

- ``people.credential_rotation`` (Namespace: the affected one; ``credentials``, the names of
  what to rotate, e.g. ``["db-password", "api-keys"]``, and ``reason``; risk ``mutating``, so
  its outcome is news): ``plan`` is no request; ``execute`` records the task, its outcome
  ``{task, checklist, opened_at, namespace, credentials, reason}``; ``check`` is that same
  outcome: the task is opened by being recorded, and the effects ledger records it once.

In dry-run (``sevpipe run`` without live actions) a mutating action is planned and not run,
so the task is shown planned with its params, and no task message is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Final, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from actions.catalogue import ActionSpec, Catalogue, Outcome
from schemas.actions import ApiRequest, Target

MAX_CREDENTIALS: Final = 20
CredentialName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]


class CredentialRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credentials: tuple[CredentialName, ...] = Field(
        min_length=1,
        max_length=MAX_CREDENTIALS,
        description='what to rotate, by name, e.g. ["db-password", "api-keys"]',
    )
    reason: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
    ] = Field(description="why, for the people doing it")

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        seen: set[str] = set()
        for name in self.credentials:
            if name in seen:
                raise ValueError(f"credential {name!r} is listed twice")
            seen.add(name)
        return self


def _namespace(target: Target) -> str:
    ns = target.namespace or target.name
    if target.kind != "Namespace" or not ns:
        raise ValueError(f"target {target.key()} is not a namespace")
    return ns


def task_title(namespace: str, params: CredentialRotation) -> str:
    return f"Rotate credentials in {namespace}: {', '.join(params.credentials)}"


def checklist(namespace: str, params: CredentialRotation) -> list[str]:
    """What rotating each credential means, then what closes the task. Pure."""
    items: list[str] = []
    for name in params.credentials:
        items += [
            f"{name}: issue a new value",
            f"{name}: store it where {namespace}'s workloads read it, and roll them",
            f"{name}: revoke the old value, and check that it is refused",
        ]
    items += [
        "Search the access and audit logs for uses of the old values since the breach began",
        "Record in the incident who rotated what, and when",
    ]
    return items


class CredentialTasks:
    """``people.credential_rotation``: a task recorded, nothing changed."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock

    async def plan(self, target: Target, params: CredentialRotation) -> tuple[ApiRequest, ...]:
        _namespace(target)
        return ()

    async def open(self, target: Target, params: CredentialRotation, token: int) -> Outcome:
        ns = _namespace(target)
        return {
            "task": task_title(ns, params),
            "checklist": checklist(ns, params),
            "opened_at": self.clock().astimezone(UTC).isoformat(),
            "namespace": ns,
            "credentials": list(params.credentials),
            "reason": params.reason,
        }

    async def opened(self, target: Target, params: CredentialRotation) -> Outcome | None:
        # Recording it is the whole effect: an attempt that died before the ledger recorded
        # its outcome leaves nothing behind but this same task, opened now.
        return await self.open(target, params, 0)


def people_catalogue(
    cat: Catalogue | None = None, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Catalogue:
    """The ``people.*`` tasks, registered in CAT (a new one by default)."""
    cat = cat if cat is not None else Catalogue()
    tasks = CredentialTasks(clock)
    cat.register(
        ActionSpec(
            name="people.credential_rotation",
            params=CredentialRotation,
            risk="mutating",
            target_kind="Namespace",
            plan=tasks.plan,
            execute=tasks.open,
            check=tasks.opened,
            description="a task for people: rotate the named credentials of a namespace",
        )
    )
    return cat
