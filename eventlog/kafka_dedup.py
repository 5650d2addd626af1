"""The Kafka log's dedup: Kafka cannot check a key against the topic, so each process
remembers what it appended (the last ``window`` keys per topic, least recently used out
first) and what appends still being delivered carry.

Both kinds of ``EventLog.append`` are one rule here: each key remembers a state, and an
event is a repeat when its state is the one remembered. A "seen ever" key has one state
only (""), so seen once it repeats forever; a "latest" key remembers the last state
appended under it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

Mark = tuple[str, str | None]
"""One event's dedup: (key, None) for a "seen ever" key, (key, state) for a "latest" one."""
_Slot = tuple[str, bool]  # (key, is a "latest" key): the two kinds are separate namespaces


def marks(
    dedup_keys: Sequence[str] | None, dedup_latest: Sequence[tuple[str, str]] | None
) -> list[Mark] | None:
    """The append's dedup arguments as one mark per event; None when it has none."""
    if dedup_keys is not None:
        return [(key, None) for key in dedup_keys]
    if dedup_latest is not None:
        return list(dedup_latest)
    return None


@dataclass(frozen=True, slots=True)
class Claim:
    """What one append is delivering, held until its delivery ends."""

    topic: str
    fresh: list[int]
    """Indexes of the events to append (the others are repeats)."""
    states: dict[_Slot, str]
    """Each key's state once these events are in the log."""
    done: asyncio.Future[None] = field(repr=False)


class RecentKeys:
    def __init__(self, window: int) -> None:
        self._window = window
        self._seen: dict[str, OrderedDict[_Slot, str]] = {}
        self._inflight: dict[tuple[str, _Slot], asyncio.Future[None]] = {}

    async def claim(self, topic: str, marks: Sequence[Mark]) -> Claim:
        """Sort out the repeats and claim the keys of the rest; ``settle`` must follow."""
        slots = [(key, state is not None) for key, state in marks]
        # Another append carrying one of our keys decides whether ours is a repeat: wait
        # for it (it ends within its own deadline), then look again.
        while waits := {f for s in slots if (f := self._inflight.get((topic, s)))}:
            await asyncio.wait(waits)
        seen = self._seen.setdefault(topic, OrderedDict())
        states: dict[_Slot, str] = {}
        fresh: list[int] = []
        for i, (slot, (_, state)) in enumerate(zip(slots, marks, strict=True)):
            now = state or ""
            if slot in states:
                before: str | None = states[slot]
            else:
                before = seen.get(slot)
                if before is not None:
                    seen.move_to_end(slot)  # least recently used goes first, not oldest
            if before != now:
                states[slot] = now
                fresh.append(i)
        claim = Claim(topic, fresh, states, asyncio.get_running_loop().create_future())
        for slot in states:
            self._inflight[(topic, slot)] = claim.done
        return claim

    def settle(self, claim: Claim, *, delivered: bool) -> None:
        """A delivery ended: its states are in the log if ``delivered``; keys free again."""
        for slot in claim.states:
            del self._inflight[(claim.topic, slot)]
        if delivered:
            seen = self._seen.setdefault(claim.topic, OrderedDict())
            for slot, state in claim.states.items():
                seen[slot] = state
                seen.move_to_end(slot)
            while len(seen) > self._window:
                seen.popitem(last=False)
        claim.done.set_result(None)
