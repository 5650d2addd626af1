"""``sevpipe schemas --out DIR``: JSON Schemas that real webhooks and real log events satisfy."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import validator_for

from .backends import BACKENDS, backend_named
from .harness import Launcher, fixture_files, replay, sevpipe

pytestmark = pytest.mark.e2e

REQUIRED = {"envelope", "alertmanager.webhook", "alert.firing", "alert.resolved"}


def write_schemas(out: Path) -> dict[str, dict[str, Any]]:
    """Run the command; the schemas it wrote, by name (file name less ``.schema.json``)."""
    done = sevpipe("schemas", "--out", str(out))
    assert done.returncode == 0, done.stderr
    listed = [Path(line) for line in done.stdout.splitlines()]
    assert sorted(listed) == sorted(out.iterdir())
    schemas: dict[str, dict[str, Any]] = {}
    for path in listed:
        assert path.name.endswith(".schema.json"), path
        schema = orjson.loads(path.read_bytes())
        assert isinstance(schema, dict)
        schemas[path.name.removesuffix(".schema.json")] = schema
    return schemas


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return Draft202012Validator(schema)


def test_schemas_are_valid_json_schemas_one_per_event_type(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "schemas"  # created as needed
    schemas = write_schemas(out)
    assert set(schemas) >= REQUIRED
    for name, schema in schemas.items():
        validator(schema)  # raises SchemaError if not a valid schema
        assert schema.get("type") == "object", name
        assert schema.get("properties"), name


def test_every_real_webhook_satisfies_the_webhook_schema(tmp_path: Path) -> None:
    webhook = validator(write_schemas(tmp_path)["alertmanager.webhook"])
    for fixture in fixture_files():
        body = orjson.loads(fixture.read_bytes())
        webhook.validate(body)
    invalid = orjson.loads(fixture_files()[0].read_bytes())
    invalid["status"] = "pending"
    assert not webhook.is_valid(invalid)
    del invalid["alerts"]
    assert not webhook.is_valid(invalid)


@pytest.fixture(scope="module", params=BACKENDS)
def log_events(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict[str, Any]]]:
    """Every event of a log that a real server wrote for all the fixtures (on Kafka: as the
    envelopes come back from their ``ce_*`` headers and JSON values)."""
    with backend_named(request.param, request) as backend:
        workdir = tmp_path_factory.mktemp("schemas-log")
        launch = Launcher(workdir)
        try:
            server = launch.start(workdir / "data", env=backend.env)
            for fixture in fixture_files():
                done = sevpipe("send", str(fixture), "--url", server.alerts_url)
                assert done.returncode == 0, done.stderr
            assert server.stop() == 0
        finally:
            launch.close()
        yield replay(workdir / "data", env=backend.env)


def test_alert_events_from_the_log_satisfy_their_schemas(
    log_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    schemas = write_schemas(tmp_path / "schemas")
    envelope = validator(schemas["envelope"])
    alert_events = [e for e in log_events if e["type"] in ("alert.firing", "alert.resolved")]
    assert {e["type"] for e in alert_events} == {"alert.firing", "alert.resolved"}
    for event in alert_events:
        envelope.validate(event)
        validator(schemas[event["type"]]).validate(event["data"])

    broken = copy.deepcopy(alert_events[0])
    del broken["data"]["fingerprint"]
    with pytest.raises(ValidationError, match="fingerprint"):
        validator(schemas[broken["type"]]).validate(broken["data"])
    del broken["subject"]
    assert not envelope.is_valid(broken)


def test_every_event_type_in_the_log_has_a_schema(
    log_events: list[dict[str, Any]], tmp_path: Path
) -> None:
    schemas = write_schemas(tmp_path / "schemas")
    envelope = validator(schemas["envelope"])
    missing = sorted({e["type"] for e in log_events} - set(schemas))
    assert not missing, f"sevpipe schemas writes no schema for {missing}"
    for event in log_events:
        envelope.validate(event)
        validator(schemas[event["type"]]).validate(event["data"])
