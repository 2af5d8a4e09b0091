import OrderPipelineCore

/// How a recipe ends its transaction. `holdOpen` runs everything up to, not including, COMMIT and leaves the
/// transaction open with its locks (tests use it to stand for a session that stalls or dies mid-transaction).
public enum TransactionMode: Sendable, Hashable {
    case commit
    case holdOpen
}

/// The store recipes of `StoreCommand` (see `Effects/Store.swift` in the core) over one libpq connection.
/// Every function blocks its (dedicated) thread.
public enum StoreRecipes {
    public static func perform(_ command: StoreCommand, on connection: PostgresConnection, mode: TransactionMode = .commit) -> StoreResult {
        switch command {
        case .createOrders(let batch): createOrders(batch, connection, mode)
        case .transition(let change): transition(change, connection, mode)
        case .claimOutbox(let request): claim(request, connection, mode)
        case .settleOutbox(let settlement): settle(settlement, connection, mode)
        case .releaseClaims(let outbox, let owner): release(outbox, owner, connection, mode)
        case .fulfil(let batch): fulfil(batch, connection, mode)
        case .deadLetter(let letter): deadLetter(letter, connection, mode)
        case let .reannounceOverdue(overdueAfter, limit): reannounce(overdueAfter: overdueAfter, limit: limit, connection, mode)
        }
    }

    /// Ends a transaction that `holdOpen` left open.
    public static func finish(on connection: PostgresConnection, commit: Bool) -> StoreResult {
        do {
            try connection.execute(constant: commit ? "COMMIT" : "ROLLBACK")
            return .committed(.fulfilments([]))  // the reply carries nothing: it only says the COMMIT went through
        } catch {
            return error.code == .connectionLost && commit ? .unknown : .failed(failure(error))
        }
    }

    // MARK: recipes

    static func createOrders(_ batch: [NewOrder], _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        singleStatement(c, mode, writes: true) { () throws(PostgresError) -> StoreReply in
            guard !batch.isEmpty else { return .ordersCreated([]) }
            func array(_ values: (NewOrder) -> String) -> PostgresValue { .text(SQL.arrayLiteral(batch.map(values))) }
            let keys = array(\.idempotencyKey)
            let inserted = try c.execute(
                SQL.createOrders,
                [
                    keys, array(\.fingerprint), array(\.order.id.description), array(\.order.customerName),
                    array(\.order.customerEmail), array(\.order.totalAmount.description), array(\.order.createdAt.description),
                    array { new in
                        var items = JSONWriter()
                        OrderItem.write(new.order.items, to: &items)
                        return items.string
                    },
                    array(\.event.id.description), array(\.event.type.rawValue), array(\.event.payload.hexString),
                    array { $0.event.traceParent?.description ?? "" },
                ])
            var created: Set<String> = []
            for row in 0..<inserted.count { if let key = inserted.string(row, 0) { created.insert(key) } }
            if created.count == batch.count { return .ordersCreated(batch.map { .created($0.order) }) }
            // Keys recorded before (or by a concurrent batch that committed first: ON CONFLICT waited for it).
            let taken = try c.execute(SQL.idempotencyKeys, [keys])
            var recorded: [String: (fingerprint: String, order: OrderID)] = [:]
            for row in 0..<taken.count {
                guard let key = taken.string(row, 0), let fingerprint = taken.string(row, 1), let id = taken.string(row, 2).flatMap(OrderID.init) else {
                    throw PostgresError(code: .protocolViolation, message: "malformed idempotency key row")
                }
                recorded[key] = (fingerprint, id)
            }
            var outcomes: [OrderCreation] = []
            for new in batch {
                if created.contains(new.idempotencyKey) { outcomes.append(.created(new.order)); continue }
                guard let (fingerprint, id) = recorded[new.idempotencyKey] else {
                    throw PostgresError(code: .protocolViolation, message: "idempotency key vanished")
                }
                guard fingerprint == new.fingerprint else { outcomes.append(.keyReused); continue }
                guard let stored = try loadOrder(id, c, forUpdate: false) else {
                    throw PostgresError(code: .protocolViolation, message: "idempotency key \(new.idempotencyKey) names a missing order")
                }
                outcomes.append(.replayed(stored))
            }
            return .ordersCreated(outcomes)
        }
    }

