/// Drains one outbox into its broker: claim → publish → wait for every ack → settle, one batch at a time.
///
/// The same machine relays both outboxes: the Kafka outbox (order events, channel `.orders`) and the Service Bus
/// outbox (fulfilment events, channel `.fulfilment`); they differ only in the channel and the store table.
/// - Rows are marked published only after the broker acknowledged them; a crash in between re-sends them (same
///   event id), which the consumer's inbox and Service Bus duplicate detection remove.
/// - Claims are leases fenced by owner: a relay paused past its lease is overtaken, and its late settlement
///   changes nothing. A restarted relay first releases what its past life held.
/// - The claim takes only the head row of each order, so several relays keep one order's events in order.
/// - Retriable failures and unknown outcomes back off with jitter and are retried forever; only a permanent
///   refusal dead-letters a row. Nothing is stranded.
public struct OutboxRelay: Sendable {
    public struct Configuration: Sendable, Hashable {
        public var outbox: OutboxKind
        /// Unique per relay process, stable across its restarts (e.g. `relay-1`).
        public var owner: String
        public var batchSize = 100
        public var lease: Duration = .seconds(30)
        /// Fallback poll when no NOTIFY arrives.
        public var pollInterval: Duration = .seconds(1)
        /// Backoff of a row whose publish failed (by its attempts) and of failed store calls.
        public var backoff = Backoff()
        /// After a batch of which nothing was delivered (the broker may be unreachable from here, not the rows at
        /// fault) the relay hands the rows back due at once, waits a growing backoff before its next claim, and until
        /// a delivery succeeds ignores NOTIFYs and claims one row at a time (a probe): a relay cut from its broker
        /// leaves the outbox to the relays that can reach theirs, and never pushes rows into their future.
        public var backOffWhileBrokerUnreachable = true

        public init(outbox: OutboxKind, owner: String) {
            self.outbox = outbox
            self.owner = owner
        }

        public var channel: Channel { outbox == .kafka ? .orders : .fulfilment }
    }

    /// What the relay is doing; a store call that failed is retried as the same step after a backoff.
    enum Step: Hashable, Sendable {
        case release
        case claim
        case publish([OutboxMessage])
        case settle(OutboxSettlement)
    }

    enum Phase: Hashable, Sendable {
        case stopped
        /// Waiting for the poll timer or a NOTIFY.
        case idle
        /// Waiting for the result of `step`.
        case awaiting(Ticket, Step)
        /// Waiting for the retry timer before doing `step` again.
        case backingOff(Step, failures: Int)
    }

    public let configuration: Configuration
    private(set) var phase: Phase = .stopped
    private var nextTicket: UInt64 = 0
    private var storeFailures = 0
    /// Consecutive batches of which nothing was delivered.
    private var brokerFailures = 0
    private var random: SplitMix64

    /// `seed` feeds the jitter: the production shell draws it from the system, the simulator from its run seed.
    public init(configuration: Configuration, seed: UInt64) {
        self.configuration = configuration
        self.random = SplitMix64(seed: seed)
    }

    public var isIdle: Bool { phase == .idle }

    /// Nothing got through on the latest batch: the broker may be unreachable from here.
    private var suspectsBroker: Bool { configuration.backOffWhileBrokerUnreachable && brokerFailures > 0 }

