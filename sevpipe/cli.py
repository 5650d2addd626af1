"""The ``sevpipe`` command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sevpipe import actions_cli, deadletter_cli, evidence_cli, settings_doc
from sevpipe.settings import Settings, SettingsError, load_settings

EXIT_USAGE = 2


def _runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run
    return uvloop.run


def _add_settings_args(p: argparse.ArgumentParser, *, server: bool) -> None:
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument(
        "--data-dir", type=Path, help="data dir (default ./.sevpipe; env SEVPIPE_DATA_DIR)"
    )
    if server:
        p.add_argument("--host", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 9095)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sevpipe", description="Alertmanager webhooks onto a durable, replayable event log."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every stage in one process (embedded default)")
    _add_settings_args(run, server=True)
    ingest = sub.add_parser("ingest", help="the HTTP edge alone: receiver and incidents API")
    _add_settings_args(ingest, server=True)
    classify = sub.add_parser("classify", help="the classifier stage alone (metrics on --port)")
    _add_settings_args(classify, server=True)
    notify = sub.add_parser("notify", help="the comms stage alone (metrics on --port)")
    _add_settings_args(notify, server=True)
    act = sub.add_parser("act", help="the actions stage alone (metrics on --port)")
    _add_settings_args(act, server=True)

    replay = sub.add_parser("replay", help="print the event log")
    _add_settings_args(replay, server=False)
    replay.add_argument("--topic", action="append", help="topic to print (repeatable; default all)")
    replay.add_argument("--since", help="from this time: 90m, 1h30m, 7d ago, or ISO 8601")
    replay.add_argument("--until", help="up to this time (exclusive)")
    replay.add_argument("--from-offset", type=int, help="from this offset (inclusive)")
    replay.add_argument("--format", choices=("jsonl", "table"), default="jsonl")

    send = sub.add_parser("send", help="POST a webhook body (file, or - for stdin)")
    send.add_argument("file", help="JSON webhook body")
    send.add_argument("--url", default="http://127.0.0.1:9095/api/v1/alerts")
    send.add_argument("--token", help="bearer token (default env SEVPIPE_AUTH_TOKEN)")
    send.add_argument("--user", help="basic auth user:password")
    send.add_argument("--timeout", type=float, default=10.0)

    schemas = sub.add_parser("schemas", help="write the JSON Schema of every event type")
    schemas.add_argument("--out", type=Path, required=True, help="folder to write into")

    policy = sub.add_parser("policy", help="the severity policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    show = policy_sub.add_parser("show", help="print the policy in force (default: the runbook's)")
    _add_settings_args(show, server=False)

    playbooks = sub.add_parser("playbooks", help="the remediation playbooks")
    playbooks_sub = playbooks.add_subparsers(
        dest="playbooks_command", required=True, metavar="ACTION"
    )
    show_books = playbooks_sub.add_parser(
        "show", help="print the playbooks in force (default: the runbook's)"
    )
    _add_settings_args(show_books, server=False)

    check = sub.add_parser("check-config", help="validate a settings or policy YAML file")
    check.add_argument("file", type=Path)

    rebuild = sub.add_parser("rebuild", help="re-create the store from the event log")
    _add_settings_args(rebuild, server=False)

    backtest = sub.add_parser("backtest", help="replay alert history through another policy")
    _add_settings_args(backtest, server=False)
    backtest.add_argument("--policy", type=Path, required=True, help="the candidate policy")
    backtest.add_argument("--since", help="from this time: 90m, 1h30m, 7d ago, or ISO 8601")
    backtest.add_argument("--until", help="up to this time (exclusive)")
    backtest.add_argument("--format", choices=("table", "json"), default="table")

    deadletter_cli.add_parser(sub, _add_settings_args)
    actions_cli.add_parsers(sub)
    evidence_cli.add_parser(sub)
    settings_doc.add_parser(sub)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        data_dir=args.data_dir,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )


ROLES_OF = {
    "run": {"ingest", "classify", "notify"},
    "ingest": {"ingest"},
    "classify": {"classify"},
    "notify": {"notify"},
    "act": {"act"},
}


def _cmd_serve(args: argparse.Namespace) -> int:
    from sevpipe.logs import setup_logging  # noqa: PLC0415 - keep `sevpipe --help` fast
    from sevpipe.serve import serve  # noqa: PLC0415

    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    tune_gc()
    roles = set(ROLES_OF[args.command])
    if args.command == "run" and (settings.kubeconfig or settings.inventory_file or settings.aws):
        roles.add("act")  # remediation needs something to act on
    return _runner()(serve(settings, frozenset(roles)))


def tune_gc() -> None:
    """A server makes many short-lived objects per request and few cycles: keep what was
    loaded at start out of every collection, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _cmd_replay(args: argparse.Namespace) -> int:
    from schemas import TOPICS  # noqa: PLC0415
    from sevpipe.backends import open_eventlog  # noqa: PLC0415
    from sevpipe.replay import write_jsonl, write_table  # noqa: PLC0415

    settings = _settings(args)
    since, until = _times(args)
    for topic in args.topic or ():
        if topic not in TOPICS:  # likely a typo: say so rather than print nothing
            sys.stderr.write(f"sevpipe: note: {topic!r} is not one of {', '.join(TOPICS)}\n")

    async def main() -> int:
        async with open_eventlog(settings, create=False) as eventlog:
            records = eventlog.read(
                args.topic, from_offset=args.from_offset, since=since, until=until
            )
            writer = write_jsonl if args.format == "jsonl" else write_table
            await writer(records, sys.stdout)
        return 0

    return _runner()(main())


