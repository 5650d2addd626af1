"""postgres_sslmode and Redis URLs reach the real servers' clients. The test servers speak
no TLS: ``disable`` connects, ``require`` is refused by the server (so TLS was asked for)."""

from __future__ import annotations

import pytest
from services import Services, fresh_database, unique_name

from sevpipe.backends import open_coordinator, open_store
from sevpipe.settings import Settings
from store import StoreUnavailable


async def test_postgres_sslmode_disable_connects(services: Services) -> None:
    async with fresh_database(services, "tls") as dsn:
        settings = Settings(postgres_dsn=dsn, postgres_sslmode="disable")
        async with open_store(settings) as store:
            assert store is not None


async def test_postgres_sslmode_require_asks_for_tls(services: Services) -> None:
    async with fresh_database(services, "tls") as dsn:
        settings = Settings(postgres_dsn=dsn, postgres_sslmode="require")
        with pytest.raises(StoreUnavailable, match="SSL"):
            async with open_store(settings):
                pass


async def test_redis_url_reaches_the_coordinator(services: Services) -> None:
    settings = Settings(redis_url=services.redis_url, kafka_topic_prefix=unique_name("tls"))
    async with open_coordinator(settings) as coord:
        await coord.start_cooldown("k", 5)
        assert await coord.cooldown_remaining("k") > 0


async def test_a_rediss_url_asks_for_tls(services: Services) -> None:
    url = services.redis_url.replace("redis://", "rediss://", 1)
    settings = Settings(redis_url=url, kafka_topic_prefix=unique_name("tls"))
    with pytest.raises(StoreUnavailable):
        async with open_coordinator(settings):
            pass
