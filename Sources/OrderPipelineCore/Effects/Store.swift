/// The store's vocabulary: each command is one atomic transaction with a fixed recipe, written here once and
/// implemented twice — by the PostgreSQL adapter (SQL) and by the simulator's PostgreSQL model. The machines decide
/// *which* command to issue; the store only performs it. The contract tests hold both implementations to the
/// recipes below.

/// Which outbox a relay drains: the Kafka outbox (order events) or the Service Bus outbox (fulfilment events).
public enum OutboxKind: String, Sendable, CaseIterable, Hashable {
    case kafka
    case serviceBus = "service-bus"
}

/// A row of either outbox, as a relay claims it.
public struct OutboxMessage: Hashable, Sendable {
    /// The row's insertion sequence (a `bigserial`): oldest first, and the order of one order's events.
    public var sequence: Int64
    public var event: PipelineEvent
    /// How many claims this row has had, this one included.
    public var attempts: Int

    public init(sequence: Int64, event: PipelineEvent, attempts: Int) {
        self.sequence = sequence
        self.event = event
        self.attempts = attempts
    }
}

public enum StoreCommand: Hashable, Sendable {
    /// For each order of the batch, in one transaction: insert the order, its items and its `OrderCreated` Kafka
    /// outbox row (due at once by the database's clock) and record the idempotency key. If a key is already
    /// recorded, that order writes nothing: the same fingerprint replays the stored order (`.replayed`), another
    /// fingerprint is refused (`.keyReused`). Answered with `.ordersCreated`, one outcome per order, in order. The
    /// keys of one batch are distinct (the intake machine sees to it); the keys' locks are taken in key order, so
    /// batches that share keys cannot deadlock.
    case createOrders([NewOrder])
    /// Lock the order; if `to` is a legal successor, update it, append the Kafka outbox row for the event it
    /// announces (if any) and, when it becomes Fulfilled, the Service Bus outbox row. If the order already has
    /// status `to`, change nothing and answer `.transitioned` (idempotent: a re-issue after an unknown COMMIT finds
    /// its own change); any other move changes nothing and answers `.illegalTransition`.
    case transition(OrderTransition)
    /// Claim up to `limit` rows of one outbox (see `OutboxClaim`).
    case claimOutbox(OutboxClaim)
    /// Settle rows this owner claimed: mark published, schedule a retry, or dead-letter.
    case settleOutbox(OutboxSettlement)
    /// Drop every claim held by `owner` (a relay restarting from durable state frees what its past life held).
    case releaseClaims(outbox: OutboxKind, owner: String)
    /// The consumer's transaction over a batch of records (pessimistic inbox per record), see `Fulfilment`;
    /// answered with `.fulfilments`, one outcome per record, in order.
    case fulfil([Fulfilment])
    /// Record a poison record in the dead-letter table (idempotent on its source).
    case deadLetter(DeadLetter)
    /// Re-announce overdue orders (the reconciler): up to `limit` orders that are still Pending although every
    /// Kafka outbox row of theirs is settled and their `OrderCreated` row was published at least `overdueAfter`
    /// ago (the database's clock) get that row reopened — unpublished, due now, same event id and payload — so the
    /// relay publishes it again. A record the broker lost after acknowledging it is sent again; one the consumer
    /// merely has not reached yet is removed by the inbox. Answers the re-announced orders, oldest first.
    case reannounceOverdue(overdueAfter: Duration, limit: Int)
}

public struct NewOrder: Hashable, Sendable {
    public var order: Order
    public var event: PipelineEvent
    /// The client's Idempotency-Key, or `order:<id>` when it sent none, so an internal retry is idempotent too.
    public var idempotencyKey: String
    public var fingerprint: String

    public init(order: Order, event: PipelineEvent, idempotencyKey: String, fingerprint: String) {
        self.order = order
        self.event = event
        self.idempotencyKey = idempotencyKey
        self.fingerprint = fingerprint
    }
}

public struct OrderTransition: Hashable, Sendable {
    public var orderID: OrderID
    public var to: OrderStatus
    public var at: Instant
    public var reason: String?
    /// The request's trace, carried by the events this move appends to the outboxes.
    public var traceParent: TraceParent?