    public mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        switch input {
        case .start:
            storeFailures = 0
            brokerFailures = 0
            return perform(.release, now: now)
        case .wake:
            guard phase == .idle, !suspectsBroker else { return [] }
            return [.cancelTimer(.poll)] + perform(.claim, now: now)
        case .timer(.poll):
            guard phase == .idle else { return [] }
            return perform(.claim, now: now)
        case .timer(.retry):
            guard case .backingOff(let step, _) = phase else { return [] }
            return perform(step, now: now)
        case let .stored(ticket, result):
            guard case .awaiting(ticket, let step) = phase else { return [] }
            return stored(step, result, now: now)
        case let .published(ticket, outcomes):
            guard case .awaiting(ticket, .publish(let rows)) = phase, outcomes.count == rows.count else { return [] }
            return settle(rows, outcomes, now: now)
        case .fetched, .assigned, .offsetsCommitted, .createOrder, .changeStatus:
            return []
        }
    }

    private mutating func perform(_ step: Step, now: Instant) -> [Effect] {
        nextTicket += 1
        let ticket = Ticket(nextTicket)
        phase = .awaiting(ticket, step)
        let c = configuration
        switch step {
        case .release:
            return [.store(ticket, .releaseClaims(outbox: c.outbox, owner: c.owner))]
        case .claim:
            return [.store(ticket, .claimOutbox(OutboxClaim(outbox: c.outbox, owner: c.owner, limit: suspectsBroker ? 1 : c.batchSize, lease: c.lease)))]
        case .publish(let rows):
            return [.publish(ticket, c.channel, rows)]
        case .settle(let settlement):
            return [.store(ticket, .settleOutbox(settlement))]
        }
    }

    private mutating func stored(_ step: Step, _ result: StoreResult, now: Instant) -> [Effect] {
        guard case .committed(let reply) = result else {
            storeFailures += 1
            phase = .backingOff(step, failures: storeFailures)
            let delay = configuration.backoff.delay(attempt: storeFailures, using: &random)
            let what = result == .unknown ? Note.unknownOutcome("\(configuration.owner) \(step.name)") : .storeRetry("\(configuration.owner) \(step.name)")
            return [.note(what), .setTimer(.retry, at: now + delay)]
        }
        storeFailures = 0
        switch (step, reply) {
        case (.claim, .claimed(let rows)) where rows.isEmpty:
            phase = .idle
            return [.setTimer(.poll, at: now + configuration.pollInterval)]
        case (.claim, .claimed(let rows)):
            return perform(.publish(rows), now: now)
        case (.settle(let settlement), .settled(let rows)):
            let expected = settlement.published.count + settlement.retries.count + settlement.rejections.count
            let lost: [Effect] = rows < expected ? [.note(.leaseLost(configuration.outbox, rows: expected - rows))] : []
            let nothingDelivered = settlement.published.isEmpty && settlement.rejections.isEmpty && !settlement.retries.isEmpty
            brokerFailures = nothingDelivered ? brokerFailures + 1 : 0
            if nothingDelivered, configuration.backOffWhileBrokerUnreachable {
                phase = .backingOff(.claim, failures: brokerFailures)
                let delay = configuration.backoff.delay(attempt: brokerFailures, using: &random)
                return lost + [.setTimer(.retry, at: now + delay)]
            }
            // More rows may be waiting: claim again at once rather than waiting for the poll.
            return lost + perform(.claim, now: now)
        case (.release, .released):
            return perform(.claim, now: now)
        default:
            // Never expected: a reply that does not fit the step. Start over from a claim, and say so.
            return [.note(.unexpected("\(step.name) answered \(reply.summary)"))] + perform(.claim, now: now)
        }
    }

    private mutating func settle(_ rows: [OutboxMessage], _ outcomes: [PublishOutcome], now: Instant) -> [Effect] {
        var settlement = OutboxSettlement(outbox: configuration.outbox, owner: configuration.owner)
        var notes: [Effect] = []
        let channel = configuration.channel
        for (row, outcome) in zip(rows, outcomes) {
            switch outcome {
            case .delivered:
                settlement.published.append(row.sequence)
                notes.append(.note(.published(channel, row)))
            case .failed(retriable: true, let reason), .unknown(let reason):
                let delay = configuration.backoff.delay(attempt: row.attempts, using: &random)
                settlement.retries.append(.init(sequence: row.sequence, delay: delay, error: reason))
                notes.append(.note(.publishRetry(channel, sequence: row.sequence, reason: reason)))
            case .refused(let condition, let description) where Refusal.isTransient(condition):
                let delay = configuration.backoff.delay(attempt: row.attempts, using: &random)
                let reason = "refused (\(condition)): \(description)"
                settlement.retries.append(.init(sequence: row.sequence, delay: delay, error: reason))
                notes.append(.note(.publishRetry(channel, sequence: row.sequence, reason: reason)))
            case .refused(let condition, let description):
                let reason = "refused (\(condition)): \(description)"
                settlement.rejections.append(.init(sequence: row.sequence, reason: reason))
                notes.append(.note(.deadLettered(channel, sequence: row.sequence, reason: reason)))
            case .failed(retriable: false, let reason):
                settlement.rejections.append(.init(sequence: row.sequence, reason: reason))
                notes.append(.note(.deadLettered(channel, sequence: row.sequence, reason: reason)))
            }
        }
        if configuration.backOffWhileBrokerUnreachable, settlement.published.isEmpty, settlement.rejections.isEmpty {
            // Nothing got through: suspect this relay's broker, not the rows. Others may take them at once.
            for index in settlement.retries.indices { settlement.retries[index].delay = .zero }
        }
        return notes + perform(.settle(settlement), now: now)
    }
}

extension OutboxRelay.Step {
    var name: String {
        switch self {
        case .release: "release"
        case .claim: "claim"
        case .publish: "publish"
        case .settle: "settle"
        }
    }
}
