"""Comms benchmarks (not a test): how soon Slack hears of a new incident, and how many
messages one incident makes in an alert storm, through ``sevpipe run`` (embedded) and through
``sevpipe ingest`` + ``sevpipe classify`` + ``sevpipe notify`` (Kafka, PostgreSQL, Redis from
``SEVPIPE_KAFKA_BOOTSTRAP``, ``SEVPIPE_POSTGRES_DSN``, ``SEVPIPE_REDIS_URL``: a topic prefix and
a database of its own, removed after), in the same run.

Slack is tests/slack_server.py's ``FakeSlack`` on 127.0.0.1, in a thread of the bench, noting
when each Web API request arrived (wall clock, as its handler starts). The settings point
``slack.api_url`` at it with one responder and the default routing and pacing: a SEV-1 goes to
``incident_channel`` (Slack: conversations.create, conversations.invite, chat.postMessage),
``leadership_email`` and ``status_page`` (neither configured: the console outbox).

1. Latency, new incident -> Slack: ``--incidents`` (200) webhooks at ``--rate`` (20/s), each
   a new Alertmanager group with one SEV-1 alert (impact=feature_degraded). Per incident:
   a = its webhook's 200; b = its ``incident.opened`` first seen on ``sevpipe.incidents``
   (bench/fold.py's watcher: the SQLite file polled every 5 ms, or Kafka read raw); c = the
   arrival of the first Slack request about it. comms = c - b, against the baseline measured on
   the same load, the classifier's part b - a; and comms' share of a -> c. The event's own
   ``time`` is not when it was decided: an incident event carries the time of the alert that
   made it (its receipt at ingest), so ``time`` -> c, printed too, spans classifier and comms.
   Matching, all exact: the incident is the ``incident.opened`` event (``sevpipe replay
   --topic sevpipe.incidents``) whose alerts carry the webhook's fingerprint; its Slack post is
   the chat.postMessage whose ``metadata.event_payload.incident_id`` is the incident id (comms
   marks every post); that post's ``channel`` is the id FakeSlack gave the channel, whose name
   picks the conversations.create (a taken name is refused, so names are unique), and
   conversations.invite names the id. The first request is the earliest of the three by
   arrival (conversations.create, counted); the name is checked against
   ``comms.slack_blocks.channel_name`` of the opened event's incident.
   b is when the bench saw the event, a little after it was appended: embedded, up to the
   watcher's 5 ms poll (``sevpipe run`` wakes comms in-process, so there comms' part is below
   that resolution and can come out negative); on Kafka, a fetch (a few ms).
2. Messages per incident: ``--storm-alerts`` (10,000) alerts of ONE group (one SEV-1
   incident) as 100-alert webhooks from 4 senders, then all resolved the same way; beside it
   the typical case, 10 alerts in one webhook. Once the notifications topic has the incident's
   resolved message on every route it had an opened one on: chat.postMessage requests carrying
   the incident id (target <= 10; the runbook's cadence says 2: one on open, one on resolve)
   and ``notification.*`` events about it (``sevpipe replay --topic sevpipe.notifications``).

    scripts/with-services .venv/bin/python -m bench.comms          # both setups, ~3 min
    scripts/with-services .venv/bin/python -m bench.comms --quick  # 100 incidents, 2,000 alerts
    .venv/bin/python -m bench.comms --skip production              # embedded only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
import yaml
from aiohttp import web

from bench import pipeline
from bench.classify import _post_storm
from bench.fold import EmbeddedWatcher, KafkaWatcher, Row, Watcher, pct, print_table
from bench.ingest import Server, child_env
from comms.slack_blocks import channel_name
from schemas import TOPIC_INCIDENTS, TOPIC_NOTIFICATIONS
from schemas.incidents import Incident

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
# The tests dir is a search root of the whole-tree mypy run only: typed there, Any alone.
from slack_server import TOKEN, FakeSlack  # type: ignore[import-not-found,unused-ignore]

TARGET_POSTS = 10
CATCH_UP = 60.0
SETTLE = 1.0  # seconds to wait, once all was said, for anything said twice
PER_WEBHOOK = 100
JSON = {"Content-Type": "application/json"}


# -- Slack, and the two ways to run sevpipe ------------------------------------------------


class RecordingSlack(FakeSlack):  # type: ignore[misc,unused-ignore]
    """FakeSlack that notes when each API request arrived: ``arrivals[i]`` is for
    ``requests[i]``. FakeSlack appends a request with nothing awaited after it, and the
    override runs inline, so the last request recorded on return is this handler's."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    async def _api(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        try:
            response: web.StreamResponse = await super()._api(request)
            return response
        finally:
            if len(self.arrivals) < len(self.requests):
                self.arrivals.append(arrived)

    def log(self) -> list[tuple[float, str, dict[str, Any]]]:
        """(arrival, method, body) of every request so far."""
        requests = list(self.requests)
        return [(t, r.method, r.body) for t, r in zip(self.arrivals, requests, strict=False)]