    static func transition(_ t: OrderTransition, _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        transaction(c, mode) { () throws(PostgresError) -> Outcome in
            guard var order = try loadOrder(t.orderID, c, forUpdate: true) else { return .rollback(.orderNotFound) }
            let from = order.status
            // Already there: nothing to write. A re-issue after an unknown COMMIT finds its own change this way.
            if from == t.to { return .rollback(.transitioned(order)) }
            guard from.canMove(to: t.to) else { return .rollback(.illegalTransition(from: from)) }
            let id = t.orderID.description
            let at = t.at.description
            // A failed order always says why (as the simulator's model does).
            let failureReason = t.to == .failed ? (t.reason ?? "failed by request") : nil
            try c.execute(SQL.updateStatus, [.text(id), .text(t.to.rawValue), .text(at), .optional(failureReason)])
            try c.execute(SQL.recordTransition, [.text(id), .text(from.rawValue), .text(t.to.rawValue), .text(at), .optional(t.reason)])
            order.status = t.to
            if t.to == .processing || t.to == .fulfilled, order.processedAt == nil { order.processedAt = t.at }
            if t.to == .failed { order.failureReason = failureReason }
            if let type = EventType(announcing: t.to) {
                var event = PipelineEvent(type: type, order: order, at: t.at, includeOrder: false)
                event.traceParent = t.traceParent
                try append(event, to: .kafka, c)
            }
            if t.to == .fulfilled {
                var event = PipelineEvent(type: .orderFulfilled, orderID: t.orderID, at: t.at, status: .fulfilled)
                event.traceParent = t.traceParent
                try append(event, to: .serviceBus, c)
            }
            return .commit(.transitioned(order))
        }
    }

    static func claim(_ claim: OutboxClaim, _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        guard claim.takeOverExpiredLeases, claim.limit > 0 else {
            return singleStatement(c, mode, writes: true) { () throws(PostgresError) -> StoreReply in try claimFree(claim, c, taken: []) }
        }
        // Expired leases first, then free rows, in one transaction (the free claim sees the rows taken over).
        return transaction(c, mode) { () throws(PostgresError) -> Outcome in
            let expired = try c.execute(
                claim.outbox == .kafka ? SQL.takeOverKafka : SQL.takeOverServiceBus,
                [.text(claim.owner), .int(claim.lease.microseconds), .int(claim.limit)])
            return .commit(try claimFree(claim, c, taken: try messages(expired)))
        }
    }

    /// The claim of free rows, up to what `taken` left of the limit; the reply holds both, oldest first.
    private static func claimFree(_ claim: OutboxClaim, _ c: PostgresConnection, taken: [OutboxMessage]) throws(PostgresError) -> StoreReply {
        guard claim.limit > 0 else { return .claimed([]) }
        let rows = try c.execute(
            claim.outbox == .kafka ? SQL.claimKafka : SQL.claimServiceBus,
            [.text(claim.owner), .int(claim.lease.microseconds), .int(claim.limit - taken.count)])
        let claimed = (taken + (try messages(rows))).sorted { $0.sequence < $1.sequence }
        return .claimed(claimed, heldBack: rows.count > 0 && rows.string(0, 8) == "t")
    }

    /// Claimed rows as messages; a claim that took nothing answers one row of NULLs (to carry `held_back`), skipped.
    private static func messages(_ rows: PostgresRows) throws(PostgresError) -> [OutboxMessage] {
        var messages: [OutboxMessage] = []
        messages.reserveCapacity(rows.count)
        for row in 0..<rows.count where !rows.isNull(row, 0) {
            guard let sequence = rows.int(row, 0), let eventID = rows.string(row, 1).flatMap({ EventID($0) }),
                let type = rows.string(row, 2).flatMap({ EventType(rawValue: $0) }),
                let orderID = rows.string(row, 3).flatMap({ OrderID($0) }),
                let occurred = rows.int(row, 4), let payload = rows.bytes(row, 5), let attempts = rows.int(row, 6)
            else { throw PostgresError(code: .protocolViolation, message: "malformed outbox row") }
            let event = PipelineEvent(
                stored: eventID, type: type, orderID: orderID, at: Instant(microseconds: occurred), payload: payload,
                traceParent: rows.string(row, 7).flatMap { TraceParent($0) })
            messages.append(OutboxMessage(sequence: sequence, event: event, attempts: Int(attempts)))
        }
        return messages
    }

