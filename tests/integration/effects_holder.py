"""A holder of an effect's claim in a process of its own, for the kill -9 tests.

    effects_holder.py KIND EFFECT_ID LEASE    (the file or DSN in $SEVPIPE_TEST_EFFECTS_WHERE)

Prints ``{"ready": true}`` once the ledger is open, claims when a line arrives on stdin,
prints the claim as JSON, then waits forever: the test kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from store.effects import Claimed, EffectsLedger, InProgress, Unknown
from store.effects_embedded import EmbeddedEffectsLedger
from store.effects_postgres import PostgresEffectsLedger

WHERE_ENV = "SEVPIPE_TEST_EFFECTS_WHERE"  # the DSN travels by env, not on a command line


def say(doc: dict[str, object]) -> None:
    sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
    sys.stdout.buffer.flush()


async def main(kind: str, effect_id: str, lease: float) -> None:
    where = os.environ[WHERE_ENV]
    ledger: EffectsLedger = (
        EmbeddedEffectsLedger(Path(where)) if kind == "embedded" else PostgresEffectsLedger(where)
    )
    await ledger.start()
    say({"ready": True})
    await asyncio.to_thread(sys.stdin.readline)
    holder = f"holder-{os.getpid()}"
    claim = await ledger.claim(effect_id, holder=holder, lease=lease)
    doc: dict[str, object] = {"state": claim.state, "holder": holder}
    if isinstance(claim, Claimed | Unknown):
        doc["token"] = claim.token
    if isinstance(claim, InProgress):
        doc["by"] = claim.holder
    say(doc)
    await asyncio.Event().wait()  # held until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