def _cmd_send(args: argparse.Namespace) -> int:
    from sevpipe.send import send  # noqa: PLC0415

    return _runner()(send(args.file, args.url, args.token, args.user, args.timeout))


def _cmd_schemas(args: argparse.Namespace) -> int:
    from sevpipe.schemafiles import write_schemas  # noqa: PLC0415

    for path in write_schemas(args.out):
        sys.stdout.write(f"{path}\n")
    return 0


def _times(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    from schemas.durations import parse_time  # noqa: PLC0415

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return since, until


def _cmd_playbooks(args: argparse.Namespace) -> int:
    import yaml  # noqa: PLC0415

    books = _settings(args).playbooks()
    data = books.model_dump(mode="json", exclude_defaults=True)
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True))
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    from sevpipe.classify_cli import show_policy  # noqa: PLC0415

    show_policy(_settings(args), sys.stdout)
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from sevpipe.classify_cli import check_config  # noqa: PLC0415

    check_config(args.file, sys.stdout)
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from sevpipe.classify_cli import rebuild  # noqa: PLC0415

    settings = _settings(args)

    async def main() -> int:
        await rebuild(settings, sys.stdout)
        return 0

    return _runner()(main())


def _cmd_backtest(args: argparse.Namespace) -> int:
    from sevpipe.classify_cli import run_backtest  # noqa: PLC0415

    settings = _settings(args)
    since, until = _times(args)

    async def main() -> int:
        await run_backtest(
            settings, args.policy, since=since, until=until, fmt=args.format, out=sys.stdout
        )
        return 0

    return _runner()(main())


def _cmd_actions(args: argparse.Namespace) -> int:
    return _runner()(actions_cli.run(args))


def _cmd_deadletter(args: argparse.Namespace) -> int:
    return _runner()(deadletter_cli.run(_settings(args), args, sys.stdout, sys.stderr))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_serve,
    "ingest": _cmd_serve,
    "classify": _cmd_serve,
    "notify": _cmd_serve,
    "act": _cmd_serve,
    "playbooks": _cmd_playbooks,
    "replay": _cmd_replay,
    "send": _cmd_send,
    "schemas": _cmd_schemas,
    "policy": _cmd_policy,
    "check-config": _cmd_check_config,
    "rebuild": _cmd_rebuild,
    "backtest": _cmd_backtest,
    "deadletter": _cmd_deadletter,
    "actions": _cmd_actions,
    "approve": _cmd_actions,
    "deny": _cmd_actions,
    "evidence": lambda args: _runner()(evidence_cli.run(args)),
    "settings": settings_doc.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from eventlog import EventLogError  # noqa: PLC0415
    from store.base import StoreError  # noqa: PLC0415

    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        sys.stderr.write(f"sevpipe: {exc}\n")
        return EXIT_USAGE
    except (EventLogError, StoreError) as exc:
        sys.stderr.write(f"sevpipe: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
