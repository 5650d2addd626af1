"""The Kafka log's dedup: Kafka cannot check a key against the topic, so each process
remembers the keys it appended (the last ``window`` per topic) and the keys of appends still
being delivered."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Claim:
    """The fresh keys of one append, held until its delivery ends."""

    topic: str
    fresh: dict[str, int]
    """Dedup key -> index of the event that carries it (the first, when several do)."""
    done: asyncio.Future[None] = field(repr=False)


class RecentKeys:
    def __init__(self, window: int) -> None:
        self._window = window
        self._seen: dict[str, OrderedDict[str, None]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def claim(self, topic: str, keys: Sequence[str]) -> Claim:
        """Claim the keys not appended yet; ``settle`` must follow once delivery ends."""
        # Another append carrying one of our keys decides whether ours is a repeat: wait
        # for it (it ends within its own deadline), then look again.
        while waits := {f for k in keys if (f := self._inflight.get((topic, k)))}:
            await asyncio.wait(waits)
        seen = self._seen.setdefault(topic, OrderedDict())
        fresh: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in seen:
                seen.move_to_end(key)  # least recently used goes first, not oldest
            elif key not in fresh:
                fresh[key] = i
        claim = Claim(topic, fresh, asyncio.get_running_loop().create_future())
        for key in fresh:
            self._inflight[(topic, key)] = claim.done
        return claim

    def settle(self, claim: Claim, *, delivered: bool) -> None:
        """A delivery ended: its keys are in the log if ``delivered``, and free again."""
        for key in claim.fresh:
            del self._inflight[(claim.topic, key)]
        if delivered:
            seen = self._seen.setdefault(claim.topic, OrderedDict())
            for key in claim.fresh:
                seen[key] = None
            while len(seen) > self._window:
                seen.popitem(last=False)
        claim.done.set_result(None)