    public init(orderID: OrderID, to: OrderStatus, at: Instant, reason: String? = nil, traceParent: TraceParent? = nil) {
        self.orderID = orderID
        self.to = to
        self.at = at
        self.reason = reason
        self.traceParent = traceParent
    }
}

/// Claim recipe: among rows of `outbox` that are not published and not dead-lettered, whose `next_attempt_at` has
/// come and that nobody claims (`claimed_by IS NULL`), and that are the **head of their order** (no older row of the
/// same order is still unsettled), take the oldest `limit` by sequence (`FOR UPDATE SKIP LOCKED`), set
/// `claimed_by = owner`, `claimed_until = now + lease`, `attempts += 1`, and return them oldest first.
/// Head-of-line is what keeps one order's events in order however many relays run.
///
/// **Expired leases** (a relay gone or stalled past `claimed_until`) are taken over only by a claim with
/// `takeOverExpiredLeases`: first, in the same transaction, it takes the oldest claimed rows whose lease has run out
/// and that are the head of their order (rows another session has locked are skipped), then free rows up to
/// `limit` in all. Relays ask for it about once a second, not on every claim: a claim then never walks the rows of
/// the batches in flight (claimed rows are out of the claim's index), and the walk of the claimed rows that finds
/// the expired ones is paid once per interval. Every row such a claim locks, it takes: none is locked and left.
///
/// The reply also says whether rows are **held back** behind this owner: whether some unsettled row of the outbox
/// comes after (same order, higher sequence) an unsettled row claimed by `owner` — one it held before (whatever its
/// lease) or one this claim took. Such a row becomes claimable only when the owner settles its head, and no NOTIFY
/// announces that, so the owner claims again after that settle. Looked for only when the claim took fewer than
/// `limit` rows (a full claim answers `false`: its relay claims again anyway), so a backlog costs nothing more.
///
/// `now` is **the database's clock**, never the relay's: leases and due times are compared by one clock, so a relay
/// whose host clock is skewed can neither take over live leases nor push retries into another relay's future.
public struct OutboxClaim: Hashable, Sendable {
    public var outbox: OutboxKind
    public var owner: String
    public var limit: Int
    public var lease: Duration
    /// Take over expired leases first (see above).
    public var takeOverExpiredLeases: Bool

    public init(outbox: OutboxKind, owner: String, limit: Int, lease: Duration, takeOverExpiredLeases: Bool = false) {
        self.outbox = outbox
        self.owner = owner
        self.limit = limit
        self.lease = lease
        self.takeOverExpiredLeases = takeOverExpiredLeases
    }
}

/// Settle recipe, fenced by ownership: only rows still claimed by `owner` and not yet published change (a relay
/// whose lease expired and was taken over changes nothing). Published rows get `published_at = now`; retried rows
/// get `next_attempt_at = now + delay` and `last_error`; dead-lettered rows get `dead_lettered_at`, `last_error` and
/// a row in the dead-letter table. Every settled row loses its claim. `now` is the database's clock.
public struct OutboxSettlement: Hashable, Sendable {
    public struct Retry: Hashable, Sendable {
        public var sequence: Int64
        /// The backoff: the row is due again this long after the settlement commits.
        public var delay: Duration
        public var error: String
        public init(sequence: Int64, delay: Duration, error: String) {
            self.sequence = sequence
            self.delay = delay
            self.error = error
        }
    }

    public struct Rejection: Hashable, Sendable {
        public var sequence: Int64
        public var reason: String
        public init(sequence: Int64, reason: String) {
            self.sequence = sequence
            self.reason = reason
        }
    }

    public var outbox: OutboxKind
    public var owner: String
    public var published: [Int64]
    /// Where Kafka appended published rows (by sequence), stored with them; absent for Service Bus.
    public var positions: [Int64: RecordPosition]
    public var retries: [Retry]
    public var rejections: [Rejection]

    public init(
        outbox: OutboxKind, owner: String, published: [Int64] = [], positions: [Int64: RecordPosition] = [:], retries: [Retry] = [],
        rejections: [Rejection] = []
    ) {
        self.outbox = outbox
        self.owner = owner
        self.published = published
        self.positions = positions
        self.retries = retries
        self.rejections = rejections
    }

    public var isEmpty: Bool { published.isEmpty && retries.isEmpty && rejections.isEmpty }
}

