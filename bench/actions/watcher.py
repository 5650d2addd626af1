"""What the bench sees of the stages: a consumer of its own on ``sevpipe.actions`` and
``bench.echo``, every event raw with when it was fetched."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.actions.backends import Clients
from bench.actions.scenario import NAMESPACE, WARMUP, append, opened
from bench.actions.stages import ECHO_IN, ECHO_OUT, ECHO_TYPE, WAIT, Running
from eventlog import EventLog
from runtime.stage import StageRuntime
from schemas import TOPIC_ACTIONS, TOPIC_INCIDENTS

DECIDED: Final = frozenset(
    {"action.succeeded", "action.failed", "action.skipped", "action.awaiting_approval"}
)


@dataclass(frozen=True)
class Seen:
    at: float  # perf_counter when the bench's consumer fetched it
    id: str
    type: str
    subject: str
    data: dict[str, Any]


class Watcher:
    """A consumer of ``sevpipe.actions`` and ``bench.echo`` in a group of its own: every event,
    raw (repeats included), with when it was fetched."""

    def __init__(self, eventlog: EventLog, group: str) -> None:
        self.log = eventlog
        self.group = group
        self.seen: list[Seen] = []
        self.first: dict[tuple[str, str], float] = {}  # (type, subject) -> first fetched
        self.decided: dict[str, float] = {}  # subject -> first decided (one action each)
        self._tick = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(WAIT):
                await self._task

    async def _run(self) -> None:
        sub = self.log.subscribe([TOPIC_ACTIONS, ECHO_OUT], self.group)
        try:
            while not self._stop.is_set():
                records = await sub.fetch(1000, max_wait=0.2)
                now = time.perf_counter()
                for record in records:
                    env = record.envelope
                    self.seen.append(Seen(now, env.id, env.type, env.subject, env.data))
                    self.first.setdefault((env.type, env.subject), now)
                    if env.type in DECIDED:
                        self.decided.setdefault(env.subject, now)
                if records:
                    tick, self._tick = self._tick, asyncio.Event()
                    tick.set()
        finally:
            await sub.close()

    async def first_of(self, kind: str, subject: str, running: Running) -> float:
        """When the first event of type ``kind`` (or "decided": any of DECIDED) about
        ``subject`` was fetched, waiting for it."""
        key = (kind, subject)
        if kind == "decided":
            await self.until(lambda: subject in self.decided, running, f"{subject} decided")
            return self.decided[subject]
        await self.until(lambda: key in self.first, running, f"{kind} about {subject}")
        return self.first[key]

    async def until(
        self, done: Callable[[], bool], running: Running, what: str, within: float = WAIT
    ) -> None:
        """Until ``done()`` holds, checked on every batch the watcher fetches."""
        deadline = time.monotonic() + within
        while True:
            tick = self._tick
            if done():
                return
            running.check()
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError("the bench's consumer stopped")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not in {within:.0f} s: {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), min(left, 0.5))


@contextlib.asynccontextmanager
async def watched(
    runtimes: Sequence[StageRuntime], eventlog: EventLog, group_prefix: str
) -> AsyncIterator[tuple[Running, Watcher]]:
    """``runtimes`` running, and the bench's watcher on ``eventlog``; both stopped after."""
    running = Running(runtimes)
    watcher = Watcher(eventlog, group_prefix + "bench-watch").start()
    try:
        yield running, watcher
    finally:
        await running.close()
        await watcher.stop()


async def warm_up(
    bench: Clients, watcher: Watcher, running: Running, *, target: str, n: int
) -> None:
    """Incidents whose playbook step is in mode never (skipped before the guard is asked)
    and as many echoes: every consumer joined and fetching."""
    stage = [opened(WARMUP, NAMESPACE, target) for _ in range(n)]
    echo = [opened(WARMUP, NAMESPACE, target) for _ in range(n)]
    await bench.store.restore([(TOPIC_INCIDENTS, e) for e in stage])
    await append(bench.log, TOPIC_INCIDENTS, stage)
    await append(bench.log, ECHO_IN, echo)

    def done() -> bool:
        return all(e.subject in watcher.decided for e in stage) and all(
            (ECHO_TYPE, e.subject) in watcher.first for e in echo
        )

    await watcher.until(done, running, "the warm-up incidents decided and echoed")
