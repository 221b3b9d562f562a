"""The producer's partitioner picks the partition Kafka's own clients pick for a key: one
incident's events must land on one partition whichever client (or version of ours) wrote them."""

from __future__ import annotations

import ctypes
import random

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2

from opsledger.bus.producer import kafka_partition, make_producer
from opsledger.settings import ServiceSettings

# org.apache.kafka.common.utils.UtilsTest.testMurmur2: the Java client's hash, as a signed int.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("key", "java_hash"), JAVA_MURMUR2.items())
def test_the_java_clients_partition(key: str, java_hash: int) -> None:
    partitions = list(range(12))
    expected = (ctypes.c_uint32(java_hash).value & 0x7FFFFFFF) % len(partitions)
    assert kafka_partition(key.encode(), partitions, partitions) == expected
    # aiokafka's hash, the next test's reference, agrees with Java's too.
    assert ctypes.c_int32(murmur2(key.encode())).value == java_hash


def test_the_same_partition_as_aiokafkas_default_for_any_key() -> None:
    rng = random.Random(13)
    for _ in range(5_000):
        key = rng.randbytes(rng.randint(0, 70))  # every tail length, incident ids (36 bytes) among them
        partitions = list(range(rng.choice([1, 3, 6, 12, 50])))
        available = partitions[: max(1, len(partitions) // 2)]
        assert kafka_partition(key, partitions, available) == DefaultPartitioner()(key, partitions, available), key


def test_a_message_without_key_goes_to_an_available_partition() -> None:
    assert {kafka_partition(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
    assert {kafka_partition(None, [0, 1], []) for _ in range(50)} <= {0, 1}


async def test_the_producer_uses_it() -> None:
    producer = make_producer(ServiceSettings())  # not started: no broker needed
    assert producer._partitioner is kafka_partition
