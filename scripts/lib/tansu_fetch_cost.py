"""Shows that Tansu's CPU grows with the length of the partitions a consumer fetches from (docs/BROKERS.md,
"Tansu's fetches cost more as a partition grows"): one producer appends about 1,000 records a second, 5 at a time
every 5 ms (as the Kafka relay's claims do at 1,000 orders/s), to a new 3-partition topic while one consumer reads
it as the pipeline's does (`fetch.wait.max.ms`, default 10); Tansu's CPU is read each second. With `consumer=0`
nothing fetches, and the appends alone cost little and do not grow.

    eval "$(scripts/services up)"
    "$SERVICES_PYTHON" scripts/lib/tansu_fetch_cost.py [seconds=12] [consumer=1] [fetch_wait_ms=10]

Measured on Tansu 0.6.0 (memory engine), 400-byte records, three runs on a freshly started broker: with the
consumer, Tansu's CPU went from 60-120 to 400-550 ms a second within 12 s; with fetch.wait.max.ms=25, from 20 to
350; without a consumer, 20 to 80 ms a second throughout."""
import os
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench_common import EachSecond, process_counters, tansu_pid

brokers = os.environ["KAFKA_BROKERS"]
seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 12
consuming = (sys.argv[2] if len(sys.argv) > 2 else "1") == "1"
fetch_wait_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 10
tansu = tansu_pid()
topic = "fetch-cost-" + uuid.uuid4().hex[:8]
admin = AdminClient({"bootstrap.servers": brokers})
admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
stop, consumed = threading.Event(), [0]


def consume():
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": topic, "enable.auto.commit": False,
                         "fetch.wait.max.ms": fetch_wait_ms})
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(3)])
    while not stop.is_set():
        message = consumer.poll(0.2)
        consumed[0] += message is not None and not message.error()
    consumer.close()


reader = threading.Thread(target=consume)
if consuming:
    reader.start()
cpu = EachSecond(lambda: process_counters(tansu)[0])
start, sent = time.monotonic(), 0
while time.monotonic() - start < seconds:
    for _ in range(5):
        producer.produce(topic, b"x" * 400, key=uuid.uuid4().bytes)
    sent += 5
    producer.poll(0)
    time.sleep(0.005)
per_second = [round(seconds_used * 1000) for seconds_used in cpu.stop()]
producer.flush(10)
stop.set()
if consuming:
    reader.join()
admin.delete_topics([topic])
reading = f"one consumer (fetch.wait.max.ms={fetch_wait_ms}) read {consumed[0]:,}" if consuming else "no consumer"
print(f"{sent:,} records in {seconds} s, {reading}: Tansu CPU ms per second, second by second: {per_second}")
