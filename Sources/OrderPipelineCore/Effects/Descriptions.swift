/// Short, stable, one-line descriptions for logs, traces and timelines (never secrets: nothing here holds any).

extension PipelineEvent {
    /// `OrderCreated(1b4e…)`: type and order.
    public var summary: String { "\(type.rawValue)(\(orderID))" }
}

extension StoreCommand {
    public var name: String {
        switch self {
        case .createOrders: "createOrders"
        case .transition: "transition"
        case .claimOutbox: "claimOutbox"
        case .settleOutbox: "settleOutbox"
        case .releaseClaims: "releaseClaims"
        case .fulfil: "fulfil"
        case .deadLetter: "deadLetter"
        case .reannounceOverdue: "reannounceOverdue"
        }
    }

    public var summary: String {
        switch self {
        case .createOrders(let batch): batch.map { "order=\($0.order.id) key=\($0.idempotencyKey)" }.joined(separator: "; ")
        case .transition(let t): "order=\(t.orderID) to=\(t.to.rawValue)"
        case .claimOutbox(let c): "\(c.outbox.rawValue) owner=\(c.owner) limit=\(c.limit)" + (c.takeOverExpiredLeases ? " taking over expired leases" : "")
        case .settleOutbox(let s): "\(s.outbox.rawValue) owner=\(s.owner) published=\(s.published) retry=\(s.retries.map(\.sequence)) dead=\(s.rejections.map(\.sequence))"
        case .releaseClaims(let kind, let owner): "\(kind.rawValue) owner=\(owner)"
        case .fulfil(let batch): batch.map { "\($0.envelope.type.rawValue) order=\($0.envelope.orderID) event=\($0.envelope.id)" }.joined(separator: "; ")
        case .deadLetter(let d): "source=\(d.source) reason=\(d.reason)"
        case .reannounceOverdue(let after, let limit): "after=\(after) limit=\(limit)"
        }
    }
}

extension StoreReply {
    public var summary: String {
        switch self {
        case .ordersCreated(let outcomes): outcomes.map(\.summary).joined(separator: ", ")
        case .transitioned(let order): "now \(order.status.rawValue)"
        case .orderNotFound: "no such order"
        case .illegalTransition(let from): "illegal from \(from.rawValue)"
        case .claimed(let rows, let heldBack):
            "claimed \(rows.map { "\($0.sequence):\($0.event.summary)" })" + (heldBack ? ", rows held back" : "")
        case .settled(let rows): "settled \(rows)"
        case .released(let rows): "released \(rows)"
        case .fulfilments(let outcomes): outcomes.map(\.summary).joined(separator: ", ")
        case .deadLettered: "dead-lettered"
        case .reannounced(let orders): "re-announced \(orders.count)"
        }
    }
}

extension OrderCreation {
    public var summary: String {
        switch self {
        case .created(let order): "created \(order.id)"
        case .replayed(let order): "replayed \(order.id)"
        case .keyReused: "idempotency key reused with another body"
        }
    }
}

extension FulfilmentOutcome {
    public var summary: String {
        switch self {
        case .fulfilled: "fulfilled"
        case .duplicate: "duplicate (inbox)"
        case .fulfilledByEarlierAttempt: "fulfilled by an earlier attempt"
        case .skipped(let status): "skipped (\(status.rawValue))"
        case .recorded: "recorded"
        case .orderMissing: "order missing"
        }
    }
}

extension Effect {
    public var name: String {
        switch self {
        case .store(_, let command): command.name
        case .publish(_, let channel, _): "publish(\(channel.rawValue))"
        case .forwardDeadLetter: "forwardDeadLetter"
        case .fetch: "fetch"
        case .commitOffsets: "commitOffsets"
        case .resetPublisher(let channel): "resetPublisher(\(channel.rawValue))"
        case .setTimer: "setTimer"
        case .cancelTimer: "cancelTimer"
        case .respond: "respond"
        case .note: "note"
        }
    }
}

extension Note {
    public var summary: String {
        switch self {
        case .orderAccepted(let id, let replayed): "Order \(id) \(replayed ? "replayed for a retried request" : "created and outbox message queued")"
        case .published(let channel, let row): "\(row.event.summary) published to \(channel.rawValue) (row \(row.sequence))"
        case .publishRetry(let channel, let sequence, let reason): "row \(sequence) for \(channel.rawValue) will be retried: \(reason)"
        case .deadLettered(let channel, let sequence, let reason): "row \(sequence) for \(channel.rawValue) dead-lettered: \(reason)"
        case .leaseLost(let kind, let rows): "\(rows) \(kind.rawValue) rows were taken over after the lease expired"
        case .consumed(let record): "Consumed message from partition \(record.partition) at offset \(record.offset)"
        case .fulfilled(let id): "Order \(id) fulfilled"
        case .redeliveryDeduplicated(let id): "event \(id) already in the inbox: redelivery ignored"
        case .skipped(let id, let status): "Order \(id) is \(status.rawValue): nothing to fulfil"
        case .poison(let record, let reason): "poison record at partition \(record.partition) offset \(record.offset): \(reason)"
        case .storeRetry(let what): "retrying after a failure: \(what)"
        case .unknownOutcome(let what): "outcome unknown, re-issuing: \(what)"
        case .requestShed(let what): "refused at once, too many waiting: \(what)"
        case .offsetsFenced: "offset commit fenced by a rebalance"
        case .deadLetterCopySkipped(let record, let reason):
            "poison record at partition \(record.partition) offset \(record.offset) kept in the dead-letters table only: the topic refused it (\(reason))"
        case .unexpected(let what): "unexpected: \(what)"
        case .reannounced(let orders): "\(orders.count) overdue orders re-announced: \(orders.prefix(3).map(\.description).joined(separator: ", "))"
        }
    }
}