    static func settle(_ s: OutboxSettlement, _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        singleStatement(c, mode, writes: true) { () throws(PostgresError) -> StoreReply in
            guard !s.isEmpty else { return .settled(rows: 0) }
            func ints(_ values: [Int64?]) -> PostgresValue { .text("{" + values.map { $0.map(String.init) ?? "NULL" }.joined(separator: ",") + "}") }
            var parameters: [PostgresValue] = [
                .text(s.owner), ints(s.published),
                ints(s.retries.map(\.sequence)), ints(s.retries.map(\.delay.microseconds)),
                .text(SQL.arrayLiteral(s.retries.map(\.error))),
                ints(s.rejections.map(\.sequence)), .text(SQL.arrayLiteral(s.rejections.map(\.reason))),
            ]
            if s.outbox == .kafka {
                let positions = s.published.map { s.positions[$0] }
                parameters += [ints(positions.map { $0.map { Int64($0.partition) } }), ints(positions.map { $0?.offset })]
            }
            let rows = try c.execute(s.outbox == .kafka ? SQL.settleKafka : SQL.settleServiceBus, parameters)
            return .settled(rows: Int(rows.int(0, 0) ?? 0))
        }
    }

    static func release(_ outbox: OutboxKind, _ owner: String, _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        singleStatement(c, mode, writes: true) { () throws(PostgresError) -> StoreReply in
            let rows = try c.execute(outbox == .kafka ? SQL.releaseKafka : SQL.releaseServiceBus, [.text(owner)])
            return .released(rows: rows.affected)
        }
    }

    static func fulfil(_ batch: [Fulfilment], _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        singleStatement(c, mode, writes: true) { () throws(PostgresError) -> StoreReply in
            guard !batch.isEmpty else { return .fulfilments([]) }
            func array(_ values: (Fulfilment) -> String) -> PostgresValue { .text(SQL.arrayLiteral(batch.map(values))) }
            let rows = try c.execute(
                SQL.fulfil,
                [
                    array(\.envelope.id.description), array(\.envelope.type.rawValue), array(\.envelope.orderID.description),
                    array(\.at.description), array(\.fulfilmentEvent.id.description), array(\.fulfilmentEvent.payload.hexString),
                    array { $0.fulfilmentEvent.traceParent?.description ?? "" },
                ])
            guard rows.count == batch.count else {
                throw PostgresError(code: .protocolViolation, message: "fulfil answered \(rows.count) rows for \(batch.count) records")
            }
            var fulfilledHere: Set<OrderID> = []
            var outcomes: [FulfilmentOutcome] = []
            for (row, f) in batch.enumerated() {
                guard rows.string(row, 0) == "t" else {
                    outcomes.append(rows.string(row, 3) == "t" ? .fulfilledByEarlierAttempt : .duplicate)
                    continue
                }
                guard f.envelope.type == .orderCreated else { outcomes.append(.recorded); continue }
                guard let statusText = rows.string(row, 1) else { outcomes.append(.orderMissing); continue }
                guard let status = OrderStatus(rawValue: statusText) else {
                    throw PostgresError(code: .protocolViolation, message: "unknown status \(statusText)")
                }
                if rows.string(row, 2) == "t" {
                    fulfilledHere.insert(f.envelope.orderID)
                    outcomes.append(.fulfilled)
                } else {
                    // A later OrderCreated of an order this batch fulfilled sees it Fulfilled, as a serial run would.
                    outcomes.append(.skipped(fulfilledHere.contains(f.envelope.orderID) ? .fulfilled : status))
                }
            }
            return .fulfilments(outcomes)
        }
    }

