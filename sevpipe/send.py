"""``sevpipe send FILE``: post a webhook body the way Alertmanager does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import aiohttp


def _read_body(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    return Path(file).read_bytes()


async def send(file: str, url: str, token: str | None, user: str | None, timeout_s: float) -> int:
    try:
        body = _read_body(file)
    except OSError as exc:
        sys.stderr.write(f"sevpipe: cannot read {file}: {exc.strerror}\n")
        return 1
    headers = {"Content-Type": "application/json", "User-Agent": "sevpipe-send"}
    token = token or os.environ.get("SEVPIPE_AUTH_TOKEN")
    auth = None
    if user:
        name, _, password = user.partition(":")
        auth = aiohttp.BasicAuth(name, password)
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.post(url, data=body, headers=headers, auth=auth) as resp,
        ):
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        sys.stderr.write(f"sevpipe: cannot post to {url}: {exc or type(exc).__name__}\n")
        return 1
    out = sys.stdout if status < 400 else sys.stderr
    out.write(f"{status} {text}\n")
    return 0 if status < 400 else 1
