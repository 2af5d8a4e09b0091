#!/usr/bin/env python3
"""Test peers for scripts/services (run with the venv python it creates: $SERVICES_PYTHON).

  services_check.py declare-queue AMQP_URL QUEUE [--durable]
      Attach an AMQP 1.0 sender to /queue/QUEUE (RabbitMQ's AMQP 1.0 plugin declares the queue).

  services_check.py kafka --brokers HOST:PORT --topic TOPIC
      Produce one message (idempotent, acks=all) with librdkafka 2.16 and consume it back through a
      fresh consumer group (manual commit). Needs LD_LIBRARY_PATH/confluent-kafka from the venv.

  services_check.py amqp --url AMQP_URL --queue QUEUE [--durable]
      Send one AMQP 1.0 message (SASL PLAIN) to /queue/QUEUE and receive it back; checks that
      message-id, subject, content-type and application-properties survive.

  services_check.py smoke --kafka HOST:PORT --topic T --amqp URL --queue Q
      Both of the above.

Messages that are not ours (left in the topic/queue by someone else) are skipped: in Kafka they are
only read (our consumer group is new), in AMQP they are released back to the queue.
"""
import argparse
import sys
import time
import uuid


def log(msg):
    print(f"services_check: {msg}", file=sys.stderr, flush=True)


# Notes on RabbitMQ 3.10's AMQP 1.0 plugin (observed, see docs/SERVICES.md):
# - attaching to /queue/NAME declares NAME; the terminus durability decides whether it is declared
#   durable, and an attach whose durability differs from the existing queue's is refused
#   (the link never opens). Default terminus durability (none) = non-durable queue.
# - it answers detach(closed=true) with detach(closed=false), so proton's BlockingLink.close() waits
#   until its timeout. We never close links; closing the connection is clean.


def amqp_connection(url, timeout):
    from proton.utils import BlockingConnection

    return BlockingConnection(url, timeout=timeout, allowed_mechs="PLAIN", allow_insecure_mechs=True)


def durability_option(durable):
    if not durable:
        return None
    from proton import Terminus
    from proton.reactor import LinkOption

    class Durable(LinkOption):
        def apply(self, link):
            (link.target if link.is_sender else link.source).durability = Terminus.DELIVERIES

    return Durable()


def declare_queue(url, queue, durable=False, timeout=15):
    conn = amqp_connection(url, timeout)
    try:
        conn.create_sender(f"/queue/{queue}", options=durability_option(durable))
    finally:
        conn.close()
    log(f"queue {queue} declared ({'durable' if durable else 'non-durable'})")


def check_amqp(url, queue, durable=False, timeout=15):
    from proton import Message

    t0 = time.monotonic()
    msg_id = f"services-check-{uuid.uuid4()}"
    body = '{"check":"%s"}' % msg_id
    conn = amqp_connection(url, timeout)
    try:
        sender = conn.create_sender(f"/queue/{queue}", options=durability_option(durable))
        out = Message(id=msg_id, subject="services.check", content_type="application/json",
                      properties={"check-run": msg_id}, body=body, durable=True)
        delivery = sender.send(out, timeout=timeout)
        state = delivery.remote_state
        if state is not None and str(state) != "ACCEPTED":
            raise SystemExit(f"AMQP send not accepted: {state}")
        receiver = conn.create_receiver(f"/queue/{queue}", credit=10, options=durability_option(durable))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"AMQP: did not receive {msg_id} from /queue/{queue} within {timeout}s")
            got = receiver.receive(timeout=left)
            if got.id != msg_id:
                receiver.release(delivered=False)
                continue
            receiver.accept()
            break
    finally:
        conn.close()
    body_in = got.body.decode() if isinstance(got.body, (bytes, memoryview)) else got.body
    problems = []
    if got.subject != "services.check":
        problems.append(f"subject {got.subject!r}")
    if got.content_type != "application/json":
        problems.append(f"content-type {got.content_type!r}")
    if (got.properties or {}).get("check-run") != msg_id:
        problems.append(f"application-properties {got.properties!r}")
    if body_in != body:
        problems.append(f"body {body_in!r}")
    if problems:
        raise SystemExit("AMQP round trip changed: " + ", ".join(problems))
    log(f"amqp ok: /queue/{queue} message-id={got.id} subject={got.subject} "
        f"content-type={got.content_type} ({(time.monotonic() - t0) * 1000:.0f} ms)")


def check_kafka(brokers, topic, timeout=30):
    import confluent_kafka
    from confluent_kafka import Consumer, Producer

    libv = confluent_kafka.libversion()[0]
    if not libv.startswith("2.16"):
        log(f"warning: librdkafka {libv} loaded (expected 2.16.x)")
    t0 = time.monotonic()
    key = f"services-check-{uuid.uuid4()}"
    value = ('{"check":"%s"}' % key).encode()
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "message.timeout.ms": timeout * 1000})
    result = {}

    def on_delivery(err, msg):
        result["err"], result["msg"] = err, msg

    producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
    remaining = producer.flush(timeout)
    if remaining or result.get("err") is not None or "msg" not in result:
        raise SystemExit(f"Kafka produce failed: {result.get('err')!r} (unflushed {remaining})")
    dmsg = result["msg"]
    t_produced = time.monotonic()
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"services-check-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "max.poll.interval.ms": 7000,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
    })
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise SystemExit(f"Kafka: did not consume {key} from {topic} within {timeout}s")
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error():
                log(f"kafka consumer event: {m.error()}")
                continue
            if m.key() == key.encode():
                if m.value() != value:
                    raise SystemExit(f"Kafka value changed: {m.value()!r}")
                consumer.commit(message=m, asynchronous=False)
                break
    finally:
        consumer.close()
    log(f"kafka ok: librdkafka {libv}, {topic}[{dmsg.partition()}]@{dmsg.offset()} "
        f"produced in {(t_produced - t0) * 1000:.0f} ms, consumed+committed in "
        f"{(time.monotonic() - t_produced) * 1000:.0f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("declare-queue")
    d.add_argument("url")
    d.add_argument("queue")
    d.add_argument("--durable", action="store_true")
    k = sub.add_parser("kafka")
    k.add_argument("--brokers", required=True)
    k.add_argument("--topic", required=True)
    a = sub.add_parser("amqp")
    a.add_argument("--url", required=True)
    a.add_argument("--queue", required=True)
    a.add_argument("--durable", action="store_true")
    s = sub.add_parser("smoke")
    s.add_argument("--kafka", required=True)
    s.add_argument("--topic", required=True)
    s.add_argument("--amqp", required=True)
    s.add_argument("--queue", required=True)
    s.add_argument("--durable", action="store_true")
    args = ap.parse_args()
    if args.cmd == "declare-queue":
        declare_queue(args.url, args.queue, args.durable)
    elif args.cmd == "kafka":
        check_kafka(args.brokers, args.topic)
    elif args.cmd == "amqp":
        check_amqp(args.url, args.queue, args.durable)
    else:
        check_kafka(args.kafka, args.topic)
        check_amqp(args.amqp, args.queue, args.durable)


if __name__ == "__main__":
    main()
