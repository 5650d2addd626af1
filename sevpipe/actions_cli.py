"""``sevpipe actions list|show``, ``sevpipe approve ID``, ``sevpipe deny ID``: the actions API
from a terminal, as the operator whose token is given (``--token``, ``--token-file``, or
``SEVPIPE_TOKEN``). The server records that operator as the one who decided."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import orjson

DEFAULT_URL = "http://127.0.0.1:9095"
EXIT_USAGE = 2


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"sevpipe's HTTP API (default env SEVPIPE_URL or {DEFAULT_URL})")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", help="an operator's bearer token (default env SEVPIPE_TOKEN)")
    token.add_argument("--token-file", help="a file holding the operator's bearer token")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = sub.add_parser("actions", help="remediation actions: list and show")
    verbs = actions.add_subparsers(dest="actions_command", required=True, metavar="ACTION")
    listing = verbs.add_parser("list", help="actions, newest first")
    listing.add_argument("--incident", help="only this incident's")
    listing.add_argument("--status", help="only in this state, e.g. awaiting_approval")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--format", choices=("table", "json"), default="table")
    show = verbs.add_parser("show", help="one action, as JSON")
    show.add_argument("id", help="the action's id (from actions list)")
    approve = sub.add_parser("approve", help="approve an action that awaits approval")
    approve.add_argument("id", help="the action's id (from actions list)")
    approve.add_argument("--reason", help="why (recorded with the approval)")
    deny = sub.add_parser("deny", help="deny an action that awaits approval")
    deny.add_argument("id", help="the action's id (from actions list)")
    deny.add_argument("--reason", required=True, help="why (recorded with the denial)")
    for p in (listing, show, approve, deny):
        _client_args(p)


class Usage(Exception):
    """A mistake in the command line or its environment."""


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            return Path(args.token_file).read_text("utf-8").strip()
        except OSError as exc:
            raise Usage(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
    return args.token or os.environ.get("SEVPIPE_TOKEN") or None


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any], bytes | None]:
    """Method, path, query and body of the call ``args`` asks for."""
    if args.command == "actions" and args.actions_command == "list":
        query = {"limit": str(args.limit)}
        if args.incident:
            query["incident"] = args.incident
        if args.status:
            query["status"] = args.status
        return "GET", "/api/v1/actions", query, None
    path = f"/api/v1/actions/{quote(args.id, safe='')}"
    if args.command == "actions":
        return "GET", path, {}, None
    verb = "approve" if args.command == "approve" else "deny"
    body = orjson.dumps({"reason": args.reason} if args.reason else {})
    return "POST", f"{path}/{verb}", {}, body


async def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        token = _token(args)
    except Usage as exc:
        err.write(f"sevpipe: {exc}\n")
        return EXIT_USAGE
    base = (args.url or os.environ.get("SEVPIPE_URL") or DEFAULT_URL).rstrip("/")
    method, path, query, body = _request(args)
    headers = {"Content-Type": "application/json", "User-Agent": "sevpipe-cli"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as session,
            session.request(method, base + path, params=query, data=body, headers=headers) as resp,
        ):
            status, text = resp.status, await resp.text()
            replayed = resp.headers.get("Idempotent-Replayed") == "true"
    except (aiohttp.ClientError, TimeoutError) as exc:
        err.write(f"sevpipe: cannot reach {base}: {exc or type(exc).__name__}\n")
        return 1
    try:
        answer: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        answer = None
    if status >= 400:
        why = answer.get("error") if isinstance(answer, dict) else None
        err.write(f"sevpipe: {status}: {why or text.strip()}\n")
        return 1
    if args.command == "actions" and args.actions_command == "list" and args.format == "table":
        out.write(table(answer["actions"]))
    elif args.command in ("approve", "deny"):
        again = " (already so: nothing changed)" if replayed else ""
        out.write(f"{answer['action_id']} {answer['state']} by {answer['actor']}{again}\n")
    else:
        out.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def table(actions: list[dict[str, Any]]) -> str:
    """One line per action: what a person deciding needs first."""
    rows = [("ID", "STATE", "INCIDENT", "STEP", "ACTION", "TARGET", "BY / EXPIRES")]
    for a in actions:
        t = a["target"]
        target = "/".join(p for p in (t["kind"], t["namespace"], t["name"]) if p)
        waits = a["state"] == "awaiting_approval"
        when = a.get("actor") or (a.get("expires_at") if waits else "") or ""
        ids = (a["action_id"], a["state"], a["incident_id"], a["step"], a["action"])
        rows.append((*ids, target, when))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"
