"""The Kafka event-log contract once more, through the test broker's SASL_SSL listener
(SCRAM-SHA-512, TLS checked against the test CA): append, read, consume, commit and lag, as
a secured production cluster serves them. The tests are test_eventlog_contract's own; only the
backend differs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import test_eventlog_contract as contract
from services import Services, unique_name

from eventlog import EventLogError, KafkaLog
from eventlog.kafka_security import KafkaSecurity
from sevpipe.backends import make_eventlog
from sevpipe.settings import Settings

eventlog = contract.eventlog

test_round_trip_keeps_envelopes_unchanged = contract.test_round_trip_keeps_envelopes_unchanged
test_events_of_one_key_keep_their_order = contract.test_events_of_one_key_keep_their_order
test_dedup_keys_within_a_process = contract.test_dedup_keys_within_a_process
test_group_resumes_from_its_commit_and_gets_uncommitted_records_again = (
    contract.test_group_resumes_from_its_commit_and_gets_uncommitted_records_again
)
test_group_lag_seen_from_outside_the_group = contract.test_group_lag_seen_from_outside_the_group
test_commit_covers_only_what_was_fetched = contract.test_commit_covers_only_what_was_fetched
test_read_by_topic = contract.test_read_by_topic
test_read_since_and_until_by_event_time = contract.test_read_since_and_until_by_event_time
test_read_from_offset = contract.test_read_from_offset
test_ping_and_a_closed_log = contract.test_ping_and_a_closed_log


def sasl_settings(services: Services, prefix: str) -> Settings:
    return Settings(
        kafka_bootstrap=services.kafka_sasl_bootstrap,
        kafka_topic_prefix=prefix,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=services.kafka_sasl_username,
        kafka_sasl_password=services.kafka_sasl_password,
        kafka_ssl_cafile=Path(services.kafka_sasl_cafile),
    )


@pytest.fixture
def backend(services: Services) -> contract.Backend:
    """The Kafka log as sevpipe makes it from its settings, on the SASL_SSL listener."""
    services.require_kafka_sasl()
    settings = sasl_settings(services, unique_name("contract-sasl") + ".")

    def open_log() -> KafkaLog:
        log = make_eventlog(settings)
        assert isinstance(log, KafkaLog)
        assert log.security.protocol == "SASL_SSL"
        return log

    return contract.Backend("kafka", open_log)


async def refused(log: KafkaLog, caplog: pytest.LogCaptureFixture, cause: str) -> None:
    """``log`` does not start, and aiokafka logged ``cause`` (its exception names only the
    bootstrap servers, at times)."""
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(EventLogError):
        await log.start()
    await log.close()
    assert cause in caplog.text


async def test_a_wrong_password_is_refused(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    services.require_kafka_sasl()
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=services.kafka_sasl_username,
        sasl_password="not-" + services.kafka_sasl_password,
        ssl_cafile=Path(services.kafka_sasl_cafile),
    )
    log = KafkaLog(
        services.kafka_sasl_bootstrap,
        topic_prefix=unique_name("contract-sasl") + ".",
        security=security,
        request_timeout=3,
    )
    await refused(log, caplog, "SaslAuthenticationFailed")


async def test_the_broker_certificate_is_checked(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the test CA (the system's CAs do not know it) TLS does not come up."""
    services.require_kafka_sasl()
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=services.kafka_sasl_username,
        sasl_password=services.kafka_sasl_password,
    )
    log = KafkaLog(
        services.kafka_sasl_bootstrap,
        topic_prefix=unique_name("contract-sasl") + ".",
        security=security,
        request_timeout=3,
    )
    await refused(log, caplog, "CERTIFICATE_VERIFY_FAILED")
