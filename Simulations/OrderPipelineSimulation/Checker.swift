import OrderPipelineCore

/// The properties the pipeline promises; each violation names one.
public enum Invariant: String, Sendable, CaseIterable, Hashable {
    case acknowledgedOrderLost = "no-acknowledged-order-lost"
    case idempotency = "one-order-per-idempotency-key"
    case badInputWroteNothing = "bad-input-writes-nothing"
    case statusNeverBackwards = "status-never-backwards"
    case exactlyOneFulfilment = "exactly-one-fulfilled-transition"
    case downstreamExactlyOnce = "one-fulfilment-message-id-downstream"
    case kafkaOrder = "order-events-in-order"
    case deadLettersOnlyPoison = "dead-letters-only-poison"
    case nothingPending = "nothing-pending-after-liveness"
    case noUnexpectedBranch = "no-unexpected-branch"
    case inboxKeysDerived = "inbox-keys-are-derived-event-ids"
    case fulfilmentAfterCommit = "fulfilment-message-after-its-commit"
    case traceCarried = "trace-carried-end-to-end"
    case fulfilledCountedOnce = "fulfilled-counted-at-most-once"
}

public struct Violation: Sendable, Hashable, CustomStringConvertible {
    public var invariant: Invariant
    public var detail: String
    public init(_ invariant: Invariant, _ detail: String) {
        self.invariant = invariant
        self.detail = detail
    }
    public var description: String { "\(invariant.rawValue): \(detail)" }
}

