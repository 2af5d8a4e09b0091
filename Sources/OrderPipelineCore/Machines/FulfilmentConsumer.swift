/// Fulfils orders from the Kafka topic, exactly once in effect.
///
/// Fetched records queue up per partition. Each partition has at most one piece of work in flight, so its records
/// are handled in order, while different partitions are worked on at once: consecutive decodable records of a
/// partition (up to `batchMax`) go to the store as one fulfilment transaction (pessimistic inbox per record: the
/// event id first, then Pending → Processing → Fulfilled and the Service Bus outbox row; one commit for the
/// batch); a poison record ends a batch and goes alone to the dead-letter table, then the dead-letter topic. Under
/// light load the idle partitions' records, when together they are few (`combineMax`), go as one transaction (each
/// partition's in order): a transaction's fixed cost in PostgreSQL is that of several records. A
/// partition's next offset is committed only after its work, and at most once per `commitInterval`. One fetch and
/// one offset commit are in flight at a time, beside the work. A redelivered record finds its inbox row and changes nothing. Work for partitions revoked
/// by a rebalance is never committed.
public struct FulfilmentConsumer: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// The topic name, for dead-letter sources ("orders/2@117").
        public var topic = "orders"
        /// Records asked for per fetch; the next fetch goes out while fewer than this many per assigned partition
        /// wait for their turn. (A broker's answer often holds one partition's records only: with a bound for all
        /// partitions together, one busy partition's queue would stop the fetches that feed the idle ones.)
        public var fetchMax = 100
        /// Most records in one fulfilment transaction.
        public var batchMax = 100
        /// Most records of several idle partitions that go together as one transaction (light load: a fulfil
        /// transaction costs PostgreSQL about as much CPU as five records). More than that and each partition has a
        /// transaction of its own, side by side, as a drain needs (their commits share WAL flushes).
        public var combineMax = 25
        public var backoff = Backoff()
        /// Attempts to copy a poison record to the dead-letter topic before moving on without the copy. The
        /// dead-letters table row, committed first, is the record of truth (`orderpipeline outbox dead-letters`);
        /// a topic that cannot take records (missing, an ACL, too large) must never halt the partitions.
        public var deadLetterForwardAttempts = 3
        /// Offsets are committed at most this often (zero: after every piece of work); a commit due sooner waits for
        /// the `.commit` timer. Every commit is a write on the broker (`__consumer_offsets` in Kafka): at 1,000
        /// orders/s the consumer committed after each of ~100 batches a second, and Tansu spent ~1 ms of CPU on each,
        /// about a third of its share on the busy machine (docs/ARCHITECTURE.md). Progress not yet committed when the
        /// consumer dies is delivered again, which the inbox makes harmless: this is how much more of it there can be.
        public var commitInterval: Duration = .milliseconds(100)
        public init() {}
    }

    enum Step: Hashable, Sendable {
        /// The records a store command stands for: a batch for `.fulfil`, one poison record for `.deadLetter`.
        case store([ConsumedRecord], StoreCommand)
        case forward(ConsumedRecord, reason: String)
        case commit([PartitionOffset], generation: Int64)
    }

    /// A step in flight or waiting for its retry, with what its answer is judged by.
    struct Work: Hashable, Sendable {
        var step: Step
        /// The generation its records were fetched in: work from before the latest assignment is never committed
        /// (the group resets positions to the committed offsets, so the records come again).
        var generation: Int64
        var failures = 0

        /// The partitions its records come from (one, or several for a batch of idle partitions' records), in order.
        var partitions: [Int32] {
            switch step {
            case .store(let records, _):
                records.reduce(into: []) { partitions, record in
                    if partitions.last != record.partition { partitions.append(record.partition) }
                }
            case .forward(let record, _): [record.partition]
            case .commit: []
            }
        }

        var isCommit: Bool {
            if case .commit = step { true } else { false }
        }
    }

    public let configuration: Configuration
    private var generation: Int64 = -1
    private var partitions: [Int32] = []
    /// Fetched records not yet handed to the store, per partition, in fetch order.
    private var queued: [Int32: [ConsumedRecord]] = [:]
    private var queuedCount = 0
    /// Partitions with work in flight or waiting for its retry.
    private var busy: Set<Int32> = []
    /// Next offset to commit per partition, handled but not yet committed.
    private var handled: [Int32: Int64] = [:]
    private var fetching: Ticket?
    /// A commit is in flight or waiting for its retry.
    private var committing = false
    /// When the latest commit went out, and whether the `.commit` timer is set for the next one.
    private var lastCommitAt: Instant?
    private var commitTimerSet = false
    private var inFlight: [Ticket: Work] = [:]
    /// Work waiting for its backoff, soonest first; one `.retry` timer stands for the soonest.
    private var retries: [(at: Instant, work: Work)] = []
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
            return []
        case let .assigned(generation, partitions):
            return assigned(generation, partitions.sorted(), now: now)
        case .timer(.retry):
            return retryDue(now: now)
        case .timer(.commit):
            commitTimerSet = false
            return pump(now: now)
        case let .fetched(ticket, records):
            guard fetching == ticket else { return [] }
            fetching = nil
            for record in records where partitions.contains(record.partition) {
                queued[record.partition, default: []].append(record)
                queuedCount += 1
            }
            return pump(now: now)
        case let .stored(ticket, result):
            guard let work = inFlight[ticket], case .store(let records, _) = work.step else { return [] }
            inFlight[ticket] = nil
            return stored(work, records, result, now: now)
        case let .published(ticket, outcomes):
            guard let work = inFlight[ticket], case .forward(let record, _) = work.step else { return [] }
            inFlight[ticket] = nil
            if outcomes.first == .delivered { return done(work, [record], now: now) }
            // The dead-letter producer's session is unusable (fenced): replace it before the next attempt.
            let reset: [Effect] = outcomes.contains(where: \.isSessionUnusable) ? [.resetPublisher(.deadLetters)] : []
            if work.failures + 1 >= configuration.deadLetterForwardAttempts {
                let reason = outcomes.first.map { "\($0)" } ?? "no outcome"
                return reset + [.note(.deadLetterCopySkipped(record, reason: reason))] + done(work, [record], now: now)
            }
            return reset + backOff(work, note: .storeRetry("dead-letter topic"), now: now)
        case let .offsetsCommitted(ticket, outcome):
            guard let work = inFlight[ticket], case .commit(let offsets, _) = work.step else { return [] }
            inFlight[ticket] = nil
            switch outcome {
            case .committed:
                committing = false
                for committed in offsets where handled[committed.partition] == committed.offset {
                    handled[committed.partition] = nil
                }
                return pump(now: now)
            case .rebalanced:
                // The group moved on; the new owner of these partitions redoes the work (the inbox dedupes it).
                committing = false
                handled = [:]
                return [.note(.offsetsFenced)] + pump(now: now)
            case .failed(let reason):
                return backOff(work, note: .storeRetry("commit: \(reason)"), now: now)
            }
        case .timer(.poll), .timer(.gather), .wake, .createOrder, .changeStatus:
            return []
        }
    }

    private mutating func assigned(_ newGeneration: Int64, _ newPartitions: [Int32], now: Instant) -> [Effect] {
        generation = newGeneration
        partitions = newPartitions
        // Eager rebalancing revokes everything and every partition restarts from its committed offset: queued
        // records and uncommitted progress are dropped, and will be delivered again (the inbox dedupes them). Work
        // in flight finishes (a partition stays busy until it has) but is never committed. A commit under the old
        // generation is fenced anyway: its answer and its retry are dropped.
        queued = [:]
        queuedCount = 0
        handled = [:]
        inFlight = inFlight.filter { !$0.value.isCommit }
        retries.removeAll { $0.work.isCommit }
        committing = false
        return pump(now: now)
    }

    /// Starts what can start: a batch on every idle partition with queued records, a commit of the progress, and
    /// the next fetch while few records wait.
    private mutating func pump(now: Instant) -> [Effect] {
        guard !partitions.isEmpty else { return [] }
        var effects: [Effect] = []
        let idle = partitions.filter { !busy.contains($0) && queued[$0] != nil }
        if let combined = startCombinedBatch(idle, now: now) {
            effects += combined
        } else {
            for partition in idle { effects += startBatch(partition, now: now) }
        }
        if !committing, !handled.isEmpty {
            // A clock that stepped back since the latest commit makes the next one due at once.
            if let last = lastCommitAt, now >= last, now < last + configuration.commitInterval {
                if !commitTimerSet {
                    commitTimerSet = true
                    effects.append(.setTimer(.commit, at: last + configuration.commitInterval))
                }
            } else {
                committing = true
                lastCommitAt = now
                effects += perform(Work(step: .commit(progress, generation: generation), generation: generation), now: now)
            }
        }
        if fetching == nil, queuedCount < configuration.fetchMax * partitions.count {
            nextTicket += 1
            fetching = Ticket(nextTicket)
            effects.append(.fetch(Ticket(nextTicket), max: configuration.fetchMax))
        }
        return effects
    }

    private var progress: [PartitionOffset] {
        handled.keys.sorted().map { PartitionOffset(partition: $0, offset: handled[$0]!) }
    }

    /// The partition's next batch: its consecutive decodable records, or the poison record at its head alone.
    private mutating func startBatch(_ partition: Int32, now: Instant) -> [Effect] {
        guard let queue = queued[partition], !queue.isEmpty else { return [] }
        var records: [ConsumedRecord] = []
        var batch: [Fulfilment] = []
        for record in queue.prefix(configuration.batchMax) {
            let decoded = EventEnvelope.decode(record.value)  // once per record: it derives the event id again
            if case .failure(let error) = decoded, records.isEmpty {
                take(1, from: partition)
                let reason = error.description
                let letter = DeadLetter(source: record.source(topic: configuration.topic), reason: reason, payload: record.value, at: now)
                return [.note(.poison(record, reason: reason))] + perform(Work(step: .store([record], .deadLetter(letter)), generation: generation), now: now)
            }
            // Poison ends a batch; it is handled on its own, after the batch before it.
            guard case .success(let envelope) = decoded else { break }
            records.append(record)
            batch.append(Self.fulfilment(of: record, envelope, at: now))
        }
        take(records.count, from: partition)
        return records.map { .note(.consumed($0)) } + perform(Work(step: .store(records, .fulfil(batch)), generation: generation), now: now)
    }

    /// Light load: when two or more idle partitions have records queued, all of them decodable and together at most
    /// `combineMax` (and `batchMax`), they go as one transaction (each partition's records in order, the partitions
    /// in turn), and every one of those partitions waits for it. Otherwise nil: each partition gets a batch of its own.
    private mutating func startCombinedBatch(_ idle: [Int32], now: Instant) -> [Effect]? {
        let total = idle.reduce(0) { $0 + (queued[$1]?.count ?? 0) }
        guard idle.count > 1, total <= min(configuration.combineMax, configuration.batchMax) else { return nil }
        var records: [ConsumedRecord] = []
        var batch: [Fulfilment] = []
        for partition in idle {
            for record in queued[partition] ?? [] {
                guard case .success(let envelope) = EventEnvelope.decode(record.value) else { return nil }
                records.append(record)
                batch.append(Self.fulfilment(of: record, envelope, at: now))
            }
        }
        for partition in idle { take(queued[partition]?.count ?? 0, from: partition) }
        return records.map { .note(.consumed($0)) } + perform(Work(step: .store(records, .fulfil(batch)), generation: generation), now: now)
    }

    private static func fulfilment(of record: ConsumedRecord, _ envelope: EventEnvelope, at now: Instant) -> Fulfilment {
        var fulfilment = Fulfilment(envelope: envelope, at: now)
        let trace = record.traceParent  // parsed from the record's headers once
        fulfilment.fulfilmentEvent.traceParent = trace?.child(derivedFrom: fulfilment.fulfilmentEvent.id.uuid)
        fulfilment.consumedFrom = RecordPosition(partition: record.partition, offset: record.offset)
        fulfilment.consumedTrace = trace
        return fulfilment
    }

    private mutating func take(_ count: Int, from partition: Int32) {
        queued[partition]?.removeFirst(count)
        if queued[partition]?.isEmpty == true { queued[partition] = nil }
        queuedCount -= count
    }

    private mutating func perform(_ work: Work, now: Instant) -> [Effect] {
        nextTicket += 1
        let ticket = Ticket(nextTicket)
        inFlight[ticket] = work
        busy.formUnion(work.partitions)
        switch work.step {
        case .store(_, let command): return [.store(ticket, command)]
        case .forward(let record, let reason): return [.forwardDeadLetter(ticket, record, reason: reason)]
        case .commit(let offsets, let generation): return [.commitOffsets(ticket, offsets, generation: generation)]
        }
    }

    private mutating func stored(_ work: Work, _ records: [ConsumedRecord], _ result: StoreResult, now: Instant) -> [Effect] {
        var work = work
        switch result {
        case .failed(let failure):
            return backOff(work, note: .storeRetry("fulfil: \(OrderIntake.describe(failure))"), now: now)
        case .unknown:
            // Maybe committed: the same transaction again either does the work or finds the inbox rows.
            return backOff(work, note: .unknownOutcome("fulfil"), now: now)
        case .committed(let reply):
            var notes: [Effect] = []
            switch (reply, work.step) {
            case (.fulfilments(let outcomes), .store(_, .fulfil(let batch))):
                for (f, outcome) in zip(batch, outcomes) {
                    if let note = note(outcome, f) { notes.append(.note(note)) }
                }
            case (.deadLettered, .store(let records, .deadLetter(let letter))):
                work.step = .forward(records[0], reason: letter.reason)
                work.failures = 0
                return perform(work, now: now)
            default:
                break
            }
            return notes + done(work, records, now: now)
        }
    }

    private func note(_ outcome: FulfilmentOutcome, _ f: Fulfilment) -> Note? {
        switch outcome {
        // An earlier attempt whose outcome was unknown did commit: its fulfilment is counted now, once.
        case .fulfilled, .fulfilledByEarlierAttempt: .fulfilled(f.envelope.orderID)
        case .duplicate: .redeliveryDeduplicated(f.envelope.id)
        case .skipped(let status): .skipped(f.envelope.orderID, status)
        case .recorded, .orderMissing: nil
        }
    }

    /// The work on `records` is over: their partition is free, and their offsets count if still ours.
    private mutating func done(_ work: Work, _ records: [ConsumedRecord], now: Instant) -> [Effect] {
        busy.subtract(work.partitions)
        if work.generation == generation {
            for record in records where partitions.contains(record.partition) {
                handled[record.partition] = max(handled[record.partition] ?? 0, record.offset + 1)
            }
        }
        return pump(now: now)
    }

    private mutating func backOff(_ work: Work, note: Note, now: Instant) -> [Effect] {
        var work = work
        work.failures += 1
        let at = now + configuration.backoff.delay(attempt: work.failures, using: &random)
        boundRetries(now: now)
        let index = retries.firstIndex { $0.at > at } ?? retries.count
        retries.insert((at, work), at: index)
        return [.note(note), .setTimer(.retry, at: retries[0].at)]
    }

    /// Re-issues the work whose backoff is over (a commit with the progress made since) and re-arms for the rest.
    /// The timer was armed for the soonest, so that one goes even if the clock now reads earlier (it stepped back).
    private mutating func retryDue(now: Instant) -> [Effect] {
        var effects: [Effect] = []
        var armedFor = true
        while let first = retries.first, armedFor || first.at <= now {
            armedFor = false
            retries.removeFirst()
            var work = first.work
            if work.isCommit {
                guard !handled.isEmpty else { committing = false; continue }
                work.step = .commit(progress, generation: generation)
            }
            effects += perform(work, now: now)
        }
        boundRetries(now: now)
        if let next = retries.first { effects.append(.setTimer(.retry, at: next.at)) }
        return effects
    }

    /// No backoff is longer than the cap, so a retry due later than that from now was timed by a clock that has
    /// stepped back since: it goes at the cap instead of waiting out the step. (Order is kept: those become ties.)
    private mutating func boundRetries(now: Instant) {
        let latest = now + configuration.backoff.cap
        for index in retries.indices where retries[index].at > latest { retries[index].at = latest }
    }
}