    static func deadLetter(_ letter: DeadLetter, _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        singleStatement(c, mode, writes: true) { () throws(PostgresError) -> StoreReply in
            try c.execute(SQL.deadLetter, [.text(letter.source), .text(letter.reason), .bytes(letter.payload), .text(letter.at.description)])
            return .deadLettered
        }
    }

    /// Pending orders a page at a time, oldest first, and the overdue OrderCreated rows among them reopened, until
    /// `limit` are or no page is left (`SQL.pendingOrdersPage`, `SQL.reopenOverdue`). One transaction.
    static func reannounce(overdueAfter: Duration, limit: Int, _ c: PostgresConnection, _ mode: TransactionMode) -> StoreResult {
        transaction(c, mode) { () throws(PostgresError) -> Outcome in
            var reopened: [OrderID] = []
            var after = ("-infinity", "00000000-0000-0000-0000-000000000000")
            while reopened.count < limit {
                let page = try c.execute(SQL.pendingOrdersPage, [.text(after.0), .text(after.1), .int(reannouncePage)])
                guard page.count > 0 else { break }
                let orders = (0..<page.count).compactMap { page.string($0, 0).flatMap(OrderID.init) }
                let events = orders.map { EventID.derived(order: $0, type: .orderCreated).description }
                let rows = try c.execute(
                    SQL.reopenOverdue, [.int(overdueAfter.microseconds), .text(SQL.arrayLiteral(events)), .int(limit - reopened.count)])
                reopened += (0..<rows.count).compactMap { rows.string($0, 0).flatMap(OrderID.init) }
                guard page.count == reannouncePage, let id = page.string(page.count - 1, 0), let at = page.string(page.count - 1, 1) else { break }
                after = (at, id)
            }
            return reopened.isEmpty ? .rollback(.reannounced([])) : .commit(.reannounced(reopened))
        }
    }

    /// Pending orders read per round trip by the reconciler.
    static let reannouncePage = 500

    // MARK: reads

    /// The order with its items, or nil. `forUpdate` locks its row until the transaction ends.
    public static func loadOrder(_ id: OrderID, _ c: PostgresConnection, forUpdate: Bool) throws(PostgresError) -> Order? {
        let rows = try c.execute(forUpdate ? SQL.loadOrderForUpdate : SQL.loadOrder, [.text(id.description)])
        guard rows.count > 0 else { return nil }
        var order = try decodeOrder(rows, row: 0)
        for row in 0..<rows.count where !rows.isNull(row, 8) {
            order.items.append(try decodeItem(rows, row: row, from: 8))
        }
        return order
    }

    /// Newest first; `after` is the last order of the previous page.
    public static func listOrders(limit: Int, after: (createdAt: Instant, id: OrderID)?, _ c: PostgresConnection) throws(PostgresError) -> [Order] {
        let rows: PostgresRows
        if let after {
            rows = try c.execute(SQL.listAfter, [.int(limit), .int(after.createdAt.microseconds), .text(after.id.description)])
        } else {
            rows = try c.execute(SQL.listFirst, [.int(limit)])
        }
        var orders: [Order] = []
        for row in 0..<rows.count { orders.append(try decodeOrder(rows, row: row)) }
        guard !orders.isEmpty else { return [] }
        let items = try c.execute(SQL.listItems, [.text("{" + orders.map(\.id.description).joined(separator: ",") + "}")])
        var byOrder: [OrderID: [OrderItem]] = [:]
        for row in 0..<items.count {
            guard let id = items.string(row, 0).flatMap({ OrderID($0) }) else { continue }
            byOrder[id, default: []].append(try decodeItem(items, row: row, from: 1))
        }
        for index in orders.indices { orders[index].items = byOrder[orders[index].id] ?? [] }
        return orders
    }

