import OrderPipelineCore

/// Variants of the pipeline with the bugs order pipelines really ship. Each is a wrapper around a production
/// machine or a replaced store recipe, lives only here (the deployable binary cannot reach it), and must be caught
/// by the checker: `order-sim --bug NAME --seeds 200 --faults swarm` exits 1.
public enum ZooBug: String, CaseIterable, Sendable, Codable {
    case dualWrite = "dual-write"
    case autoCommit = "auto-commit"
    case randomMessageID = "random-message-id"
    case markBeforeAck = "mark-before-ack"
    case retryCap = "retry-cap"
    case optimisticInbox = "optimistic-inbox"
    case idCursor = "id-cursor"
    case unorderedRelays = "unordered-relays"
    case haltingDeadLetters = "halting-dead-letters"
    case claimWhileCutOff = "claim-while-cut-off"
    case refusalsPermanent = "refusals-permanent"
    case nonIdempotentPatch = "non-idempotent-patch"
    case noReconciler = "no-reconciler"
    case fulfilmentDropsTrace = "fulfilment-drops-trace"
    case neverResetProducer = "never-reset-producer"

    public var summary: String {
        switch self {
        case .dualWrite: "the API publishes to Kafka right after the database commit, with no outbox (the seed's first version)"
        case .autoCommit: "the consumer commits the Kafka offset on receipt, before doing the work"
        case .randomMessageID: "the Service Bus relay sends every message with a fresh random MessageId"
        case .markBeforeAck: "the relay marks outbox rows published before the broker acknowledged them"
        case .retryCap: "outbox rows claimed 3 times are never claimed again, even when the broker was merely down"
        case .optimisticInbox: "the consumer checks the inbox, does the work, and inserts the inbox row in a later transaction"
        case .idCursor: "the relay reads rows with id > last seen id, skipping rows that commit after a higher id"
        case .unorderedRelays: "relays claim with SKIP LOCKED but without head-of-line, so one order's events overtake each other"
        case .haltingDeadLetters: "the consumer retries a poison record's copy to the dead-letter topic forever, halting its partitions"
        case .claimWhileCutOff: "a relay that cannot reach its broker keeps claiming rows and failing them, starving healthy relays"
        case .refusalsPermanent: "every Service Bus refusal dead-letters the row, server-busy and expired tokens included"
        case .nonIdempotentPatch: "a status change to the status the order already has is refused, so a retried PATCH answers 409"
        case .noReconciler: "nothing looks again once an outbox row is published: records the broker loses leave orders Pending forever"
        case .fulfilmentDropsTrace: "the fulfilment transaction leaves the trace column out of its Service Bus outbox INSERT, so every fulfilment message starts a new trace"
        case .neverResetProducer: "the relay never recreates a fenced Kafka producer, so every later publish from it fails"
        }
    }

    /// The store recipes this bug replaces.
    public var recipeVariants: RecipeVariants {
        var variants = RecipeVariants()
        switch self {
        case .dualWrite: variants.createWithoutOutbox = true
        case .retryCap: variants.claimAttemptCap = 3
        case .optimisticInbox: variants.optimisticInbox = true
        case .idCursor: variants.idCursor = true
        case .unorderedRelays: variants.claimWithoutHeadOfLine = true
        case .nonIdempotentPatch: variants.transitionNotIdempotent = true
        case .fulfilmentDropsTrace: variants.fulfilWithoutTrace = true
        case .autoCommit, .randomMessageID, .markBeforeAck, .haltingDeadLetters, .claimWhileCutOff, .refusalsPermanent, .noReconciler,
            .neverResetProducer:
            break
        }
        return variants
    }

