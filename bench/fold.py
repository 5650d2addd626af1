"""What the benches share about folding: watching ``sevpipe.incidents`` for the alerts that
changed, per-alert latency from a webhook's 200 to the incident change carrying the alert,
a process's peak RSS, and the one-group-beside-many report.

A watcher runs in a thread of the bench process (the load comes from other processes) and
notes, for every fingerprint an incident event names among its changed alerts, when it first
saw it; with the time each alert's webhook was answered 200 that gives the latencies, the
fold rate and how much was folded when the load ended. It also counts the topic's bytes as
stored: the embedded log's envelope rows, or Kafka's key + value + headers.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas import TOPIC_INCIDENTS

POLL = 0.005
MAX_EVENT_BYTES = 256 * 1024
TARGET_BYTES_PER_ALERT = 2048


@dataclass
class Seen:
    """What a watcher saw on the incidents topic (updated from its thread)."""

    first: dict[str, float] = field(default_factory=dict)  # fingerprint -> wall time seen
    events: int = 0
    bytes: int = 0
    largest: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, size: int, data: Any, now: float) -> None:
        alerts = data.get("alerts") if isinstance(data, dict) else None
        with self.lock:
            self.events += 1
            self.bytes += size
            self.largest = max(self.largest, size)
            for alert in alerts or ():
                self.first.setdefault(alert["fingerprint"], now)

    def count_seen(self, fingerprints: Iterable[str]) -> int:
        with self.lock:
            return sum(1 for fp in fingerprints if fp in self.first)


class Watcher(abc.ABC):
    """Base: a thread polling the incidents topic until ``stop``."""

    def __init__(self) -> None:
        self.seen = Seen()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fold-watch", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> Seen:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise RuntimeError(f"the incidents watcher failed: {self.error!r}") from self.error
        return self.seen

    def wait_for(self, fingerprints: Sequence[str], timeout: float) -> bool:
        """Until every one of ``fingerprints`` was seen, or ``timeout`` s; True if all were."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None or self.seen.count_seen(fingerprints) == len(fingerprints):
                return self.error is None
            time.sleep(0.05)
        return False

    @abc.abstractmethod
    def _watch(self) -> None:
        """Poll the topic into ``self.seen`` until ``self._stop`` is set."""

    def _main(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc


class EmbeddedWatcher(Watcher):
    """Polls the embedded log's SQLite file (the log wakes only in-process readers)."""

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.db = db

    def _watch(self) -> None:
        while not self.db.exists():
            if self._stop.wait(POLL):
                return
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            after = 0
            while True:
                rows = conn.execute(
                    "SELECT seq, envelope FROM events WHERE topic = ? AND seq > ?"
                    " ORDER BY seq LIMIT 5000",
                    (TOPIC_INCIDENTS, after),
                ).fetchall()
                now = time.time()
                for seq, blob in rows:
                    after = seq
                    self.seen.add(len(blob), orjson.loads(blob)["data"], now)
                if not rows and self._stop.wait(POLL):
                    return
        finally:
            conn.close()


class KafkaWatcher(Watcher):
    """Reads the incidents topic of a topic prefix raw, every partition from its start."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = prefix + TOPIC_INCIDENTS

    def _watch(self) -> None:
        asyncio.run(self._consume())

    async def _partitions(self) -> list[TopicPartition] | None:
        """The topic's partitions once it exists (the classifier creates it at start)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            while not self._stop.is_set():
                with contextlib.suppress(KafkaError):
                    (described,) = await admin.describe_topics([self.topic])
                    parts = described.get("partitions") or []
                    if not described.get("error_code") and parts:
                        return [TopicPartition(self.topic, p["partition"]) for p in parts]
                await asyncio.sleep(0.2)
            return None
        finally:
            await admin.close()

    async def _consume(self) -> None:
        tps = await self._partitions()
        if tps is None:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                fetched = await consumer.getmany(timeout_ms=20, max_records=5000)
                now = time.time()
                for messages in fetched.values():
                    for msg in messages:
                        size = len(msg.key or b"") + len(msg.value or b"")
                        size += sum(len(k.encode()) + len(v) for k, v in msg.headers or ())
                        self.seen.add(size, orjson.loads(msg.value), now)
        finally:
            await consumer.stop()


# -- figures -----------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Fold:
    """How the alerts answered 200 were folded into incidents."""

    acked: int
    folded: int  # of the acked, seen in an incident event by the end of the catch-up
    folded_at_load_end: int  # ... by the time the last webhook was answered
    load_start: float
    load_end: float
    last_folded: float
    latencies_ms: list[float]
    events: int
    bytes: int
    largest: int

    @property
    def all_folded(self) -> bool:
        return self.folded == self.acked > 0

    @property
    def receiver_rate(self) -> float:
        return self.acked / (self.load_end - self.load_start)

    @property
    def fold_rate(self) -> float:
        """Alerts answered 200 per second from the load's start until the last was folded."""
        if not self.all_folded:
            return math.nan
        return self.acked / (max(self.last_folded, self.load_end) - self.load_start)

    @property
    def share_at_load_end(self) -> float:
        return self.folded_at_load_end / self.acked if self.acked else math.nan

    @property
    def bytes_per_alert(self) -> float:
        return self.bytes / self.folded if self.folded else math.nan

    def line(self) -> str:
        lat = self.latencies_ms
        missing = self.acked - self.folded
        return (
            f"fold      {self.acked:,} alerts answered 200 at {self.receiver_rate:,.0f}/s;"
            f" folded {self.fold_rate:,.0f}/s ({self.share_at_load_end:.1%} when the load"
            f" ended{f', {missing:,} NEVER' if missing else ''}); 200 -> incident change"
            f" p50 {pct(lat, 0.5):,.0f} ms p99 {pct(lat, 0.99):,.0f} ms;"
            f" {self.events:,} incident events, {self.bytes_per_alert:,.0f} B/alert,"
            f" largest {self.largest:,} B"
        )


def fold_of(acks: Sequence[tuple[float, Sequence[str]]], seen: Seen, load_start: float) -> Fold:
    """``acks``: (wall time of the 200, fingerprints of that webhook's alerts)."""
    load_end = max((t for t, _ in acks), default=load_start)
    latencies: list[float] = []
    acked = folded = at_end = 0
    last = load_start
    with seen.lock:
        for t, fps in acks:
            for fp in fps:
                acked += 1
                when = seen.first.get(fp)
                if when is None:
                    continue
                folded += 1
                at_end += when <= load_end
                last = max(last, when)
                latencies.append((when - t) * 1000)
        events, size, largest = seen.events, seen.bytes, seen.largest
    return Fold(acked, folded, at_end, load_start, load_end, last, latencies, events, size, largest)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB; nan once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass(frozen=True)
class Row:
    """One line of the one-group-beside-many table."""

    bench: str
    one: float
    many: float
    unit: str
    target: str
    met: bool | None
    ratio: bool = True  # print one/many

    def text(self) -> str:
        ratio = self.one / self.many if self.ratio and self.many else math.nan
        verdict = {True: "met", False: "MISSED", None: "-"}[self.met]
        return (
            f"{self.bench:<56} {_num(self.one):>10} {_num(self.many):>15} {self.unit:<9}"
            f" {'' if math.isnan(ratio) else f'{ratio:.2f}':>6}  {self.target:<26} {verdict}"
        )


def _num(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def print_table(rows: Sequence[Row], *, one_label: str = "1 group", many_label: str) -> None:
    print()
    print(
        f"{'bench':<56} {one_label:>10} {many_label:>15} {'unit':<9} {'ratio':>6}  "
        f"{'target':<26} met?"
    )
    for row in rows:
        print(row.text())


def fingerprint_of(worker: int, seq: int, i: int) -> str:
    """The fingerprint bench/ingest.py's load worker gives alert ``i`` of webhook ``seq``."""
    return f"{worker:02x}{seq:012x}{i:02x}"
