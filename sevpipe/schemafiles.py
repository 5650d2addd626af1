"""``sevpipe schemas --out DIR``: one JSON Schema per event type, plus the envelope."""

from __future__ import annotations

from pathlib import Path

import orjson

from schemas import EVENT_MODELS, Envelope, Webhook


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    documents: dict[str, object] = {
        "envelope": Envelope.model_json_schema(),
        "alertmanager.webhook": Webhook.model_json_schema(by_alias=True),
    }
    for event_type, model in EVENT_MODELS.items():
        documents[event_type] = model.model_json_schema()
    written = []
    for name, schema in documents.items():
        path = out / f"{name}.schema.json"
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        written.append(path)
    return written
