"""Confluent's Python client against the Switchyard registry and a real broker.

Registers, fetches and looks up schemas with SchemaRegistryClient, then round-trips a
record through AvroSerializer -> Kafka -> AvroDeserializer. Environment:
SWITCHYARD_REGISTRY_URL, SWITCHYARD_BOOTSTRAP_SERVERS, SWITCHYARD_SCHEMA_DIR.
Exits non-zero with the failing check on any mismatch.
"""

import datetime
import json
import os
import sys
import time
import uuid

import confluent_kafka
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

REGISTRY = os.environ["SWITCHYARD_REGISTRY_URL"]
BOOTSTRAP = os.environ["SWITCHYARD_BOOTSTRAP_SERVERS"]
SCHEMA_DIR = os.environ["SWITCHYARD_SCHEMA_DIR"]
TOPIC = "py-readings"
SUBJECT = TOPIC + "-value"

checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1


def expect_error(call, status, code, what):
    try:
        call()
    except SchemaRegistryError as e:
        check((e.http_status_code, e.error_code) == (status, code), f"{what}: got {e.http_status_code}/{e.error_code}")
        return
    check(False, f"{what}: no error raised")


with open(os.path.join(SCHEMA_DIR, "sensor-reading.avsc")) as f:
    reading_schema = f.read()
evolved = json.loads(reading_schema)
evolved["fields"].append({"name": "unit", "type": "string", "default": ""})
evolved_schema = json.dumps(evolved)
broken = json.loads(reading_schema)
broken["fields"][1]["type"] = "string"  # device_id long -> string: unreadable either way

client = SchemaRegistryClient({"url": REGISTRY})

# Registry API through Confluent's client.
schema_id = client.register_schema(SUBJECT, Schema(reading_schema, "AVRO"))
check(isinstance(schema_id, int) and schema_id > 0, "register_schema returns an id")
check(client.register_schema(SUBJECT, Schema(reading_schema, "AVRO")) == schema_id, "re-registering is idempotent")
fetched = client.get_schema(schema_id)
check(json.loads(fetched.schema_str) == json.loads(reading_schema), "get_schema returns the schema")
latest = client.get_latest_version(SUBJECT)
check((latest.schema_id, latest.version, latest.subject) == (schema_id, 1, SUBJECT), "get_latest_version")
looked_up = client.lookup_schema(SUBJECT, Schema(reading_schema, "AVRO"))
check((looked_up.schema_id, looked_up.version) == (schema_id, 1), "lookup_schema")
check(SUBJECT in client.get_subjects(), "get_subjects lists the subject")
check(client.get_versions(SUBJECT) == [1], "get_versions")
check(client.test_compatibility(SUBJECT, Schema(evolved_schema, "AVRO")) is True, "adding a defaulted field is compatible")
check(client.test_compatibility(SUBJECT, Schema(json.dumps(broken), "AVRO")) is False, "changing a type is not")
expect_error(lambda: client.register_schema(SUBJECT, Schema(json.dumps(broken), "AVRO")), 409, 409, "incompatible registration")
expect_error(lambda: client.get_schema(987654), 404, 40403, "unknown id")
expect_error(lambda: client.get_latest_version("no-such-subject"), 404, 40401, "unknown subject")
check(client.get_compatibility() == "BACKWARD", "default compatibility is BACKWARD")
client.set_compatibility(SUBJECT, "FULL")
check(client.get_compatibility(SUBJECT) == "FULL", "subject compatibility set")

# A record through Kafka with Confluent's serializers.
admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
for future in admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)]).values():
    future.result(timeout=30)

serializer = AvroSerializer(client, evolved_schema, conf={"auto.register.schemas": True})
deserializer = AvroDeserializer(client)
sensor_time = datetime.datetime(2023, 6, 1, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)
record = {
    "modem_id": "356938035643809",
    "device_id": 3,
    "sensor": "temp",
    "timestamp": sensor_time,
    "value": -7,
    "data": (-7).to_bytes(4, "big", signed=True),
    "received_at": sensor_time + datetime.timedelta(seconds=1),
    "sequence": 12,
    "unit": "C",
}
producer = Producer({"bootstrap.servers": BOOTSTRAP})
ctx = SerializationContext(TOPIC, MessageField.VALUE)
producer.produce(TOPIC, key=record["modem_id"], value=serializer(record, ctx))
check(producer.flush(30) == 0, "record delivered")
check(client.get_versions(SUBJECT) == [1, 2], "the serializer registered the evolved schema as version 2")

consumer = Consumer(
    {"bootstrap.servers": BOOTSTRAP, "group.id": "py-" + uuid.uuid4().hex, "auto.offset.reset": "earliest"}
)
consumer.subscribe([TOPIC])
message = None
deadline = time.time() + 60
while message is None and time.time() < deadline:
    m = consumer.poll(1.0)
    if m is not None and m.error() is None:
        message = m
consumer.close()
check(message is not None, "record consumed")
check(message.value()[0] == 0, "Confluent wire format: magic byte 0")
decoded = deserializer(message.value(), ctx)
check(decoded == record, f"round trip: {decoded!r} != {record!r}")

print(f"confluent-kafka {confluent_kafka.version()[0]}: {checks} checks passed")
