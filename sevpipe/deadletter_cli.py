"""``sevpipe deadletter``: list, show and retry the records stages set aside.

Everything is read from ``sevpipe.deadletter`` itself (embedded log or Kafka): a
``deadletter.recorded`` event per record, and a ``deadletter.retried`` event once its
record was appended again, so ``retry --all`` never retries one twice.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from pydantic import ValidationError

from schemas.deadletter import (
    DEADLETTER_RECORDED,
    DEADLETTER_RETRIED,
    MAX_VALUE_BYTES,
    TOPIC_DEADLETTER,
    DeadLetterData,
    DeadLetterRetriedData,
    retried_event,
)
from schemas.durations import parse_time
from schemas.envelope import Envelope
from sevpipe.settings import Settings, SettingsError

if TYPE_CHECKING:
    from eventlog import EventLog

log = logging.getLogger(__name__)

SOURCE = "/sevpipe/cli"


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_settings_args: Callable[..., None],
) -> None:
    parser = sub.add_parser("deadletter", help="records a stage could not process")
    actions = parser.add_subparsers(dest="deadletter_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the dead letters, newest last")
    show = actions.add_parser("show", help="one dead letter, with its original record")
    retry = actions.add_parser("retry", help="append a dead letter's record to its topic again")
    for p in (listing, show, retry):
        add_settings_args(p, server=False)
    for p in (listing, retry):
        p.add_argument("--since", help="failed from this time: 90m, 1h30m, 7d ago, or ISO 8601")
        p.add_argument("--stage", help="only this stage's dead letters")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    show.add_argument("id", help="the dead letter's id (from list)")
    retry.add_argument("id", nargs="?", help="the dead letter's id (from list)")
    retry.add_argument("--all", action="store_true", help="every one not retried yet")


@dataclass
class Letter:
    id: str
    data: DeadLetterData
    retried: DeadLetterRetriedData | None = None
    retried_at: datetime | None = None

    def envelope(self) -> Envelope:
        """The original event, to append again; ValueError if it is not one."""
        if self.data.original.truncated:
            raise ValueError(f"the record was larger than {MAX_VALUE_BYTES} bytes and was cut")
        return Envelope.model_validate_json(self.data.original.raw())

    def summary(self) -> dict[str, Any]:
        """The letter without the original value (``show`` prints that)."""
        body = self.data.model_dump(mode="json")
        del body["original"]["value"]
        return {"id": self.id, **body, "retried": self._retried()}

    def detail(self) -> dict[str, Any]:
        record: Any = None
        if self.data.original.encoding == "utf-8":
            try:
                record = orjson.loads(self.data.original.value)
            except orjson.JSONDecodeError:
                record = None
        body = self.data.model_dump(mode="json")
        return {"id": self.id, **body, "record": record, "retried": self._retried()}

    def _retried(self) -> dict[str, Any] | None:
        if self.retried is None or self.retried_at is None:
            return None
        return {**self.retried.model_dump(mode="json"), "at": self.retried_at.isoformat()}


async def load(
    eventlog: EventLog, *, since: datetime | None = None, stage: str | None = None
) -> list[Letter]:
    """The dead letters on the topic, in log order, with their retries."""
    letters: dict[str, Letter] = {}
    async for record in eventlog.read([TOPIC_DEADLETTER], since=since):
        try:
            env = record.envelope
            if env.type == DEADLETTER_RECORDED:
                data = DeadLetterData.model_validate(env.data)
                # On Kafka a letter can be there twice (appended by two processes)
                letters.setdefault(env.id, Letter(env.id, data))
            elif env.type == DEADLETTER_RETRIED:
                retried = DeadLetterRetriedData.model_validate(env.data)
                letter = letters.get(retried.deadletter_id)
                if letter is not None and letter.retried is None:
                    letter.retried, letter.retried_at = retried, env.time
        except ValidationError as exc:
            log.warning(
                "skipping %s@%d: not a dead-letter event: %s", record.topic, record.offset, exc
            )
    return [x for x in letters.values() if stage is None or x.data.stage == stage]


def write_table(letters: Sequence[Letter], out: TextIO) -> None:
    if not letters:
        out.write("no dead letters\n")
        return
    out.write(
        f"{'ID':<26}  {'FAILED AT':<20}  {'STAGE':<12}  {'REASON':<11}  "
        f"{'RECORD':<28}  {'RETRIED':<7}  ERROR\n"
    )
    for x in letters:
        o = x.data.original
        failed_at = x.data.failed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        where = f"{o.topic}[{o.partition}]@{o.offset}"
        error = " ".join(f"{x.data.error_type}: {x.data.error}".split())
        if len(error) > 80:
            error = error[:79] + "\u2026"
        retried = "yes" if x.retried else "no"
        out.write(
            f"{x.id:<26}  {failed_at:<20}  {x.data.stage:<12}  {x.data.reason:<11}  "
            f"{where:<28}  {retried:<7}  {error}\n"
        )


async def retry_one(eventlog: EventLog, letter: Letter, envelope: Envelope) -> int | None:
    """Append the original again, then record that it was; its new offset."""
    original = letter.data.original
    # The dedup key makes the append itself idempotent on the embedded log, for a retry
    # that died before it could record itself.
    result = await eventlog.append(
        original.topic, [envelope], dedup_keys=[f"deadletter-retry:{letter.id}"]
    )
    offset = result.offsets[0]
    marker = retried_event(
        DeadLetterRetriedData(
            deadletter_id=letter.id,
            stage=letter.data.stage,
            topic=original.topic,
            event_id=envelope.id,
            offset=offset,
        ),
        time=datetime.now(UTC),
        source=SOURCE,
    )
    await eventlog.append(TOPIC_DEADLETTER, [marker], dedup_keys=[marker.id])
    return offset


async def retry(
    eventlog: EventLog, chosen: Sequence[Letter], *, explicit: bool, out: TextIO, err: TextIO
) -> int:
    """Retry ``chosen``; those that cannot be are named on ``err`` and left as they are."""
    refused = 0
    done = 0
    for letter in chosen:
        if letter.retried is not None:
            if explicit:
                err.write(
                    f"sevpipe: dead letter {letter.id} was retried already at "
                    f"{letter.retried_at.isoformat() if letter.retried_at else '?'} "
                    f"(event {letter.retried.event_id} on {letter.retried.topic}); "
                    "nothing was changed\n"
                )
                refused += 1
            continue
        try:
            envelope = letter.envelope()
        except ValueError as exc:
            first = str(exc).splitlines()[:3]
            err.write(
                f"sevpipe: dead letter {letter.id} cannot be retried: its record is not a valid "
                f"event envelope ({' '.join(' '.join(first).split())}); nothing was changed\n"
            )
            refused += 1
            continue
        offset = await retry_one(eventlog, letter, envelope)
        where = f"offset {offset}" if offset is not None else "already in the log"
        out.write(
            f"retried {letter.id}: {envelope.type} {envelope.id} appended to "
            f"{letter.data.original.topic} again ({where})\n"
        )
        done += 1
    if not explicit:
        out.write(f"{done} retried, {refused} cannot be retried\n")
    return 1 if refused else 0


def _find(letters: Sequence[Letter], letter_id: str, err: TextIO) -> Letter | None:
    for letter in letters:
        if letter.id == letter_id:
            return letter
    err.write(f"sevpipe: no dead letter {letter_id!r} (see sevpipe deadletter list)\n")
    return None


async def run(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The ``deadletter`` command; its exit code."""
    from sevpipe.backends import open_eventlog  # noqa: PLC0415 - the CLI starts fast

    action = args.deadletter_command
    if action == "retry" and bool(args.id) == bool(args.all):
        raise SettingsError("deadletter retry: give one dead letter id, or --all")
    try:
        since = parse_time(args.since) if getattr(args, "since", None) else None
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    async with open_eventlog(settings, create=False) as eventlog:
        letters = await load(eventlog, since=since, stage=getattr(args, "stage", None))
        if action == "list":
            if args.format == "json":
                out.write(orjson.dumps([x.summary() for x in letters]).decode() + "\n")
            else:
                write_table(letters, out)
            return 0
        if action == "retry" and args.all:
            return await retry(eventlog, letters, explicit=False, out=out, err=err)
        letter = _find(letters, args.id, err)
        if letter is None:
            return 1
        if action == "show":
            out.write(orjson.dumps(letter.detail(), option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        return await retry(eventlog, [letter], explicit=True, out=out, err=err)
