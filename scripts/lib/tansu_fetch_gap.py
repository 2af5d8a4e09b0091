"""Shows Tansu's fetch gap (docs/BROKERS.md): two idempotent producers append 7-record batches to one partition
while a consumer reads it from the start; the consumer reports every offset jump, and each skipped offset is read
again afterwards to show the record is in the log.

    eval "$(scripts/services up)"
    "$SERVICES_PYTHON" scripts/lib/tansu_fetch_gap.py [seconds=30] [producers=2]

Measured on Tansu 0.6.0 (memory engine): 2 producers, 30 s: 4 gaps of 2-8 records in 93,000 read (20 s: 1 gap of 7,
found in the log when read again); 1 producer, 30 s: none in 86,000."""
import os
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

brokers = os.environ["KAFKA_BROKERS"]
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30
producers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
topic = "fetch-gap-" + uuid.uuid4().hex[:8]
admin = AdminClient({"bootstrap.servers": brokers})
admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
stop = threading.Event()


def produce():
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
    while not stop.is_set():
        for _ in range(7):
            producer.produce(topic, b"x" * 500, key=uuid.uuid4().bytes, partition=0)
        producer.flush(10)


threads = [threading.Thread(target=produce) for _ in range(producers)]
for thread in threads:
    thread.start()
consumer = Consumer({"bootstrap.servers": brokers, "group.id": topic, "enable.auto.commit": False, "fetch.wait.max.ms": 10})
consumer.assign([TopicPartition(topic, 0, 0)])
previous, gaps, seen, end = -1, [], 0, time.time() + seconds
while time.time() < end:
    message = consumer.poll(0.2)
    if message is None or message.error():
        continue
    if message.offset() != previous + 1:
        gaps.append((previous + 1, message.offset()))
    previous, seen = message.offset(), seen + 1
stop.set()
for thread in threads:
    thread.join()
consumer.close()
# Read each skipped range again: the records are there.
present = 0
for start, stop_at in gaps:
    again = Consumer({"bootstrap.servers": brokers, "group.id": topic + "-again", "enable.auto.commit": False})
    again.assign([TopicPartition(topic, 0, start)])
    message = again.poll(10)
    present += message is not None and not message.error() and message.offset() == start
    again.close()
admin.delete_topics([topic])
print(f"{producers} producer(s), {seconds:.0f} s: consumed {seen:,} records, {len(gaps)} gaps "
      f"{[f'{a}..{b - 1}' for a, b in gaps[:10]]}; skipped ranges found in the log when read again: {present}/{len(gaps)}")
sys.exit(1 if gaps else 0)