@contextlib.contextmanager
def fake_slack() -> Iterator[RecordingSlack]:
    """A ``RecordingSlack`` served by an event loop of its own thread."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        slack = RecordingSlack()
        await slack.start()
        stop = asyncio.Event()
        box.update(slack=slack, loop=asyncio.get_running_loop(), stop=stop)
        ready.set()
        try:
            await stop.wait()
        finally:
            await slack.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fake-slack", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the fake Slack did not start")
    try:
        yield box["slack"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


class Sevpipe(Server):
    """``sevpipe <command>`` with a settings file and extra environment (the install's)."""

    def __init__(
        self, command: str, data_dir: Path, config: Path, env: dict[str, str], workdir: Path
    ) -> None:
        argv = [sys.executable, "-m", "sevpipe", command, "--port", "0"]
        argv += ["--data-dir", str(data_dir), "--config", str(config)]
        self.out = workdir / f"{data_dir.name}.out"
        self.err = workdir / f"{data_dir.name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**child_env(), **env})
        self.wall0 = time.perf_counter()


def wait_assigned(proc: Sevpipe, topic: str, timeout: float = 60.0) -> None:
    """Until ``proc``'s stage holds every partition of ``topic`` (its lag gauges)."""
    lag = re.compile(rf'^sevpipe_consumer_lag\{{[^}}]*topic="{re.escape(topic)}"', re.M)
    base = proc.wait_url()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if len(lag.findall(pipeline._get(base, "/metrics"))) >= 3:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.err.name}: not assigned {topic}: {proc.err.read_text()[-2000:]}")


@dataclass
class Setup:
    name: str
    alerts_url: str
    watcher: Watcher
    data_dir: Path
    env: dict[str, str]

    def replay(self, topic: str) -> list[dict[str, Any]]:
        argv = [sys.executable, "-m", "sevpipe", "replay", "--data-dir", str(self.data_dir)]
        argv += ["--format", "jsonl", "--topic", topic]
        done = subprocess.run(
            argv, capture_output=True, check=True, env={**child_env(), **self.env}, timeout=120
        )
        return [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]


def write_config(path: Path, slack: RecordingSlack) -> Path:
    settings = {
        "slack": {"api_url": slack.api_url, "token": TOKEN, "responders": ["U0RESPOND"]},
        "log_level": "warning",
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@contextlib.contextmanager
def embedded(workdir: Path, config: Path) -> Iterator[Setup]:
    data = workdir / "data"
    run = Sevpipe("run", data, config, {}, workdir)
    try:
        url = run.wait_url()
        watcher = EmbeddedWatcher(data / "events.db").start()
        try:
            yield Setup("embedded", f"{url}/api/v1/alerts", watcher, data, {})
        finally:
            watcher.stop()
    finally:
        run.stop(signal.SIGTERM)


@contextlib.contextmanager
def production(workdir: Path, config: Path) -> Iterator[Setup]:
    install = pipeline.Install("comms")
    uvloop.run(install.create())
    procs: list[Sevpipe] = []
    try:
        for command in ("ingest", "classify", "notify"):
            procs.append(Sevpipe(command, workdir / command, config, install.env, workdir))
        url = procs[0].wait_url()
        wait_assigned(procs[1], "sevpipe.alerts")
        wait_assigned(procs[2], TOPIC_INCIDENTS)
        watcher = KafkaWatcher(install.bootstrap, install.prefix).start()
        try:
            yield Setup(
                "production", f"{url}/api/v1/alerts", watcher, workdir / "replay", install.env
            )
        finally:
            watcher.stop()
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.stop(signal.SIGTERM)
        uvloop.run(install.remove())


# -- load ----------------------------------------------------------------------------------


def webhook(service: str, alerts: Sequence[tuple[str, str]], status: str) -> bytes:
    """One group's webhook: ``alerts`` are (fingerprint, pod), all SEV-1 and ``status``."""
    resolved = status == "resolved"
    return orjson.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}:{{service="{service}"}}',
            "status": status,
            "receiver": "sevpipe",
            "groupLabels": {"service": service},
            "commonLabels": {"service": service, "impact": "feature_degraded"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [
                {
                    "status": status,
                    "labels": {
                        "alertname": "CheckoutDegraded",
                        "service": service,
                        "pod": pod,
                        "impact": "feature_degraded",
                    },
                    "annotations": {"summary": f"{service} is degraded"},
                    "startsAt": "2026-11-30T09:00:00Z",
                    "endsAt": "2026-11-30T09:30:00Z" if resolved else "0001-01-01T00:00:00Z",
                    "fingerprint": fp,
                }
                for fp, pod in alerts
            ],
        }
    )


