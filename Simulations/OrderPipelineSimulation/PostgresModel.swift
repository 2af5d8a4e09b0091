import OrderPipelineCore

/// An in-memory model of the PostgreSQL store: every `StoreCommand` recipe (see `Effects/Store.swift`) performed
/// atomically at one instant, which is what a serialisable transaction looks like from outside. Faults (outages,
/// unknown commits, crashes around the commit) are the world's business, not the model's.
///
/// Everything is kept in arrays or looked up by key; nothing that decides iterates a hash table.
public final class PostgresModel {
    public struct OutboxRow: Sendable {
        public var sequence: Int64
        public var event: PipelineEvent
        public var attempts = 0
        public var nextAttemptAt = Instant(microseconds: .min)
        public var claimedBy: String?
        public var claimedUntil = Instant(microseconds: .min)
        public var lastError: String?
        public var publishedAt: Instant?
        public var deadLetteredAt: Instant?
        public var isSettled: Bool { publishedAt != nil || deadLetteredAt != nil }
    }

    /// One outbox table with its head-of-line index.
    public struct OutboxTable: Sendable {
        public private(set) var rows: [OutboxRow] = []
        /// Unsettled sequences per order, oldest first: the head is the only claimable row of that order.
        private var unsettled: [OrderID: [Int64]] = [:]
        /// Rows before this index are all settled (claims scan from here).
        private var firstUnsettled = 0

        mutating func append(_ event: PipelineEvent) -> Int64 {
            let sequence = Int64(rows.count + 1)
            rows.append(OutboxRow(sequence: sequence, event: event))
            unsettled[event.orderID, default: []].append(sequence)
            return sequence
        }

        public func row(_ sequence: Int64) -> OutboxRow? {
            sequence >= 1 && sequence <= rows.count ? rows[Int(sequence - 1)] : nil
        }

        public var pending: [OutboxRow] { rows[firstUnsettled...].filter { !$0.isSettled } }

        mutating func claim(_ claim: OutboxClaim, headOfLine: Bool = true) -> [OutboxMessage] {
            var claimed: [OutboxMessage] = []
            var index = firstUnsettled
            while index < rows.count, claimed.count < claim.limit {
                defer { index += 1 }
                let row = rows[index]
                guard !row.isSettled, row.nextAttemptAt <= claim.now else { continue }
                guard row.claimedBy == nil || row.claimedBy == claim.owner || row.claimedUntil <= claim.now else { continue }
                if headOfLine, unsettled[row.event.orderID]?.first != row.sequence { continue }
                rows[index].claimedBy = claim.owner
                rows[index].claimedUntil = claim.leaseUntil
                rows[index].attempts += 1
                claimed.append(OutboxMessage(sequence: row.sequence, event: row.event, attempts: rows[index].attempts))
            }
            return claimed
        }

        /// Applies the fenced settlement; answers how many rows changed.
        mutating func settle(_ settlement: OutboxSettlement) -> (rows: Int, deadLettered: [OutboxRow]) {
            var changed = 0
            var letters: [OutboxRow] = []
            func owned(_ sequence: Int64) -> Int? {
                guard let row = row(sequence), !row.isSettled, row.claimedBy == settlement.owner else { return nil }
                return Int(sequence - 1)
            }
            for sequence in settlement.published {
                guard let i = owned(sequence) else { continue }
                rows[i].publishedAt = settlement.now
                rows[i].claimedBy = nil
                settled(i)
                changed += 1
            }
            for retry in settlement.retries {
                guard let i = owned(retry.sequence) else { continue }
                rows[i].nextAttemptAt = retry.notBefore
                rows[i].lastError = retry.error
                rows[i].claimedBy = nil
                changed += 1
            }
            for rejection in settlement.rejections {
                guard let i = owned(rejection.sequence) else { continue }
                rows[i].deadLetteredAt = settlement.now
                rows[i].lastError = rejection.reason
                rows[i].claimedBy = nil
                settled(i)
                letters.append(rows[i])
                changed += 1
            }
            return (changed, letters)
        }

        mutating func release(owner: String) -> Int {
            var released = 0
            for i in firstUnsettled..<rows.count where rows[i].claimedBy == owner && !rows[i].isSettled {
                rows[i].claimedBy = nil
                released += 1
            }
            return released
        }

        private mutating func settled(_ index: Int) {
            let order = rows[index].event.orderID
            if var queue = unsettled[order], let position = queue.firstIndex(of: rows[index].sequence) {
                queue.remove(at: position)
                unsettled[order] = queue.isEmpty ? nil : queue
            }
            while firstUnsettled < rows.count, rows[firstUnsettled].isSettled { firstUnsettled += 1 }
        }
    }

    public struct Transition: Hashable, Sendable {
        public var orderID: OrderID
        public var from: OrderStatus?
        public var to: OrderStatus
        public var at: Instant
    }

    public private(set) var orders: [OrderID: Order] = [:]
    /// Order ids in insertion order (for listing and for the checker's deterministic walks).
    public private(set) var orderIDs: [OrderID] = []
    /// Every status change ever committed, creation included (from = nil).
    public private(set) var transitions: [Transition] = []
    public private(set) var idempotencyKeys: [String: (fingerprint: String, orderID: OrderID)] = [:]
    public private(set) var inbox: Set<EventID> = []
    public private(set) var deadLetters: [DeadLetter] = []
    private var deadLetterSources: Set<String> = []
    public var kafkaOutbox = OutboxTable()
    public var serviceBusOutbox = OutboxTable()

