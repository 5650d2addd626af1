"""sevpipe picks partitions itself (cached) and must pick what the Java client would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from eventlog.kafka import partition_index


def test_partition_index_is_the_default_partitioners_choice() -> None:
    keys = [f'{{}}:{{alertname="A{i}"}}'.encode() for i in range(500)] + [b"", "é".encode()]
    for count in (1, 3, 7, 12):
        partitions = list(range(count))
        for key in keys:
            expected = DefaultPartitioner()(key, partitions, partitions)
            assert partition_index(key, count) == expected
