"""Read a topic from the beginning with Confluent's own Python client, decoding values with
its AvroDeserializer through the schema registry (an independent check of what Switchyard
writes). Prints one JSON line per record: key, record timestamp (ms) and value.

usage: read_topic.py BOOTSTRAP REGISTRY_URL TOPIC AT_LEAST [TIMEOUT_SECONDS]
"""
import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> int:
    bootstrap, registry, topic, at_least = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "switchyard-system-test-python",
        "enable.auto.commit": False,
    })
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen = 0
    deadline = time.time() + timeout
    while seen < at_least and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        value = deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
        kind, ms = message.timestamp()
        print(json.dumps({
            "key": message.key().decode() if message.key() else None,
            "timestamp_ms": ms,
            "value": value,
        }, default=str), flush=True)
        seen += 1
    consumer.close()
    return 0 if seen >= at_least else 1


if __name__ == "__main__":
    sys.exit(main())
