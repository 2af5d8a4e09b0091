import Foundation
import OrderPipelineCore
import OrderPipelinePostgres

/// The live page's JSON (snapshot events, `/ui/api/snapshot`, `/ui/api/orders/{id}/journey`). Times are
/// microseconds since the epoch (exact in a JavaScript number), ages seconds, latencies milliseconds.
enum LiveJSON {
    static func snapshot(_ s: Dashboard.Snapshot, consumerLag: [Int32: Int64]?, replayEnabled: Bool) -> [UInt8] {
        var json = JSONWriter()
        json.object { json in
            json.field("now", s.now.microseconds)
            json.key("replayEnabled"); json.bool(replayEnabled)
            json.key("outboxes")
            json.array { json in
                for outbox in s.outboxes {
                    json.object { json in
                        json.field("outbox", outbox.outbox.rawValue)
                        json.field("pending", outbox.pending)
                        json.field("retrying", outbox.retrying)
                        json.key("oldestAgeSeconds"); number(outbox.oldestPendingAgeSeconds, &json)
                        json.field("deadLettered", outbox.deadLettered)
                        json.key("claims")
                        json.array { json in
                            for claim in outbox.claims {
                                json.object { json in
                                    json.field("owner", claim.owner)
                                    json.field("rows", claim.rows)
                                    json.field("expired", claim.expired)
                                }
                            }
                        }
                    }
                }
            }
            json.key("minute")
            json.object { json in
                for (name, series) in [("created", s.minute.created), ("published", s.minute.published), ("fulfilled", s.minute.fulfilled), ("sent", s.minute.sent)] {
                    json.key(name)
                    json.array { json in for count in series { json.int(count) } }
                }
                json.key("latency"); latency(s.minute.latency, &json)
                json.key("latencyBuckets")
                json.array { json in for bucket in s.minute.latencyBuckets { latency(bucket, &json) } }
                json.field("awaitingConsumer", s.minute.awaitingConsumer)
                json.key("capped"); json.bool(s.minute.capped)
            }
            json.key("consumerLag")
            if let consumerLag {
                json.array { json in
                    for partition in consumerLag.keys.sorted() {
                        json.object { json in
                            json.field("partition", Int(partition))
                            json.field("lag", consumerLag[partition] ?? 0)
                        }
                    }
                }
            } else {
                json.null()
            }
            json.key("latest")
            json.array { json in for journey in s.latest { self.journey(journey, to: &json) } }
            json.field("deadLetterCount", s.deadLetterCount)
            json.key("deadLetters")
            json.array { json in
                for letter in s.deadLetters {
                    json.object { json in
                        json.field("id", letter.id)
                        json.field("source", letter.source)
                        json.field("reason", String(letter.reason.prefix(500)))
                        json.field("at", letter.at)
                        json.field("payloadBytes", letter.payloadBytes)
                    }
                }
            }
        }
        return json.bytes
    }

    static func journey(_ j: Dashboard.Journey, to json: inout JSONWriter) {
        json.object { json in
            json.field("orderId", j.orderID.description)
            json.field("status", j.status.rawValue)
            json.key("totalAmount"); json.number(text: j.totalAmount.isEmpty ? "null" : j.totalAmount)
            json.field("failureReason", j.failureReason)
            json.field("createdAt", j.createdAt.microseconds)
            instant("publishedAt", j.publishedAt, &json)
            position("publishedPosition", j.kafkaRow?.publishedAt == nil ? nil : j.kafkaRow?.position, &json)
            instant("consumedAt", j.consumedAt, &json)
            instant("fulfilledAt", j.fulfilledAt, &json)
            instant("sentAt", j.sentAt, &json)
            json.field("stage", stage(j))
            json.field("traceId", j.traceID)
            row("kafka", j.kafkaRow, &json)
            row("serviceBus", j.serviceBusRow, &json)
        }
    }

    /// Where the order is now, in the page's words.
    static func stage(_ j: Dashboard.Journey) -> String {
        if j.kafkaRow?.deadLetteredAt != nil || j.serviceBusRow?.deadLetteredAt != nil { return "dead-lettered" }
        if j.sentAt != nil { return "sent" }
        if j.fulfilledAt != nil { return "awaiting Service Bus" }
        if j.status == .failed { return "failed" }
        if j.consumedAt != nil { return "consumed" }
        if j.publishedAt != nil { return "awaiting consumer" }
        return "awaiting Kafka"
    }

    static func row(_ name: String, _ row: Dashboard.OutboxRow?, _ json: inout JSONWriter) {
        json.key(name)
        guard let row else { json.null(); return }
        json.object { json in
            json.field("sequence", row.sequence)
            json.field("attempts", row.attempts)
            json.field("lastError", row.lastError.map { String($0.prefix(500)) })
            instant("publishedAt", row.publishedAt, &json)
            instant("deadLetteredAt", row.deadLetteredAt, &json)
            json.field("claimedBy", row.claimedBy)
            instant("nextAttemptAt", row.nextAttemptAt, &json)
            json.key("deadLetterId")
            if let id = row.deadLetterID { json.int(id) } else { json.null() }
            position("position", row.position, &json)
        }
    }

    /// `{"partition": 2, "offset": 117}` or null.
    static func position(_ name: String, _ value: RecordPosition?, _ json: inout JSONWriter) {
        json.key(name)
        guard let value else { json.null(); return }
        json.object { json in
            json.field("partition", Int(value.partition))
            json.field("offset", value.offset)
        }
    }

    static func instant(_ name: String, _ value: Instant?, _ json: inout JSONWriter) {
        json.key(name)
        if let value { json.int(value.microseconds) } else { json.null() }
    }

    static func latency(_ l: Dashboard.Latency, _ json: inout JSONWriter) {
        json.object { json in
            json.field("count", l.count)
            json.key("p50"); number(l.p50Milliseconds, &json)
            json.key("p99"); number(l.p99Milliseconds, &json)
        }
    }

    static func number(_ value: Double?, _ json: inout JSONWriter) {
        guard let value, value.isFinite else { json.null(); return }
        json.number(text: String(format: "%.3f", value))
    }
}