    /// Unsettled rows of an outbox and the age in seconds of the oldest (0 when none).
    public static func pending(_ kind: OutboxKind, _ c: PostgresConnection) throws(PostgresError) -> (count: Int, oldestAgeSeconds: Double) {
        let rows = try c.execute(kind == .kafka ? SQL.pendingKafka : SQL.pendingServiceBus)
        return (Int(rows.int(0, 0) ?? 0), rows.string(0, 1).flatMap(Double.init) ?? 0)
    }

    static func decodeOrder(_ rows: PostgresRows, row: Int) throws(PostgresError) -> Order {
        guard let id = rows.string(row, 0).flatMap({ OrderID($0) }), let name = rows.string(row, 1), let email = rows.string(row, 2),
            let status = rows.string(row, 3).flatMap({ OrderStatus(rawValue: $0) }),
            let total = rows.string(row, 4).flatMap({ Money(decimalText: $0) }), let created = rows.int(row, 5)
        else { throw PostgresError(code: .protocolViolation, message: "malformed order row") }
        return Order(
            id: id, customerName: name, customerEmail: email, items: [], totalAmount: total, status: status,
            createdAt: Instant(microseconds: created), processedAt: rows.int(row, 6).map { Instant(microseconds: $0) },
            failureReason: rows.string(row, 7))
    }

    static func decodeItem(_ rows: PostgresRows, row: Int, from column: Int) throws(PostgresError) -> OrderItem {
        guard let name = rows.string(row, column), let quantity = rows.int(row, column + 1),
            let price = rows.string(row, column + 2).flatMap({ Money(decimalText: $0) })
        else { throw PostgresError(code: .protocolViolation, message: "malformed order item row") }
        return OrderItem(productName: name, quantity: Int(quantity), unitPrice: price)
    }

    // MARK: transactions

    enum Outcome {
        case commit(StoreReply)
        /// Nothing to write: roll back and answer.
        case rollback(StoreReply)
    }

    static func append(_ event: PipelineEvent, to kind: OutboxKind, _ c: PostgresConnection) throws(PostgresError) {
        try c.execute(
            kind == .kafka ? SQL.appendKafka : SQL.appendServiceBus,
            [
                .text(event.id.description), .text(event.orderID.description), .text(event.type.rawValue),
                .text(event.occurredAt.description), .bytes(event.payload), .optional(event.traceParent?.description),
            ])
    }

    /// BEGIN … COMMIT. A connection lost before COMMIT wrote nothing (`.failed`); lost during COMMIT, maybe (`.unknown`).
    static func transaction(_ c: PostgresConnection, _ mode: TransactionMode, _ body: () throws(PostgresError) -> Outcome) -> StoreResult {
        do {
            try c.execute(constant: "BEGIN")
        } catch {
            return .failed(failure(error))
        }
        let outcome: Outcome
        do {
            outcome = try body()
        } catch {
            if error.code != .connectionLost { _ = try? c.execute(constant: "ROLLBACK") }
            return .failed(failure(error))
        }
        switch outcome {
        case .rollback(let reply):
            if mode == .commit { _ = try? c.execute(constant: "ROLLBACK") }
            return .committed(reply)
        case .commit(let reply):
            guard mode == .commit else { return .committed(reply) }
            do {
                try c.execute(constant: "COMMIT")
                return .committed(reply)
            } catch {
                return error.code == .connectionLost ? .unknown : .failed(failure(error))
            }
        }
    }

    /// One statement in its own implicit transaction (one round trip). If it writes and the connection is lost
    /// while it runs, the outcome is unknown.
    static func singleStatement(_ c: PostgresConnection, _ mode: TransactionMode, writes: Bool, _ body: () throws(PostgresError) -> StoreReply) -> StoreResult {
        if mode == .holdOpen {
            return transaction(c, mode) { () throws(PostgresError) -> Outcome in .commit(try body()) }
        }
        do {
            return .committed(try body())
        } catch {
            return error.code == .connectionLost && writes ? .unknown : .failed(failure(error))
        }
    }

    static func failure(_ error: PostgresError) -> StoreFailure {
        if error.isTimeout { return .timedOut }
        if error.isConflict { return .conflict(error.message) }
        return .unavailable(error.message)
    }
}
