#!/usr/bin/env python3
"""Prints the headers of the first record with a given key on a Kafka topic, as one JSON object (run with
$SERVICES_PYTHON, which has confluent-kafka and its librdkafka 2.16).

    kafka_record_headers.py --brokers HOST:PORT --topic NAME --key KEY [--timeout 60]

Reads the topic from the beginning in a consumer group of its own (nothing is committed). Exit status 1 when no
such record arrived in time.
"""
import argparse, json, sys, time, uuid

from confluent_kafka import Consumer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    consumer = Consumer({
        "bootstrap.servers": args.brokers, "group.id": "headers-" + uuid.uuid4().hex, "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        # Tansu holds a group join for about the rebalance timeout: keep it short.
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "max.poll.interval.ms": 7000,
    })
    consumer.subscribe([args.topic])
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if (message.key() or b"").decode() == args.key:
                headers = {name: value.decode() for name, value in (message.headers() or [])}
                print(json.dumps({"partition": message.partition(), "offset": message.offset(), "headers": headers}))
                return 0
    finally:
        consumer.close()
    print(json.dumps({"error": f"no record with key {args.key} on {args.topic} within {args.timeout} s"}))
    return 1


if __name__ == "__main__":
    sys.exit(main())