/// One record of the consumer's transaction. `.fulfil` takes a batch and handles each record in order, all in one
/// commit: insert the envelope's event id into the inbox (`ON CONFLICT DO NOTHING`); if it was already there (or an
/// earlier record of the batch inserted it), change nothing for this record and answer `.duplicate`. Otherwise, for
/// `OrderCreated`: lock the order; if Pending, move it to Processing (stamping `processed_at`) and then to Fulfilled,
/// and append `fulfilmentEvent` to the Service Bus outbox, answering `.fulfilled`; if it is in any other status
/// answer `.skipped(status)`. Other event types are only recorded (`.recorded`). An `OrderCreated` whose order does
/// not exist answers `.orderMissing`. Re-issuing the same batch after an unknown outcome is idempotent: every
/// record then answers `.duplicate`, except an `OrderCreated` that attempt fulfilled: `.fulfilledByEarlierAttempt`
/// (judged on the state before the batch, for the first record of an event id: a repeat within the batch stays
/// `.duplicate`).
public struct Fulfilment: Hashable, Sendable {
    public var envelope: EventEnvelope
    public var at: Instant
    /// Written to the Service Bus outbox when this transaction fulfils the order; its `traceParent` is the consumed
    /// record's trace, continued by the consumer's span.
    public var fulfilmentEvent: PipelineEvent
    /// Where the record was read and the trace it carried: for the consumer's span (`TracedFulfilmentStore`); no
    /// recipe writes them.
    public var consumedFrom: RecordPosition? = nil
    public var consumedTrace: TraceParent? = nil

    public init(envelope: EventEnvelope, at: Instant) {
        self.envelope = envelope
        self.at = at
        self.fulfilmentEvent = PipelineEvent(type: .orderFulfilled, orderID: envelope.orderID, at: at, status: .fulfilled)
    }
}

/// A record that cannot be handled, kept with why. `source` is unique ("orders/2@117") so recording is idempotent.
public struct DeadLetter: Hashable, Sendable {
    public var source: String
    public var reason: String
    public var payload: [UInt8]
    public var at: Instant

    public init(source: String, reason: String, payload: [UInt8], at: Instant) {
        self.source = source
        self.reason = reason
        self.payload = payload
        self.at = at
    }
}

public enum StoreReply: Hashable, Sendable {
    /// One outcome per order of a `.createOrders` batch, in order.
    case ordersCreated([OrderCreation])
    case transitioned(Order)
    case orderNotFound
    case illegalTransition(from: OrderStatus)
    /// The rows claimed, oldest first, and whether rows are held back behind this owner (see `OutboxClaim`).
    case claimed([OutboxMessage], heldBack: Bool = false)
    case settled(rows: Int)
    case released(rows: Int)
    /// One outcome per record of a `.fulfil` batch, in order.
    case fulfilments([FulfilmentOutcome])
    case deadLettered
    case reannounced([OrderID])
}

/// What the create transaction did with one order of its batch (see `StoreCommand.createOrders`).
public enum OrderCreation: Hashable, Sendable {
    case created(Order)
    /// The key was recorded before with the same fingerprint: the stored order, nothing written.
    case replayed(Order)
    /// The key was recorded before with another fingerprint: nothing written.
    case keyReused

    public var isCreated: Bool {
        if case .created = self { true } else { false }
    }
}

/// What the fulfilment transaction did with one record (see `Fulfilment`).
public enum FulfilmentOutcome: Hashable, Sendable {
    case fulfilled
    case duplicate
    /// A duplicate `OrderCreated` whose order was fulfilled by an earlier attempt of this very transaction (one
    /// whose outcome was unknown: its order carries this record's `at` as `processed_at`). The work is done, once,
    /// and this answer is how it gets counted once; a redelivery's duplicate answers `.duplicate`.
    case fulfilledByEarlierAttempt
    case skipped(OrderStatus)
    case recorded
    case orderMissing
}

/// Why a transaction did not happen. All of these are retriable: nothing was written.
public enum StoreFailure: Hashable, Sendable {
    case unavailable(String)
    case timedOut
    case conflict(String)
}

public enum StoreResult: Hashable, Sendable {
    case committed(StoreReply)
    case failed(StoreFailure)
    /// The connection died during COMMIT: the transaction may or may not have happened. Machines converge by
    /// re-issuing the same command, which every recipe above makes idempotent.
    case unknown
}