    /// Wraps a production machine with this bug's behaviour (or returns it unchanged).
    func wrap(_ machine: any PipelineMachine, role: World.Role, seed: UInt64) -> any PipelineMachine {
        switch (self, role, machine) {
        case (.dualWrite, .api, let intake as OrderIntake): DualWriteIntake(inner: intake)
        case (.autoCommit, .consumer, let consumer as FulfilmentConsumer): AutoCommitConsumer(inner: consumer)
        case (.randomMessageID, .relay(.serviceBus), let relay as OutboxRelay): RandomMessageIDRelay(inner: relay, random: SplitMix64(seed: seed))
        case (.markBeforeAck, .relay, let relay as OutboxRelay): MarkBeforeAckRelay(inner: relay)
        case (.optimisticInbox, .consumer, let consumer as FulfilmentConsumer): OptimisticInboxConsumer(inner: consumer)
        case (.haltingDeadLetters, .consumer, let consumer as FulfilmentConsumer):
            FulfilmentConsumer(configuration: with(consumer.configuration) { $0.deadLetterForwardAttempts = .max }, seed: seed)
        case (.refusalsPermanent, .relay(.serviceBus), let relay as OutboxRelay): PermanentRefusalsRelay(inner: relay)
        case (.noReconciler, .reconciler, _): Idle()
        case (.neverResetProducer, .relay(.kafka), let relay as OutboxRelay): NeverResetRelay(inner: relay)
        case (.claimWhileCutOff, .relay, let relay as OutboxRelay):
            OutboxRelay(configuration: with(relay.configuration) { $0.backOffWhileBrokerUnreachable = false }, seed: seed)
        default: machine
        }
    }
}

/// A copy of `value` with `change` applied (a production setting turned into its bug).
private func with<T>(_ value: T, _ change: (inout T) -> Void) -> T {
    var copy = value
    change(&copy)
    return copy
}

/// Tickets the wrappers use for their own effects, far above any the inner machine will reach.
private let wrapperTickets: UInt64 = 1 << 62

/// dual-write: no outbox row; after the commit the API fires the event at Kafka itself and answers at once.
struct DualWriteIntake: PipelineMachine {
    var inner: OrderIntake
    private var events: [Ticket: [PipelineEvent]] = [:]
    private var next = wrapperTickets

    init(inner: OrderIntake) { self.inner = inner }

    mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        if case .published(let ticket, _) = input, ticket.raw >= wrapperTickets { return [] }  // fire and forget
        var extra: [Effect] = []
        if case .stored(let ticket, .committed(.ordersCreated(let outcomes))) = input, let batch = events[ticket] {
            for (event, outcome) in zip(batch, outcomes) where outcome.isCreated {
                next += 1
                extra.append(.publish(Ticket(next), .orders, [OutboxMessage(sequence: 0, event: event, attempts: 1)]))
            }
        }
        if case .stored(let ticket, _) = input { events[ticket] = nil }
        let effects = inner.handle(input, now: now)
        for case .store(let ticket, .createOrders(let batch)) in effects { events[ticket] = batch.map(\.event) }
        return effects + extra
    }
}

/// auto-commit: as soon as records arrive, their offsets are committed; the work comes after.
struct AutoCommitConsumer: PipelineMachine {
    var inner: FulfilmentConsumer
    private var generation: Int64 = -1
    private var next = wrapperTickets

    init(inner: FulfilmentConsumer) { self.inner = inner }

    mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        switch input {
        case .offsetsCommitted(let ticket, _) where ticket.raw >= wrapperTickets:
            return []
        case .assigned(let generation, _):
            self.generation = generation
        case .fetched(_, let records) where !records.isEmpty:
            var highest: [Int32: Int64] = [:]
            for record in records { highest[record.partition] = max(highest[record.partition] ?? 0, record.offset + 1) }
            next += 1
            let offsets = highest.keys.sorted().map { PartitionOffset(partition: $0, offset: highest[$0]!) }
            return [.commitOffsets(Ticket(next), offsets, generation: generation)] + inner.handle(input, now: now)
        default:
            break
        }
        return inner.handle(input, now: now)
    }
}

/// random-message-id: every send gets a fresh MessageId, so a re-sent event is a new message downstream.
struct RandomMessageIDRelay: PipelineMachine {
    var inner: OutboxRelay
    var random: SplitMix64

    mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        inner.handle(input, now: now).map { effect in
            guard case .publish(let ticket, .fulfilment, let rows) = effect else { return effect }
            return .publish(
                ticket, .fulfilment,
                rows.map { row in
                    var row = row
                    row.event.id = EventID(UUID128.random(using: &random))
                    return row
                })
        }
    }
}

/// mark-before-ack: the rows are marked published first; the publish goes out after the mark committed.
struct MarkBeforeAckRelay: PipelineMachine {
    var inner: OutboxRelay
    private var held: [Ticket: Effect] = [:]
    private var next = wrapperTickets

    init(inner: OutboxRelay) { self.inner = inner }

    mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        if case .stored(let ticket, _) = input, ticket.raw >= wrapperTickets {
            guard let publish = held.removeValue(forKey: ticket) else { return [] }
            return [publish]
        }
        return inner.handle(input, now: now).map { effect in
            guard case .publish(_, _, let rows) = effect else { return effect }
            next += 1
            held[Ticket(next)] = effect
            let c = inner.configuration
            return .store(Ticket(next), .settleOutbox(OutboxSettlement(outbox: c.outbox, owner: c.owner, published: rows.map(\.sequence))))
        }
    }
}

/// optimistic-inbox: the fulfilment transaction only checks the inbox (the store variant skips the insert and the
/// status check); the inbox row is written by a second transaction once the first committed. The second
/// transaction is expressed with the store's "record an event id" recipe (a non-OrderCreated envelope).
struct OptimisticInboxConsumer: PipelineMachine {
    var inner: FulfilmentConsumer
    private var work: [Ticket: [Fulfilment]] = [:]
    private var held: [Ticket: Input] = [:]
    private var next = wrapperTickets

    init(inner: FulfilmentConsumer) { self.inner = inner }

    mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        if case .stored(let ticket, _) = input, ticket.raw >= wrapperTickets {
            guard let original = held.removeValue(forKey: ticket) else { return [] }
            return track(inner.handle(original, now: now))
        }
        if case .stored(let ticket, .committed(.fulfilments(let outcomes))) = input, let batch = work.removeValue(forKey: ticket) {
            let done = zip(batch, outcomes).filter { $0.1 == .fulfilled }.map(\.0)
            if !done.isEmpty {
                next += 1
                held[Ticket(next)] = input
                return [
                    .store(
                        Ticket(next),
                        .fulfil(
                            done.map {
                                Fulfilment(envelope: EventEnvelope(id: $0.envelope.id, type: .orderFailed, orderID: $0.envelope.orderID), at: now)
                            }))
                ]
            }
        }
        return track(inner.handle(input, now: now))
    }

    private mutating func track(_ effects: [Effect]) -> [Effect] {
        for case .store(let ticket, .fulfil(let batch)) in effects { work[ticket] = batch }
        return effects
    }
}

/// refusals-permanent: the adapter's old mapping — every `rejected` disposition is a permanent failure.
struct PermanentRefusalsRelay: PipelineMachine {
    var inner: OutboxRelay

    mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        guard case .published(let ticket, let outcomes) = input else { return inner.handle(input, now: now) }
        let judged = outcomes.map { outcome -> PublishOutcome in
            if case .refused(let condition, let description) = outcome { return .failed(retriable: false, reason: "\(condition): \(description)") }
            return outcome
        }
        return inner.handle(.published(ticket, judged), now: now)
    }
}

/// never-reset-producer: the relay's reset of its fenced producer is dropped (the adapter never recreates one).
struct NeverResetRelay: PipelineMachine {
    var inner: OutboxRelay

    mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        inner.handle(input, now: now).filter { if case .resetPublisher = $0 { false } else { true } }
    }
}

/// no-reconciler: a node that never does anything.
struct Idle: PipelineMachine {
    mutating func handle(_ input: Input, now: Instant) -> [Effect] { [] }
}