async def post_incidents(url: str, n: int, rate: float, tag: str) -> dict[str, float]:
    """``n`` one-alert webhooks at ``rate``/s, each a group (and a title) of its own;
    fingerprint -> wall time of its 200."""
    acked: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            fp = f"{tag}{i:010x}"
            body = webhook(f"checkout-{tag}-{i:05d}", [(fp, "pod-0")], "firing")
            async with session.post(url, data=body, headers=JSON) as resp:
                await resp.read()
                if resp.status == 200:
                    acked[fp] = time.time()

        tasks = []
        start = time.perf_counter()
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return acked


def wait_until(done: Callable[[], bool], timeout: float, poll: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


# -- 1. latency ----------------------------------------------------------------------------


@dataclass
class SlackIndex:
    """The fake Slack's requests, by what they are about (see the module doc)."""

    first_post: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    posts: Counter[str] = field(default_factory=Counter)  # incident id -> chat.postMessage
    created: dict[str, float] = field(default_factory=dict)  # channel name -> first create
    invited: dict[str, float] = field(default_factory=dict)  # channel id -> first invite

    @classmethod
    def of(cls, slack: RecordingSlack, since: int = 0) -> SlackIndex:
        index = cls()
        for t, method, body in slack.log()[since:]:
            if method == "chat.postMessage":
                payload = (body.get("metadata") or {}).get("event_payload") or {}
                incident = str(payload.get("incident_id", ""))
                index.posts[incident] += 1
                index.first_post.setdefault(incident, (t, body))
            elif method == "conversations.create":
                index.created.setdefault(str(body.get("name")), t)
            elif method == "conversations.invite":
                index.invited.setdefault(str(body.get("channel")), t)
        return index


@dataclass
class Latency:
    setup: str
    acked: int
    classifier_ms: list[float] = field(default_factory=list)  # 200 -> opened on the log
    comms_ms: list[float] = field(default_factory=list)  # opened on the log -> 1st Slack req
    total_ms: list[float] = field(default_factory=list)  # 200 -> 1st Slack request
    stamped_ms: list[float] = field(default_factory=list)  # the event's time -> 1st request
    first: Counter[str] = field(default_factory=Counter)  # the first request's method
    misnamed: int = 0

    @property
    def matched(self) -> int:
        return len(self.comms_ms)

    def line(self) -> str:
        def span(values: list[float]) -> str:
            return f"p50 {pct(values, 0.5):,.1f} / p99 {pct(values, 0.99):,.1f} ms"

        firsts = ", ".join(f"{m} {n}" for m, n in self.first.most_common())
        return (
            f"  [{self.setup}] {self.matched} of {self.acked} incidents reached Slack"
            f" (first request: {firsts}; {self.misnamed} channel names unlike the incident's)\n"
            f"    200 -> opened on the log (classifier) {span(self.classifier_ms)}\n"
            f"    opened on the log -> 1st Slack request (comms) {span(self.comms_ms)}\n"
            f"    200 -> 1st Slack request {span(self.total_ms)}\n"
            f"    opened event's time (the alert's receipt) -> 1st Slack request"
            f" {span(self.stamped_ms)}"
        )


def first_request(index: SlackIndex, slack: RecordingSlack, incident: str) -> tuple[str, float]:
    """The first request about ``incident``: (method, arrival)."""
    posted, body = index.first_post[incident]
    channel = str(body.get("channel"))
    found = slack.channel(channel)
    name = found.name if found is not None else ""
    candidates = [("chat.postMessage", posted)]
    if name in index.created:
        candidates.append(("conversations.create", index.created[name]))
    if channel in index.invited:
        candidates.append(("conversations.invite", index.invited[channel]))
    method, first = min(candidates, key=lambda c: c[1])
    return (method if name else "chat.postMessage (no channel)"), first


def latency(setup: Setup, slack: RecordingSlack, n: int, rate: float, tag: str) -> Latency:
    mark = len(slack.requests)
    acked = asyncio.run(post_incidents(setup.alerts_url, n, rate, tag))

    def all_posted() -> bool:
        return len(SlackIndex.of(slack, mark).first_post) >= len(acked)

    if not wait_until(all_posted, CATCH_UP, 0.2):
        print(f"  [{setup.name}] warning: not every incident reached Slack in {CATCH_UP:.0f} s")
    time.sleep(SETTLE)
    opened = {
        alert["fingerprint"]: event
        for event in setup.replay(TOPIC_INCIDENTS)
        if event["type"] == "incident.opened"
        for alert in event["data"].get("alerts") or ()
    }
    index = SlackIndex.of(slack, mark)
    result = Latency(setup.name, len(acked))
    seen = setup.watcher.seen
    for fp, answered in acked.items():
        event, on_log = opened.get(fp), seen.first.get(fp)
        if event is None or on_log is None:
            continue
        incident = Incident.model_validate(event["data"]["incident"])
        if incident.id not in index.first_post:
            continue
        method, first = first_request(index, slack, incident.id)
        posted_to = slack.channel(str(index.first_post[incident.id][1].get("channel")))
        result.misnamed += posted_to is None or posted_to.name != channel_name(incident)
        result.first[method] += 1
        result.classifier_ms.append((on_log - answered) * 1000)
        result.comms_ms.append((first - on_log) * 1000)
        result.total_ms.append((first - answered) * 1000)
        stamped = datetime.fromisoformat(event["time"]).timestamp()
        result.stamped_ms.append((first - stamped) * 1000)
    print(result.line(), flush=True)
    return result


# -- 2. messages per incident --------------------------------------------------------------


@dataclass
class Messages:
    setup: str
    alerts: int
    posts: int  # chat.postMessage about the incident
    requests: int  # every Slack request since the case began
    notifications: int  # notification.* events about the incident
    complete: bool  # resolved said on every route that heard of the opening


def messages(setup: Setup, slack: RecordingSlack, alerts: int, tag: str) -> Messages:
    """``alerts`` alerts of one new group, firing then resolved (100 to a webhook)."""
    service = f"storm-{tag}"
    fps = [(f"{tag}{n:010x}", f"pod-{n:06d}") for n in range(alerts)]
    chunks = [fps[i : i + PER_WEBHOOK] for i in range(0, alerts, PER_WEBHOOK)]
    mark = len(slack.requests)
    for status in ("firing", "resolved"):
        bodies = [(webhook(service, c, status), [fp for fp, _ in c]) for c in chunks]
        asyncio.run(_post_storm(setup.alerts_url, bodies))
    wanted = {fp for fp, _ in fps}
    incident = ""

    def found() -> bool:
        nonlocal incident
        for event in setup.replay(TOPIC_INCIDENTS):
            if any(a["fingerprint"] in wanted for a in event["data"].get("alerts") or ()):
                incident = event["data"]["incident"]["id"]
                return True
        return False

    events: list[dict[str, Any]] = []

    def resolved_said() -> bool:
        nonlocal events
        events = [
            e for e in setup.replay(TOPIC_NOTIFICATIONS) if e["data"]["incident_id"] == incident
        ]
        said = {(e["data"]["kind"], e["data"]["route"]) for e in events}
        routes = {r for k, r in said if k == "opened"}
        return bool(routes) and all(("resolved", r) in said for r in routes)

    complete = wait_until(found, CATCH_UP, 0.5) and wait_until(resolved_said, CATCH_UP, 1.0)
    time.sleep(SETTLE)
    if complete:
        resolved_said()
    posts = SlackIndex.of(slack, mark).posts[incident]
    result = Messages(setup.name, alerts, posts, len(slack.requests) - mark, len(events), complete)
    print(
        f"  [{setup.name}] {alerts:,} alerts in one group, then resolved: {posts} Slack posts"
        f" ({result.requests} Slack requests), {len(events)} notification events"
        f"{'' if complete else ' (INCOMPLETE: the resolve was not said in time)'}",
        flush=True,
    )
    return result


# -- the run -------------------------------------------------------------------------------


@dataclass
class Outcome:
    latency: Latency
    typical: Messages
    storm: Messages


def measure(setup: Setup, slack: RecordingSlack, args: argparse.Namespace) -> Outcome:
    # The typical case first: it also warms every process and connection up.
    typical = messages(setup, slack, args.typical_alerts, "0000c0")
    storm = messages(setup, slack, args.storm_alerts, "0000b0")
    print(f"  [{setup.name}] {args.incidents} new incidents at {args.rate:g}/s ...", flush=True)
    lat = latency(setup, slack, args.incidents, args.rate, "0000a0")
    return Outcome(lat, typical, storm)


def rows_of(out: Outcome) -> list[Row]:
    lat, typical, storm = out.latency, out.typical, out.storm
    name = lat.setup

    def share(q: float) -> float:
        return 100 * pct(lat.comms_ms, q) / pct(lat.total_ms, q)

    def p(values: list[float], what: str) -> Row:
        return Row(f"{name}: {what}", pct(values, 0.5), pct(values, 0.99), "ms", "-", None, False)

    worst = max(typical.posts, storm.posts)
    posts_met = typical.complete and storm.complete and 0 < worst <= TARGET_POSTS
    return [
        p(lat.comms_ms, "incident.opened on log -> 1st Slack req"),
        p(lat.classifier_ms, "  baseline: 200 -> incident.opened on log"),
        Row(
            f"{name}:   comms share of 200 -> 1st Slack req",
            share(0.5),
            share(0.99),
            "%",
            "-",
            None,
            ratio=False,
        ),
        Row(
            f"{name}:   incidents reaching Slack (of {lat.acked})",
            lat.matched,
            lat.acked,
            "incidents",
            "all",
            lat.matched == lat.acked > 0,
            ratio=False,
        ),
        Row(
            f"{name}: Slack posts/incident ({typical.alerts}|{storm.alerts:,} alerts)",
            typical.posts,
            storm.posts,
            "posts",
            f"<= {TARGET_POSTS} (expect 2)",
            posts_met,
        ),
        Row(
            f"{name}:   notification events/incident",
            typical.notifications,
            storm.notifications,
            "events",
            "- (expect 6)",
            None,
        ),
    ]


def run_setup(name: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    """One setup on a fake Slack of its own, in ``workdir``."""
    start = embedded if name == "embedded" else production
    what = "sevpipe run" if name == "embedded" else "sevpipe ingest + classify + notify"
    print(f"{name}: {what}", flush=True)
    with fake_slack() as slack:
        config = write_config(workdir / "sevpipe.yaml", slack)
        with start(workdir, config) as setup:
            return measure(setup, slack, args)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--incidents", type=int, default=200, help="new incidents for latency")
    p.add_argument("--rate", type=float, default=20.0, help="new incidents per second")
    p.add_argument("--storm-alerts", type=int, default=10_000, help="alerts of the storm")
    p.add_argument("--typical-alerts", type=int, default=10, help="alerts of the typical case")
    p.add_argument("--skip", action="append", default=[], choices=("embedded", "production"))
    p.add_argument("--quick", action="store_true", help="~1 min: 100 incidents, 2,000 alerts")
    args = p.parse_args(argv)
    if args.quick:
        args.incidents, args.storm_alerts = min(args.incidents, 100), min(args.storm_alerts, 2000)
    setups = [s for s in ("embedded", "production") if s not in args.skip]
    missing = [n for n in pipeline.SERVICES if not os.environ.get(n)]
    if "production" in setups and missing:
        print(f"set {', '.join(missing)} (scripts/with-services does), or --skip production")
        return 2
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-comms-") as tmp:
        for name in setups:
            (Path(tmp) / name).mkdir()
            outcomes.append(run_setup(name, Path(tmp) / name, args))
    print_table(
        [row for out in outcomes for row in rows_of(out)],
        one_label="p50|typ.",
        many_label="p99|storm",
    )
    measured = all(o.latency.matched and o.typical.complete and o.storm.complete for o in outcomes)
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
