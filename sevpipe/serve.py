"""``sevpipe run``: every stage that exists, in one process, on the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from eventlog import EmbeddedLog
from ingest import Receiver, ReceiverMetrics
from sevpipe.http import build_app
from sevpipe.settings import Settings

log = logging.getLogger(__name__)

EXAMPLE_ALERT = (
    '{"version":"4","status":"firing","receiver":"sevpipe","groupKey":"{}:{alertname=\\"Demo\\"}",'
    '"alerts":[{"status":"firing","labels":{"alertname":"Demo","service":"checkout",'
    '"impact":"error_rate"},"annotations":{"summary":"checkout errors above 5%"},'
    '"startsAt":"2026-01-01T00:00:00Z"}]}'
)


def curl_example(base_url: str, settings: Settings) -> str:
    creds = settings.credentials()
    auth = ""
    if creds.bearer_token:
        auth = ' -H "Authorization: Bearer $SEVPIPE_AUTH_TOKEN"'
    elif creds.basic_username is not None:
        auth = f' -u "{creds.basic_username}:$SEVPIPE_BASIC_AUTH_PASSWORD"'
    return (
        f"curl -sS -X POST {base_url}/api/v1/alerts -H 'Content-Type: application/json'{auth}"
        f" -d '{EXAMPLE_ALERT}'"
    )


@contextlib.asynccontextmanager
async def open_eventlog(settings: Settings) -> AsyncIterator[EmbeddedLog]:
    eventlog = EmbeddedLog(settings.eventlog_path, synchronous=settings.fsync)
    await eventlog.start()
    try:
        yield eventlog
    finally:
        await eventlog.close()


async def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests and close the log."""
    settings.check_exposure()
    registry = CollectorRegistry()
    async with open_eventlog(settings) as eventlog:
        receiver = Receiver(settings.receiver_config(), eventlog, ReceiverMetrics(registry))
        app = build_app(receiver.routes(), eventlog, registry, settings.max_body_bytes)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
            await site.start()
            host, port = runner.addresses[0][:2]
            shown = f"[{host}]" if ":" in host else host
            base_url = f"http://{shown}:{port}"
            sys.stdout.write(
                f"sevpipe listening on {base_url} (data dir {settings.data_dir})\n"
                f"Alertmanager webhook URL: {base_url}/api/v1/alerts\n"
                f"Try it:\n  {curl_example(base_url, settings)}\n"
            )
            sys.stdout.flush()
            await _wait_for_signal()
            log.info("shutting down: draining in-flight requests")
        finally:
            await runner.cleanup()
    log.info("stopped")


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
