/// Fulfils orders from the Kafka topic, exactly once in effect.
///
/// For each record, in partition order: decode it (poison goes to the dead-letter table and topic), run the
/// fulfilment transaction (pessimistic inbox: the event id first, then Pending → Processing → Fulfilled and the
/// Service Bus outbox row, one commit), and only once a fetched batch is fully handled commit the next offsets.
/// A redelivered record finds its inbox row and changes nothing. Work for partitions revoked by a rebalance is
/// never committed.
public struct FulfilmentConsumer: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// The topic name, for dead-letter sources ("orders/2@117").
        public var topic = "orders"
        public var fetchMax = 100
        public var backoff = Backoff()
        /// Attempts to copy a poison record to the dead-letter topic before moving on without the copy. The
        /// dead-letters table row, committed first, is the record of truth (`orderpipeline outbox dead-letters`);
        /// a topic that cannot take records (missing, an ACL, too large) must never halt the partitions.
        public var deadLetterForwardAttempts = 3
        public init() {}
    }

    enum Step: Hashable, Sendable {
        case fetch
        case store(ConsumedRecord, StoreCommand)
        case forward(ConsumedRecord, reason: String)
        case commit([PartitionOffset], generation: Int64)
    }

    enum Phase: Hashable, Sendable {
        case stopped
        /// Nothing assigned: waiting for the group.
        case unassigned
        case awaiting(Ticket, Step)
        case backingOff(Step, failures: Int)
    }

    public let configuration: Configuration
    private(set) var phase: Phase = .stopped
    private var generation: Int64 = -1
    private var partitions: [Int32] = []
    private var buffer: [ConsumedRecord] = []
    private var bufferStart = 0
    /// Next offset to commit per partition, handled but not yet committed.
    private var handled: [Int32: Int64] = [:]
    /// The generation the record in hand was fetched in: work on a record from before the latest assignment is
    /// never committed (the group resets positions to the committed offsets, so it comes again).
    private var recordGeneration: Int64 = -1
    private var failures = 0
    /// The transaction of the record in hand had an unknown outcome (its COMMIT may have happened).
    private var unknownOutcome = false
    private var nextTicket: UInt64 = 0
    private var random: SplitMix64

    public init(configuration: Configuration = Configuration(), seed: UInt64) {
        self.configuration = configuration
        self.random = SplitMix64(seed: seed)
    }

    public mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        switch input {
        case .start:
            self = FulfilmentConsumer(configuration: configuration, seed: random.next())
            phase = .unassigned
            return []
        case let .assigned(generation, partitions):
            return assigned(generation, partitions.sorted(), now: now)
        case .timer(.retry):
            guard case .backingOff(let step, _) = phase else { return [] }
            return perform(step, now: now)
        case let .fetched(ticket, records):
            guard case .awaiting(ticket, .fetch) = phase else { return [] }
            buffer.removeFirst(bufferStart)
            bufferStart = 0
            buffer += records.filter { partitions.contains($0.partition) }
            return next(now: now)
        case let .stored(ticket, result):
            guard case .awaiting(ticket, let step) = phase, case .store(let record, _) = step else { return [] }
            return stored(record, step, result, now: now)
        case let .published(ticket, outcomes):
            guard case .awaiting(ticket, let step) = phase, case .forward(let record, _) = step else { return [] }
            if outcomes.first == .delivered { return done(record, now: now) }
            // The dead-letter producer's session is unusable (fenced): replace it before the next attempt.
            let reset: [Effect] = outcomes.contains(where: \.isSessionUnusable) ? [.resetPublisher(.deadLetters)] : []
            if failures + 1 >= configuration.deadLetterForwardAttempts {
                failures = 0
                let reason = outcomes.first.map { "\($0)" } ?? "no outcome"
                return reset + [.note(.deadLetterCopySkipped(record, reason: reason))] + done(record, now: now)
            }
            return reset + backOff(step, note: .storeRetry("dead-letter topic"), now: now)
        case let .offsetsCommitted(ticket, outcome):
            guard case .awaiting(ticket, .commit(let offsets, _)) = phase else { return [] }
            switch outcome {
            case .committed:
                for committed in offsets where handled[committed.partition] == committed.offset {
                    handled[committed.partition] = nil
                }
                failures = 0
                return next(now: now)
            case .rebalanced:
                // The group moved on; the new owner of these partitions redoes the work (the inbox dedupes it).
                handled = [:]
                return [.note(.offsetsFenced)] + next(now: now)
            case .failed(let reason):
                return backOff(.commit(offsets, generation: generation), note: .storeRetry("commit: \(reason)"), now: now)
            }
        case .timer(.poll), .wake, .createOrder, .changeStatus:
            return []
        }
    }

    private mutating func assigned(_ newGeneration: Int64, _ newPartitions: [Int32], now: Instant) -> [Effect] {
        generation = newGeneration
        partitions = newPartitions
        // Eager rebalancing revokes everything and every partition restarts from its committed offset: buffered
        // records and uncommitted progress are dropped, and will be delivered again (the inbox dedupes them).
        buffer = []
        bufferStart = 0
        handled = [:]
        switch phase {
        case .stopped, .unassigned:
            guard !newPartitions.isEmpty else { phase = .unassigned; return [] }
            return next(now: now)
        case .awaiting(_, .commit), .backingOff(.commit, _):
            // A commit under the old generation is fenced anyway: drop it and read from the new assignment.
            return next(now: now)
        default:
            return []
        }
    }

    private mutating func next(now: Instant) -> [Effect] {
        guard !partitions.isEmpty else {
            phase = .unassigned
            return []
        }
        if bufferStart < buffer.count {
            let record = buffer[bufferStart]
            bufferStart += 1
            recordGeneration = generation
            unknownOutcome = false
            guard partitions.contains(record.partition) else { return next(now: now) }
            switch EventEnvelope.decode(record.value) {
            case .success(let envelope):
                var fulfilment = Fulfilment(envelope: envelope, at: now)
                fulfilment.fulfilmentEvent.traceParent = record.traceParent?.child(derivedFrom: fulfilment.fulfilmentEvent.id.uuid)
                return [.note(.consumed(record))] + perform(.store(record, .fulfil(fulfilment)), now: now)
            case .failure(let error):
                let reason = error.description
                let letter = DeadLetter(source: record.source(topic: configuration.topic), reason: reason, payload: record.value, at: now)
                return [.note(.poison(record, reason: reason))] + perform(.store(record, .deadLetter(letter)), now: now)
            }
        }
        if !handled.isEmpty {
            let offsets = handled.keys.sorted().map { PartitionOffset(partition: $0, offset: handled[$0]!) }
            return perform(.commit(offsets, generation: generation), now: now)
        }
        return perform(.fetch, now: now)
    }

    private mutating func perform(_ step: Step, now: Instant) -> [Effect] {
        nextTicket += 1
        let ticket = Ticket(nextTicket)
        phase = .awaiting(ticket, step)
        switch step {
        case .fetch: return [.fetch(ticket, max: configuration.fetchMax)]
        case .store(_, let command): return [.store(ticket, command)]
        case .forward(let record, let reason): return [.forwardDeadLetter(ticket, record, reason: reason)]
        case .commit(let offsets, let generation): return [.commitOffsets(ticket, offsets, generation: generation)]
        }
    }

    private mutating func stored(_ record: ConsumedRecord, _ step: Step, _ result: StoreResult, now: Instant) -> [Effect] {
        switch result {
        case .failed(let failure):
            return backOff(step, note: .storeRetry("fulfil: \(OrderIntake.describe(failure))"), now: now)
        case .unknown:
            unknownOutcome = true
            // Maybe committed: the same transaction again either does the work or finds the inbox row.
            return backOff(step, note: .unknownOutcome("fulfil"), now: now)
        case .committed(let reply):
            failures = 0
            var notes: [Effect] = []
            switch reply {
            case .fulfilled:
                if case .store(_, .fulfil(let f)) = step { notes.append(.note(.fulfilled(f.envelope.orderID))) }
            case .duplicate:
                // After an unknown outcome of this very transaction, the inbox row is (almost always) its own: the
                // earlier attempt committed, and that fulfilment is counted now, once.
                if case .store(_, .fulfil(let f)) = step {
                    notes.append(.note(unknownOutcome && f.envelope.type == .orderCreated ? .fulfilled(f.envelope.orderID) : .redeliveryDeduplicated(f.envelope.id)))
                }
            case .skipped(let status):
                if case .store(_, .fulfil(let f)) = step { notes.append(.note(.skipped(f.envelope.orderID, status))) }
            case .deadLettered:
                if case .store(_, .deadLetter(let letter)) = step {
                    return perform(.forward(record, reason: letter.reason), now: now)
                }
            default:
                break
            }
            return notes + done(record, now: now)
        }
    }

    private mutating func done(_ record: ConsumedRecord, now: Instant) -> [Effect] {
        if recordGeneration == generation, partitions.contains(record.partition) {
            handled[record.partition] = max(handled[record.partition] ?? 0, record.offset + 1)
        }
        return next(now: now)
    }

    private mutating func backOff(_ step: Step, note: Note, now: Instant) -> [Effect] {
        failures += 1
        phase = .backingOff(step, failures: failures)
        return [.note(note), .setTimer(.retry, at: now + configuration.backoff.delay(attempt: failures, using: &random))]
    }
}