    /// Which recipes a bug-zoo variant replaces; the correct store uses none.
    public var recipeVariants = RecipeVariants()

    public init() {}

    public func outbox(_ kind: OutboxKind) -> OutboxTable { kind == .kafka ? kafkaOutbox : serviceBusOutbox }

    /// Performs one command as one atomic transaction. `notify` is set when the transaction wrote an outbox row
    /// (the NOTIFY that wakes the relays of that outbox).
    public func perform(_ command: StoreCommand) -> (reply: StoreReply, notify: OutboxKind?) {
        switch command {
        case .createOrder(let new):
            if let existing = idempotencyKeys[new.idempotencyKey] {
                guard existing.fingerprint == new.fingerprint, let order = orders[existing.orderID] else { return (.idempotencyKeyReused, nil) }
                return (.orderReplayed(order), nil)
            }
            if let clash = orders[new.order.id] {
                // The same order id under another key: only possible if a shell reused an id; refuse, write nothing.
                return (.orderReplayed(clash), nil)
            }
            orders[new.order.id] = new.order
            orderIDs.append(new.order.id)
            transitions.append(Transition(orderID: new.order.id, from: nil, to: new.order.status, at: new.order.createdAt))
            idempotencyKeys[new.idempotencyKey] = (new.fingerprint, new.order.id)
            if recipeVariants.createWithoutOutbox { return (.orderCreated(new.order), nil) }
            _ = kafkaOutbox.append(new.event)
            return (.orderCreated(new.order), .kafka)

        case .transition(let change):
            guard var order = orders[change.orderID] else { return (.orderNotFound, nil) }
            guard order.status.canMove(to: change.to) else { return (.illegalTransition(from: order.status), nil) }
            let from = order.status
            order.status = change.to
            if change.to == .processing || change.to == .fulfilled, order.processedAt == nil { order.processedAt = change.at }
            if change.to == .failed { order.failureReason = change.reason ?? "failed by request" }
            orders[order.id] = order
            transitions.append(Transition(orderID: order.id, from: from, to: change.to, at: change.at))
            var notify: OutboxKind?
            if let type = EventType(announcing: change.to) {
                _ = kafkaOutbox.append(PipelineEvent(type: type, order: order, at: change.at, includeOrder: false))
                notify = .kafka
            }
            if change.to == .fulfilled {
                _ = serviceBusOutbox.append(PipelineEvent(type: .orderFulfilled, orderID: order.id, at: change.at, status: .fulfilled))
            }
            return (.transitioned(order), notify)

        case .claimOutbox(let claim):
            let head = !recipeVariants.claimWithoutHeadOfLine
            let rows = claim.outbox == .kafka ? kafkaOutbox.claim(claim, headOfLine: head) : serviceBusOutbox.claim(claim, headOfLine: head)
            return (.claimed(rows), nil)

        case .settleOutbox(let settlement):
            let result = settlement.outbox == .kafka ? kafkaOutbox.settle(settlement) : serviceBusOutbox.settle(settlement)
            for row in result.deadLettered {
                record(DeadLetter(source: "\(settlement.outbox.rawValue)-outbox/\(row.sequence)", reason: row.lastError ?? "", payload: row.event.payload, at: settlement.now))
            }
            return (.settled(rows: result.rows), nil)

        case .releaseClaims(let kind, let owner):
            let released = kind == .kafka ? kafkaOutbox.release(owner: owner) : serviceBusOutbox.release(owner: owner)
            return (.released(rows: released), nil)

        case .fulfil(let fulfilment):
            let envelope = fulfilment.envelope
            guard !inbox.contains(envelope.id) else { return (.duplicate, nil) }
            inbox.insert(envelope.id)
            guard envelope.type == .orderCreated else { return (.recorded, nil) }
            guard var order = orders[envelope.orderID] else { return (.orderMissing, nil) }
            guard order.status == .pending else { return (.skipped(order.status), nil) }
            order.status = .processing
            order.processedAt = fulfilment.at
            transitions.append(Transition(orderID: order.id, from: .pending, to: .processing, at: fulfilment.at))
            order.status = .fulfilled
            transitions.append(Transition(orderID: order.id, from: .processing, to: .fulfilled, at: fulfilment.at))
            orders[order.id] = order
            _ = serviceBusOutbox.append(fulfilment.fulfilmentEvent)
            return (.fulfilled, .serviceBus)

        case .deadLetter(let letter):
            record(letter)
            return (.deadLettered, nil)
        }
    }

    private func record(_ letter: DeadLetter) {
        guard !deadLetterSources.contains(letter.source) else { return }
        deadLetterSources.insert(letter.source)
        deadLetters.append(letter)
    }
}

/// Store recipes a bug-zoo variant replaces (see docs/SIMULATION.md); all false in the correct pipeline.
public struct RecipeVariants: Sendable, Hashable {
    /// The order is written without an outbox row (the dual-write bug publishes directly instead).
    public var createWithoutOutbox = false
    /// Claims ignore head-of-line, so one order's rows can be claimed by two relays at once.
    public var claimWithoutHeadOfLine = false
    public init() {}
}