/// Reads the end state of a world (durable state of every model, what clients were told, what downstream got) and
/// lists every broken invariant. Walks arrays and sorted keys only.
public enum Checker {
    public static func check(_ world: World) -> [Violation] {
        var violations = world.clientViolations
        let db = world.database

        // Acknowledged orders exist; each key holds the order its client was told; invalid requests wrote nothing.
        for client in world.clients {
            let stored = db.idempotencyKeys[client.key]
            if let acked = client.ackedOrder {
                if db.orders[acked] == nil { violations.append(Violation(.acknowledgedOrderLost, "\(client.key) was told \(acked) was created, but it is not in the database")) }
                if let stored, stored.orderID != acked { violations.append(Violation(.idempotency, "\(client.key) was told \(acked), its key holds \(stored.orderID)")) }
            }
            if !client.valid, stored != nil { violations.append(Violation(.badInputWroteNothing, "\(client.key): an invalid request left an order")) }
        }
        if db.orderIDs.count > world.clients.filter(\.valid).count {
            violations.append(Violation(.idempotency, "\(db.orderIDs.count) orders stored for \(world.clients.filter(\.valid).count) valid requests"))
        }

        // Status history: created Pending, then only legal, contiguous moves; count Fulfilled moves.
        var lastStatus: [OrderID: OrderStatus] = [:]
        var fulfilments: [OrderID: Int] = [:]
        for t in db.transitions {
            if let from = t.from {
                guard let previous = lastStatus[t.orderID] else {
                    violations.append(Violation(.statusNeverBackwards, "\(t.orderID) moved \(from.rawValue) → \(t.to.rawValue) before it was created"))
                    continue
                }
                if previous != from || !from.canMove(to: t.to) {
                    violations.append(Violation(.statusNeverBackwards, "\(t.orderID) moved \(from.rawValue) → \(t.to.rawValue) while it was \(previous.rawValue)"))
                }
            } else if t.to != .pending {
                violations.append(Violation(.statusNeverBackwards, "\(t.orderID) was created \(t.to.rawValue)"))
            }
            lastStatus[t.orderID] = t.to
            if t.to == .fulfilled { fulfilments[t.orderID, default: 0] += 1 }
        }
        for id in db.orderIDs {
            let count = fulfilments[id] ?? 0
            if count > 1 { violations.append(Violation(.exactlyOneFulfilment, "\(id) was fulfilled \(count) times")) }
        }

        // Downstream: one distinct, derived MessageId per persisted order; none for anything else.
        var messageIDs: [OrderID: [EventID]] = [:]
        for message in world.downstream.received where !(messageIDs[message.orderID]?.contains(message.messageID) ?? false) {
            messageIDs[message.orderID, default: []].append(message.messageID)
        }
        for order in messageIDs.keys.sorted() {
            let ids = messageIDs[order]!
            if db.orders[order] == nil {
                violations.append(Violation(.downstreamExactlyOnce, "downstream got a fulfilment of \(order), which was never committed"))
            } else if ids.count > 1 {
                violations.append(
                    Violation(.downstreamExactlyOnce, "downstream got \(ids.count) distinct MessageIds for \(order): \(ids.map(\.description).joined(separator: ", "))"))
            } else if ids[0] != EventID.derived(order: order, type: .orderFulfilled) {
                violations.append(Violation(.downstreamExactlyOnce, "\(order)'s fulfilment MessageId \(ids[0]) is not the derived one"))
            }
        }

        // Kafka: one order's events in one partition, first appearances in outbox order.
        var firstSeen: [OrderID: [EventID]] = [:]
        var partitionOf: [OrderID: Int] = [:]
        var carried: [EventID: (order: OrderID, type: EventType)] = [:]  // looked up by the inbox check below
        for (p, log) in world.kafka.partitions.enumerated() {
            for record in log {
                guard let event = record.event else { continue }
                carried[event.id] = (event.orderID, event.type)
                if let earlier = partitionOf[event.orderID], earlier != p {
                    violations.append(Violation(.kafkaOrder, "\(event.orderID) has events in partitions \(earlier) and \(p)"))
                }
                partitionOf[event.orderID] = p
                if !(firstSeen[event.orderID]?.contains(event.id) ?? false) { firstSeen[event.orderID, default: []].append(event.id) }
            }
        }
        var outboxOrder: [OrderID: [EventID]] = [:]
        for row in db.kafkaOutbox.rows { outboxOrder[row.event.orderID, default: []].append(row.event.id) }
        for order in firstSeen.keys.sorted() {
            // Events that never went through the outbox (the dual-write bug) have no order to keep.
            let written = outboxOrder[order] ?? []
            let seen = firstSeen[order]!.filter { written.contains($0) }
            let expected = written.filter { seen.contains($0) }
            if seen != expected {
                violations.append(Violation(.kafkaOrder, "\(order)'s events reached Kafka as \(seen.map(\.description)) but were written as \(expected.map(\.description))"))
            }
        }

        // The inbox holds derived event ids only (a random or foreign id would defeat deduplication). A key that is
        // the derived id of the event Kafka carried under it costs one derivation; any other is looked for among the
        // ids of every order, each type's derived only when a key is none of those before it.
        var derived: [(type: EventType, ids: Set<EventID>?)] = [(.orderCreated, nil), (.orderFailed, nil), (.orderFulfilled, nil)]
        for id in db.inbox.sorted() {
            if let event = carried[id], db.orders[event.order] != nil, EventID.derived(order: event.order, type: event.type) == id { continue }
            let isDerived = derived.indices.contains { index in
                if derived[index].ids == nil { derived[index].ids = Set(db.orderIDs.map { EventID.derived(order: $0, type: derived[index].type) }) }
                return derived[index].ids!.contains(id)
            }
            if !isDerived { violations.append(Violation(.inboxKeysDerived, "inbox key \(id) is not the derived id of any order's event")) }
        }

        // No fulfilment message reaches Service Bus before the transaction that fulfilled its order committed.
        var fulfilledAt: [OrderID: Instant] = [:]
        for t in db.transitions where t.to == .fulfilled && fulfilledAt[t.orderID] == nil { fulfilledAt[t.orderID] = t.committedAt }
        for message in world.serviceBus.queue {
            guard let committed = fulfilledAt[message.orderID] else {
                violations.append(Violation(.fulfilmentAfterCommit, "\(message.messageID) for \(message.orderID) was sent, but the order was never fulfilled"))
                continue
            }
            if message.enqueuedAt < committed {
                violations.append(Violation(.fulfilmentAfterCommit, "\(message.messageID) for \(message.orderID) was sent before its Fulfilled commit"))
            }
        }

        // One trace per order: its OrderCreated record carries the trace its creating request was given, and its
        // fulfilment message continues that trace with the consumer's (derived) span.
        for (p, log) in world.kafka.partitions.enumerated() {
            for record in log {
                guard let event = record.event, event.type == .orderCreated, let expected = world.requestTraces[event.orderID] else { continue }
                if record.record.traceParent != expected {
                    violations.append(
                        Violation(
                            .traceCarried,
                            "\(event.orderID)'s record \(p)@\(record.record.offset) carries trace \(record.record.traceParent?.description ?? "none"), its request had \(expected)")
                    )
                }
            }
        }
        for message in world.serviceBus.queue {
            guard let created = world.requestTraces[message.orderID] else { continue }
            let expected = created.child(derivedFrom: message.messageID.uuid)
            if message.traceParent != expected {
                violations.append(
                    Violation(.traceCarried, "\(message.messageID) for \(message.orderID) carries trace \(message.traceParent?.description ?? "none"), expected \(expected)"))
            }
        }

        // The fulfilled counter (`.fulfilled` notes, which the metrics count) counts an order at most once. (A
        // consumer that dies between its commit and the answer counts nothing: a lost count, never a double one.)
        for (id, count) in world.fulfilledNotes.sorted(by: { $0.key < $1.key }) where count > 1 {
            violations.append(Violation(.fulfilledCountedOnce, "\(id) was counted as fulfilled \(count) times"))
        }

        // Dead letters hold poison only.
        for letter in db.deadLetters where !world.poisonSources.contains(letter.source) {
            violations.append(Violation(.deadLettersOnlyPoison, "\(letter.source) was dead-lettered: \(letter.reason)"))
        }

        if let stuck = world.liveness {
            violations.append(Violation(.nothingPending, stuck.summary))
        } else {
            // Every order ends Fulfilled (exactly once, one message downstream) or Failed (cancelled: none).
            for id in db.orderIDs where !world.parkedOrders.contains(id) {
                let fulfilled = db.orders[id]?.status == .fulfilled
                if fulfilled, (fulfilments[id] ?? 0) == 0 { violations.append(Violation(.exactlyOneFulfilment, "\(id) was never fulfilled")) }
                if !fulfilled, (fulfilments[id] ?? 0) > 0 {
                    violations.append(Violation(.statusNeverBackwards, "\(id) was fulfilled and is now \(db.orders[id]!.status.rawValue)"))
                }
                if fulfilled, messageIDs[id] == nil { violations.append(Violation(.downstreamExactlyOnce, "downstream never got a fulfilment of \(id)")) }
                if !fulfilled, let ids = messageIDs[id] {
                    violations.append(Violation(.downstreamExactlyOnce, "downstream got \(ids.count) fulfilment(s) of \(id), which is \(db.orders[id]!.status.rawValue)"))
                }
            }
            for source in world.poisonSources where !db.deadLetters.contains(where: { $0.source == source }) && !world.lostSources.contains(source) {
                violations.append(Violation(.nothingPending, "poison record \(source) was never dead-lettered"))
            }
        }
        return violations
    }
}
