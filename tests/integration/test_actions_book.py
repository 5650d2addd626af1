"""The actions book (store/actions.py) on both backends: what the stage records, what the API
lists, and a person's decision as a compare-and-set written with its outbox event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from services import Services, fresh_database_sync

from schemas import TOPIC_ACTIONS, new_event_id
from schemas.actions import ActionEventData, ActionState, Target
from store import EmbeddedStore, PostgresStore
from store.actions import (
    ActionConflict,
    ActionNotFound,
    ActionQuery,
    ActionsBook,
    DecisionRequest,
)

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
TTL = timedelta(minutes=30)


Opener = Callable[[], Any]


@pytest.fixture(scope="module")
def pg_dsn(services: Services) -> Iterator[str]:
    with fresh_database_sync(services, "sevpipe_actions_book") as dsn:
        yield dsn


@pytest.fixture(params=["embedded", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "embedded":
        return lambda: EmbeddedStore(tmp_path / "store.db")
    dsn: str = request.getfixturevalue("pg_dsn")
    return lambda: PostgresStore(dsn, max_size=4)


@pytest.fixture
async def book(opener: Opener) -> AsyncIterator[Any]:
    async with opener() as store:
        yield store


def action(
    incident: str, step: str = "scale", state: ActionState = "awaiting_approval", **more: Any
) -> ActionEventData:
    fields: dict[str, Any] = {
        "action_id": f"{incident}-{step}",
        "incident_id": incident,
        "incident_version": 1,
        "playbook": "sev0-outage",
        "step": step,
        "action": "kubernetes.emergency_hpa",
        "target": Target(kind="Deployment", namespace="prod", name="origin-backend"),
        "params": {"min_replicas": 6, "max_replicas": 20},
        "risk": "mutating",
        "mode": "approve",
        "state": state,
        "dry_run": False,
        "expires_at": T0 + TTL if state == "awaiting_approval" else None,
        "decided_at": T0,
    }
    fields.update(more)
    return ActionEventData(**fields)


def incident_id() -> str:
    return f"inc-{new_event_id().lower()}"


async def action_events(store: Any, incident: str) -> list[Any]:
    """The raw outbox rows of ``incident`` on sevpipe.actions, not deduplicated."""
    return [e for e in await store.unrelayed(10_000) if e.envelope.subject == incident]


def test_backends_are_actions_books(tmp_path: Path) -> None:
    assert isinstance(EmbeddedStore(tmp_path / "s.db"), ActionsBook)
    assert isinstance(PostgresStore("postgresql://127.0.0.1:1/none"), ActionsBook)


async def test_recorded_actions_are_listed_newest_first_and_filtered(book: Any) -> None:
    inc, other = incident_id(), incident_id()
    await book.record_action(action(inc, "state", "succeeded", decided_at=T0))
    await book.record_action(action(inc, "scale", decided_at=T0 + timedelta(seconds=1)))
    await book.record_action(action(other, "scale", decided_at=T0 + timedelta(seconds=2)))

    mine = await book.list_actions(ActionQuery(incident_id=inc))
    assert [a.step for a in mine] == ["scale", "state"]
    waiting = await book.list_actions(ActionQuery(incident_id=inc, state="awaiting_approval"))
    assert [a.action_id for a in waiting] == [f"{inc}-scale"]
    assert len(await book.list_actions(ActionQuery(incident_id=inc, limit=1))) == 1
    got = await book.get_action(f"{inc}-scale")
    assert got == action(inc, "scale", decided_at=T0 + timedelta(seconds=1))
    assert await book.get_action("nope") is None


async def test_an_approval_is_a_compare_and_set_written_with_its_event(book: Any) -> None:
    inc = incident_id()
    await book.record_action(action(inc))
    at = T0 + timedelta(minutes=5)
    approved, repeat = await book.decide_action(
        f"{inc}-scale", DecisionRequest("approved", "alice", at, "go"), source="/sevpipe/api"
    )
    assert not repeat
    assert (approved.state, approved.actor, approved.reason) == ("approved", "alice", "go")
    assert (await book.get_action(f"{inc}-scale")) == approved

    # The same approval again (a retried request) changes nothing and writes no event.
    again, repeat = await book.decide_action(
        f"{inc}-scale", DecisionRequest("approved", "alice", at, "go"), source="/sevpipe/api"
    )
    assert repeat
    assert again == approved
    # Someone else's later answer is refused, saying who decided.
    with pytest.raises(ActionConflict, match="approved by alice") as refused:
        await book.decide_action(
            f"{inc}-scale", DecisionRequest("denied", "bob", at, "no"), source="/sevpipe/api"
        )
    assert refused.value.current.state == "approved"

    events = await action_events(book, inc)
    assert [(e.topic, e.envelope.type) for e in events] == [(TOPIC_ACTIONS, "action.approved")]
    assert events[0].envelope.data["actor"] == "alice"

    # The stage re-planning the step (a redelivered incident event) does not undo the answer;
    # its outcome does replace it.
    kept = await book.record_action(action(inc, decided_at=at + timedelta(seconds=1)))
    assert kept.state == "approved"
    done = await book.record_action(action(inc, state="succeeded"))
    assert (await book.get_action(f"{inc}-scale")) == done


async def test_two_replicas_deciding_at_once_one_wins(opener: Opener) -> None:
    inc = incident_id()
    async with opener() as one, opener() as two:
        await one.record_action(action(inc))
        at = T0 + timedelta(minutes=1)
        results = await asyncio.gather(
            *(
                store.decide_action(f"{inc}-scale", request, source="/sevpipe/api")
                for store, request in (
                    (one, DecisionRequest("approved", "alice", at)),
                    (two, DecisionRequest("denied", "bob", at)),
                    (one, DecisionRequest("denied", "carol", at)),
                    (two, DecisionRequest("approved", "dave", at)),
                )
            ),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, ActionConflict)]
        assert len(won) == 1
        assert len(lost) == 3
        events = await action_events(one, inc)
        assert len(events) == 1
        assert events[0].envelope.data["actor"] == won[0][0].actor


async def test_expiry(book: Any) -> None:
    inc = incident_id()
    await book.record_action(action(inc))
    await book.record_action(action(inc, "restart", "succeeded"))
    assert f"{inc}-scale" not in await book.due_approvals(T0 + TTL - timedelta(seconds=1))
    with pytest.raises(ActionConflict, match="has not expired"):
        await book.decide_action(
            f"{inc}-scale", DecisionRequest("expired", "sevpipe", T0), source="/sevpipe/actions"
        )
    late = T0 + TTL
    with pytest.raises(ActionConflict, match=r"expired at .*nobody approved it"):
        await book.decide_action(
            f"{inc}-scale", DecisionRequest("approved", "alice", late), source="/sevpipe/api"
        )
    due = await book.due_approvals(late)
    assert f"{inc}-scale" in due
    assert f"{inc}-restart" not in due
    expired, _ = await book.decide_action(
        f"{inc}-scale", DecisionRequest("expired", "sevpipe", late, "nobody"), source="/x"
    )
    assert expired.state == "expired"
    assert f"{inc}-scale" not in await book.due_approvals(late + TTL)
    assert [e.envelope.type for e in await action_events(book, inc)] == ["action.expired"]


async def test_deciding_an_unknown_action_says_so(book: Any) -> None:
    with pytest.raises(ActionNotFound, match="no action nope"):
        await book.decide_action("nope", DecisionRequest("approved", "a", T0), source="/x")


async def test_a_refusal_never_hides_a_run(book: Any) -> None:
    inc = incident_id()
    await book.record_action(action(inc, "restart", "started", mode="auto"))
    kept = await book.record_action(action(inc, "restart", "skipped", mode="auto"))
    assert kept.state == "started"
    await book.record_action(action(inc, "restart", "succeeded", mode="auto"))
    kept = await book.record_action(action(inc, "restart", "skipped", mode="auto"))
    assert kept.state == "succeeded"
    # A refusal does replace an earlier refusal or an approval the guard then refused.
    await book.record_action(action(inc, "scale", "approved"))
    assert (await book.record_action(action(inc, "scale", "skipped"))).state == "skipped"
