"""``sevpipe evidence INCIDENT_ID [--out DIR] [--name NAME]``: an incident's evidence bundles
from the HTTP API, as the operator whose token is given (``--token``, ``--token-file``, or
``SEVPIPE_TOKEN``).

Without ``--out`` or ``--name`` it lists them. With ``--out DIR`` it downloads each of them
(or only ``--name``) into DIR as ``<name>.tar.gz``; ``--name`` alone downloads that one into
the current directory. Each download is checked against the sha256 the listing gave and
written atomically (a temp file renamed): a bundle that does not match leaves no file and
makes the command fail.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import orjson

from sevpipe.actions_cli import DEFAULT_URL, EXIT_USAGE, Usage, _client_args, _token

SUFFIX = ".tar.gz"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evidence", help="an incident's evidence bundles: list and download")
    p.add_argument("incident", metavar="INCIDENT_ID", help="the incident's id")
    p.add_argument("--out", type=Path, help="download the bundles into this directory")
    p.add_argument("--name", help="only this bundle (alone: download it into .)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="the listing's")
    _client_args(p)


class Failed(Exception):
    """The server refused, or a download did not match its listing."""


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tmp.open("xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as resp:
        body = await resp.read()
        if resp.status >= 400:
            try:
                why = orjson.loads(body).get("error")
            except (orjson.JSONDecodeError, AttributeError):
                why = None
            raise Failed(f"{resp.status}: {why or body[:200].decode(errors='replace').strip()}")
        return body


def table(bundles: list[dict[str, Any]]) -> str:
    rows = [("NAME", "SIZE", "CREATED", "ACTION", "SHA256")]
    for b in bundles:
        rows.append(
            (b["name"], str(b["size"]), b["created_at"], b["action_id"] or "", b["sha256"] or "")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


async def _fetch(args: argparse.Namespace, base: str, headers: dict[str, str], out: TextIO) -> None:
    timeout = aiohttp.ClientTimeout(sock_connect=args.timeout, sock_read=args.timeout)
    path = f"{base}/api/v1/incidents/{quote(args.incident, safe='')}/evidence"
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        bundles: list[dict[str, Any]] = orjson.loads(await _get(session, path))["bundles"]
        if args.name:
            wanted = args.name.removesuffix(SUFFIX)
            bundles = [b for b in bundles if b["name"] == wanted]
            if not bundles:
                raise Failed(f"incident {args.incident} has no evidence bundle {wanted}")
        if args.out is None and not args.name:
            listing = orjson.dumps(bundles, option=orjson.OPT_INDENT_2).decode() + "\n"
            out.write(table(bundles) if args.format == "table" else listing)
            return
        folder: Path = args.out or Path()
        for bundle in bundles:
            data = await _get(session, f"{path}/{quote(bundle['name'], safe='')}")
            digest = hashlib.sha256(data).hexdigest()
            if bundle["sha256"] and digest != bundle["sha256"]:
                raise Failed(
                    f"{bundle['name']}: downloaded sha256 {digest} is not the listed "
                    f"{bundle['sha256']}; nothing written"
                )
            target = folder / f"{Path(bundle['name']).name}{SUFFIX}"
            await asyncio.to_thread(_save, target, data)
            out.write(f"{target}  {len(data)} bytes  sha256 {digest}\n")


async def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        token = _token(args)
    except Usage as exc:
        err.write(f"sevpipe: {exc}\n")
        return EXIT_USAGE
    base = (args.url or os.environ.get("SEVPIPE_URL") or DEFAULT_URL).rstrip("/")
    headers = {"User-Agent": "sevpipe-cli"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        await _fetch(args, base, headers, out)
    except Failed as exc:
        err.write(f"sevpipe: {exc}\n")
        return 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        err.write(f"sevpipe: cannot reach {base}: {exc or type(exc).__name__}\n")
        return 1
    except OSError as exc:
        err.write(f"sevpipe: cannot write: {exc}\n")
        return 1
    return 0
