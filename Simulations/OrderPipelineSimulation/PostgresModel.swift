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
        /// Where Kafka appended it, as its latest settlement said (nil for Service Bus rows).
        public var publishedPosition: RecordPosition?
        public var deadLetteredAt: Instant?
        public var isSettled: Bool { publishedAt != nil || deadLetteredAt != nil }
    }

    /// One outbox table with its head-of-line index.
    ///
    /// Sequence numbers are taken when a transaction starts (`reserve`) and become visible at its commit, as a
    /// `bigserial` does: a lower sequence can commit after a higher one, and a rolled-back one leaves a gap.
    public struct OutboxTable: Sendable {
        /// Rows in commit order; `position` finds one by sequence.
        private var stored: [OutboxRow] = []
        private var position: [Int64: Int] = [:]
        /// Unsettled sequences, ascending: what claims scan.
        private var unsettledSequences: [Int64] = []
        /// Unsettled sequences per order, ascending: the first is the only claimable row of that order.
        private var unsettled: [OrderID: [Int64]] = [:]
        private var lastReserved: Int64 = 0
        /// Per-owner cursors of the `id-cursor` bug (the correct relay keeps none).
        private var cursors: [String: Int64] = [:]

        /// `nextval`: taken when the inserting transaction starts.
        mutating func reserve() -> Int64 {
            lastReserved += 1
            return lastReserved
        }

        mutating func insert(_ event: PipelineEvent, sequence reserved: Int64?, at now: Instant) {
            let sequence = reserved ?? reserve()
            position[sequence] = stored.count
            stored.append(OutboxRow(sequence: sequence, event: event, nextAttemptAt: now))
            unsettledSequences.insert(sequence, at: unsettledSequences.insertionPoint(of: sequence))
            addUnsettled(sequence, of: event.orderID)
        }

        public func row(_ sequence: Int64) -> OutboxRow? { position[sequence].map { stored[$0] } }

        /// Every committed row, by sequence.
        public var rows: [OutboxRow] { stored.sorted { $0.sequence < $1.sequence } }

        public var pending: [OutboxRow] { unsettledSequences.compactMap { row($0) } }

        mutating func claim(_ claim: OutboxClaim, variants: RecipeVariants, at now: Instant) -> (rows: [OutboxMessage], heldBack: Bool) {
            let cursor = variants.idCursor ? cursors[claim.owner, default: 0] : .min
            func claimable(_ sequence: Int64, expired: Bool) -> Bool {
                guard sequence > cursor, let i = position[sequence] else { return false }
                let row = stored[i]
                guard row.nextAttemptAt <= now else { return false }
                guard expired ? row.claimedBy != nil && row.claimedUntil <= now : row.claimedBy == nil else { return false }
                if !variants.claimWithoutHeadOfLine, unsettled[row.event.orderID]?.first != sequence { return false }
                if let cap = variants.claimAttemptCap, row.attempts >= cap { return false }
                return true
            }
            // Expired leases first when asked (longest expired first), then free rows (oldest first), up to the
            // limit in all: the recipe's two statements.
            var picked: [Int64] = []
            if claim.takeOverExpiredLeases {
                let expired = unsettledSequences.filter { claimable($0, expired: true) }
                    .sorted { (stored[position[$0]!].claimedUntil, $0) < (stored[position[$1]!].claimedUntil, $1) }
                picked += expired.prefix(claim.limit)
            }
            for sequence in unsettledSequences where picked.count < claim.limit && claimable(sequence, expired: false) {
                picked.append(sequence)
            }
            var claimed: [OutboxMessage] = []
            for sequence in picked.sorted() {
                guard let i = position[sequence] else { continue }
                stored[i].claimedBy = claim.owner
                stored[i].claimedUntil = now + claim.lease
                stored[i].attempts += 1
                claimed.append(OutboxMessage(sequence: sequence, event: stored[i].event, attempts: stored[i].attempts))
            }
            if variants.idCursor, let last = claimed.last?.sequence { cursors[claim.owner] = max(cursor, last) }
            guard claimed.count < claim.limit else { return (claimed, false) }
            // Rows held back: a later unsettled row of an order whose unsettled row this owner holds (as before, or
            // just taken).
            let heldBack = unsettledSequences.contains { sequence in
                guard let i = position[sequence], stored[i].claimedBy == claim.owner, let last = unsettled[stored[i].event.orderID]?.last else { return false }
                return last > sequence
            }
            return (claimed, heldBack)
        }

        /// Applies the fenced settlement; answers how many rows changed.
        mutating func settle(_ settlement: OutboxSettlement, at now: Instant) -> (rows: Int, deadLettered: [OutboxRow]) {
            var changed = 0
            var letters: [OutboxRow] = []
            func owned(_ sequence: Int64) -> Int? {
                guard let i = position[sequence], !stored[i].isSettled, stored[i].claimedBy == settlement.owner else { return nil }
                return i
            }
            for sequence in settlement.published {
                guard let i = owned(sequence) else { continue }
                stored[i].publishedAt = now
                stored[i].publishedPosition = settlement.positions[sequence]
                stored[i].claimedBy = nil
                settled(i)
                changed += 1
            }
            for retry in settlement.retries {
                guard let i = owned(retry.sequence) else { continue }
                stored[i].nextAttemptAt = now + retry.delay
                stored[i].lastError = retry.error
                stored[i].claimedBy = nil
                changed += 1
            }
            for rejection in settlement.rejections {
                guard let i = owned(rejection.sequence) else { continue }
                stored[i].deadLetteredAt = now
                stored[i].lastError = rejection.reason
                stored[i].claimedBy = nil
                settled(i)
                letters.append(stored[i])
                changed += 1
            }
            return (changed, letters)
        }

        /// Makes a published row unsettled again, due `now` (the reconciler's re-announcement).
        mutating func reopen(_ sequence: Int64, at now: Instant) {
            guard let i = position[sequence], stored[i].publishedAt != nil else { return }
            stored[i].publishedAt = nil
            stored[i].nextAttemptAt = now
            stored[i].lastError = "re-announced: published but not fulfilled in time"
            unsettledSequences.insert(sequence, at: unsettledSequences.insertionPoint(of: sequence))
            addUnsettled(sequence, of: stored[i].event.orderID)
        }

        /// Whether the order has an unsettled row.
        func hasUnsettled(_ order: OrderID) -> Bool { unsettled[order] != nil }

        mutating func release(owner: String) -> Int {
            var released = 0
            for sequence in unsettledSequences {
                guard let i = position[sequence], stored[i].claimedBy == owner else { continue }
                stored[i].claimedBy = nil
                released += 1
            }
            return released
        }

        /// Adds a sequence to its order's unsettled ones (taken out of the dictionary meanwhile: changed in place).
        private mutating func addUnsettled(_ sequence: Int64, of order: OrderID) {
            var queue = unsettled.removeValue(forKey: order) ?? []
            queue.insert(sequence, at: queue.insertionPoint(of: sequence))
            unsettled[order] = queue
        }

        private mutating func settled(_ index: Int) {
            let sequence = stored[index].sequence
            let order = stored[index].event.orderID
            // Taken out of the dictionary while it changes, so the array is changed in place, not copied.
            if var queue = unsettled.removeValue(forKey: order) {
                if let at = queue.firstIndex(of: sequence) { queue.remove(at: at) }
                if !queue.isEmpty { unsettled[order] = queue }
            }
            let at = unsettledSequences.insertionPoint(of: sequence)
            if at < unsettledSequences.count, unsettledSequences[at] == sequence { unsettledSequences.remove(at: at) }
        }
    }

    public struct Transition: Hashable, Sendable {
        public var orderID: OrderID
        public var from: OrderStatus?
        public var to: OrderStatus
        public var at: Instant
        /// When the transaction committed, by the database's clock (`at` is the caller's, possibly skewed).
        public var committedAt = Instant(microseconds: 0)
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

    /// The database's clock (`now()`): due times and leases are stamped and compared by it alone, never by the
    /// clients' clocks. The world sets it to true time before each transaction; tests set it as they need.
    public var now = Instant(microseconds: 0)

    /// Which recipes a bug-zoo variant replaces; the correct store uses none.
    public var recipeVariants = RecipeVariants()

    public init() {}

    public func outbox(_ kind: OutboxKind) -> OutboxTable { kind == .kafka ? kafkaOutbox : serviceBusOutbox }

    /// Performs one command as one atomic transaction. `notify` is set when the transaction wrote an outbox row
    /// (the NOTIFY that wakes the relays of that outbox).
    /// Sequence numbers a transaction took when it started (see `OutboxTable.reserve`).
    public struct Reservation: Sendable, Hashable {
        public var kafka: Int64?
        public var serviceBus: Int64?
        /// One Service Bus sequence per record of a `.fulfil` batch (a record that fulfils nothing leaves a gap).
        public var fulfilments: [Int64] = []
        /// One Kafka sequence per order of a `.createOrders` batch (an order that creates nothing leaves a gap).
        public var creates: [Int64] = []
        public init(kafka: Int64? = nil, serviceBus: Int64? = nil) {
            self.kafka = kafka
            self.serviceBus = serviceBus
        }
    }

    /// One order of a `.createOrders` batch.
    private func create(_ new: NewOrder, sequence: Int64?) -> OrderCreation {
        if let existing = idempotencyKeys[new.idempotencyKey] {
            guard existing.fingerprint == new.fingerprint, let order = orders[existing.orderID] else { return .keyReused }
            return .replayed(order)
        }
        if let clash = orders[new.order.id] {
            // The same order id under another key: only possible if a shell reused an id; refuse, write nothing.
            return .replayed(clash)
        }
        orders[new.order.id] = new.order
        orderIDs.append(new.order.id)
        transitions.append(Transition(orderID: new.order.id, from: nil, to: new.order.status, at: new.order.createdAt, committedAt: now))
        idempotencyKeys[new.idempotencyKey] = (new.fingerprint, new.order.id)
        if !recipeVariants.createWithoutOutbox { kafkaOutbox.insert(new.event, sequence: sequence, at: now) }
        return .created(new.order)
    }

    /// `nextval` for the outbox rows `command` may insert, taken when its transaction starts.
    public func reserve(for command: StoreCommand) -> Reservation {
        switch command {
        case .createOrders(let batch):
            var reservation = Reservation()
            reservation.creates = batch.map { _ in kafkaOutbox.reserve() }
            return reservation
        case .transition: return Reservation(kafka: kafkaOutbox.reserve(), serviceBus: serviceBusOutbox.reserve())
        case .fulfil(let batch):
            var reservation = Reservation()
            reservation.fulfilments = batch.map { _ in serviceBusOutbox.reserve() }
            return reservation
        default: return Reservation()
        }
    }

    public func perform(_ command: StoreCommand, reserved: Reservation = Reservation()) -> (reply: StoreReply, notify: OutboxKind?) {
        switch command {
        case .createOrders(let batch):
            var outcomes: [OrderCreation] = []
            for (index, new) in batch.enumerated() {
                outcomes.append(create(new, sequence: index < reserved.creates.count ? reserved.creates[index] : nil))
            }
            return (.ordersCreated(outcomes), outcomes.contains(where: \.isCreated) && !recipeVariants.createWithoutOutbox ? .kafka : nil)

        case .transition(let change):
            guard var order = orders[change.orderID] else { return (.orderNotFound, nil) }
            if order.status == change.to, !recipeVariants.transitionNotIdempotent { return (.transitioned(order), nil) }
            guard order.status.canMove(to: change.to) else { return (.illegalTransition(from: order.status), nil) }
            let from = order.status
            order.status = change.to
            if change.to == .processing || change.to == .fulfilled, order.processedAt == nil { order.processedAt = change.at }
            if change.to == .failed { order.failureReason = change.reason ?? "failed by request" }
            orders[order.id] = order
            transitions.append(Transition(orderID: order.id, from: from, to: change.to, at: change.at, committedAt: now))
            var notify: OutboxKind?
            if let type = EventType(announcing: change.to) {
                var event = PipelineEvent(type: type, order: order, at: change.at, includeOrder: false)
                event.traceParent = change.traceParent
                kafkaOutbox.insert(event, sequence: reserved.kafka, at: now)
                notify = .kafka
            }
            if change.to == .fulfilled {
                var event = PipelineEvent(type: .orderFulfilled, orderID: order.id, at: change.at, status: .fulfilled)
                event.traceParent = change.traceParent
                serviceBusOutbox.insert(event, sequence: reserved.serviceBus, at: now)
            }
            return (.transitioned(order), notify)

        case .claimOutbox(let claim):
            let (rows, heldBack) =
                claim.outbox == .kafka ? kafkaOutbox.claim(claim, variants: recipeVariants, at: now) : serviceBusOutbox.claim(claim, variants: recipeVariants, at: now)
            return (.claimed(rows, heldBack: heldBack), nil)

        case .settleOutbox(let settlement):
            let result = settlement.outbox == .kafka ? kafkaOutbox.settle(settlement, at: now) : serviceBusOutbox.settle(settlement, at: now)
            for row in result.deadLettered {
                record(DeadLetter(source: "\(settlement.outbox.rawValue)-outbox/\(row.sequence)", reason: row.lastError ?? "", payload: row.event.payload, at: now))
            }
            return (.settled(rows: result.rows), nil)

        case .releaseClaims(let kind, let owner):
            let released = kind == .kafka ? kafkaOutbox.release(owner: owner) : serviceBusOutbox.release(owner: owner)
            return (.released(rows: released), nil)

        case .fulfil(let batch):
            // Judged on the state before the batch, as the statement's snapshot does, for an event id's first record.
            let earlier = batch.indices.map { index in
                fulfilledByEarlierAttempt(batch[index]) && !batch[..<index].contains { $0.envelope.id == batch[index].envelope.id }
            }
            let outcomes = batch.indices.map {
                fulfil(batch[$0], sequence: $0 < reserved.fulfilments.count ? reserved.fulfilments[$0] : nil, earlierAttempt: earlier[$0])
            }
            return (.fulfilments(outcomes), outcomes.contains(.fulfilled) ? .serviceBus : nil)

        case .deadLetter(let letter):
            record(letter)
            return (.deadLettered, nil)

        case let .reannounceOverdue(overdueAfter, limit):
            var reannounced: [OrderID] = []
            for id in orderIDs where reannounced.count < limit && orders[id]?.status == .pending && !kafkaOutbox.hasUnsettled(id) {
                guard let created = kafkaOutbox.rows.first(where: { $0.event.orderID == id && $0.event.type == .orderCreated }),
                    let published = created.publishedAt, published + overdueAfter <= now
                else { continue }
                kafkaOutbox.reopen(created.sequence, at: now)
                reannounced.append(id)
            }
            return (.reannounced(reannounced), reannounced.isEmpty ? nil : .kafka)
        }
    }

    /// A duplicate OrderCreated whose order an earlier attempt of the same transaction fulfilled (same `at`).
    private func fulfilledByEarlierAttempt(_ f: Fulfilment) -> Bool {
        guard f.envelope.type == .orderCreated, inbox.contains(f.envelope.id), let order = orders[f.envelope.orderID] else { return false }
        return order.status == .fulfilled && order.processedAt == f.at
    }

    /// One record of a `.fulfil` batch, in order (the batch's records see each other's inbox rows).
    private func fulfil(_ fulfilment: Fulfilment, sequence: Int64?, earlierAttempt: Bool) -> FulfilmentOutcome {
        let envelope = fulfilment.envelope
        guard !inbox.contains(envelope.id) else { return earlierAttempt ? .fulfilledByEarlierAttempt : .duplicate }
        let optimistic = recipeVariants.optimisticInbox && envelope.type == .orderCreated
        if !optimistic { inbox.insert(envelope.id) }
        guard envelope.type == .orderCreated else { return .recorded }
        guard var order = orders[envelope.orderID] else { return .orderMissing }
        if !optimistic {
            guard order.status == .pending else { return .skipped(order.status) }
        }
        transitions.append(Transition(orderID: order.id, from: order.status, to: .processing, at: fulfilment.at, committedAt: now))
        order.status = .processing
        order.processedAt = fulfilment.at
        order.status = .fulfilled
        transitions.append(Transition(orderID: order.id, from: .processing, to: .fulfilled, at: fulfilment.at, committedAt: now))
        orders[order.id] = order
        var event = fulfilment.fulfilmentEvent
        if recipeVariants.fulfilWithoutTrace { event.traceParent = nil }
        serviceBusOutbox.insert(event, sequence: sequence, at: now)
        return .fulfilled
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
    /// Claims read `sequence > last seen` per relay, skipping rows that commit after a higher sequence.
    public var idCursor = false
    /// Rows claimed this many times are never claimed again (the seed's "3 retries, then forever").
    public var claimAttemptCap: Int?
    /// The fulfilment transaction trusts the inbox check alone and does not insert the inbox row (a second
    /// transaction does, afterwards), so a redelivery in between does the work twice.
    public var optimisticInbox = false
    /// A transition to the status the order already has is refused as illegal, so a PATCH re-issued after an
    /// unknown COMMIT answers 409 although its own change was applied.
    public var transitionNotIdempotent = false
    /// The fulfilment transaction writes its Service Bus outbox row without the consumed record's trace.
    public var fulfilWithoutTrace = false
    public init() {}
}

extension Array where Element == Int64 {
    /// Index of the first element not less than `value` (the array is sorted ascending).
    func insertionPoint(of value: Int64) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if self[mid] < value { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
