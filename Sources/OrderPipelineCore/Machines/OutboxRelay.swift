/// Drains one outbox into its broker: claim → publish → wait for every ack → settle, with up to
/// `pipelineDepth` batches in the air — the next batch is claimed while the current one is being published.
///
/// The same machine relays both outboxes: the Kafka outbox (order events, channel `.orders`) and the Service Bus
/// outbox (fulfilment events, channel `.fulfilment`); they differ only in the channel and the store table.
/// - Rows are marked published only after the broker acknowledged them; a crash in between re-sends them (same
///   event id), which the consumer's inbox and Service Bus duplicate detection remove.
/// - Claims are leases fenced by owner: a relay paused past its lease is overtaken, and its late settlement
///   changes nothing. A restarted relay first releases what its past life held. Expired leases are taken over by
///   a claim about once per `leaseSweepInterval` (every relay does it), not by every claim.
/// - The claim takes only the head row of each order (the oldest unsettled one, claimed or not), so neither several
///   relays nor this relay's own batches in flight ever have two rows of one order out at once: order per order is
///   kept. Leases keep the batches apart (not even the owner re-claims a row within its lease).
/// - It claims when rows may be waiting, not after every settle: on a NOTIFY or the poll, after a full claim, and
///   after a settle only if a NOTIFY came since its latest claim went out or that claim reported rows held back
///   behind this relay's own heads (their settle frees them, and no NOTIFY says so). Rows behind another relay's head
///   are that relay's to claim; rows in retry backoff are found by the next claim after they are due, the poll's at
///   the latest.
/// - Under load it gathers: when its latest claim found several rows but not a full batch, the next claim waits
///   `gatherDelay` first, so that it takes the rows of more orders at once. Each claim, settle and produce request
///   has a fixed cost, in PostgreSQL and in the broker, that a bigger batch shares. At a low rate claims find one
///   row and go out at once; a backlog's full claims are followed at once by the next.
/// - Retriable failures and unknown outcomes back off with jitter and are retried forever; only a permanent
///   refusal dead-letters a row. Nothing is stranded.
/// - A publisher that reports its session unusable (a fenced Kafka producer) is reset (`.resetPublisher`) just
///   before the next publish, once per broken session; the batch's rows are retried like unknown outcomes.
public struct OutboxRelay: Sendable {
    public struct Configuration: Sendable, Hashable {
        public var outbox: OutboxKind
        /// Unique per relay process, stable across its restarts (e.g. `relay-1`).
        public var owner: String
        /// Rows per claim: 500 for Kafka (measured: a 100k backlog drains about twice as fast as with 100, at
        /// half the relay's CPU per event; librdkafka packs them into a few produce requests), 100 for Service Bus.
        public var batchSize: Int
        /// Batches claimed and not yet settled at once. A full claim is followed at once by the next claim while
        /// the first batch is published; a NOTIFY claims whenever a slot is free.
        public var pipelineDepth = 2
        /// How long a claim waits under load (zero: never), and the load signal: the latest claim found at least
        /// `gatherAfterRows` rows and fewer than `batchSize` (librdkafka's `linger.ms`, for the same reason). At
        /// 1,000 orders/s, 5 ms halved claims and produce requests per order; 10 ms took a fifth more off the test
        /// broker's CPU and lowered the p99 in most rounds, for up to ~5 ms more at 500/s (docs/ARCHITECTURE.md).
        public var gatherDelay: Duration = .milliseconds(10)
        public var gatherAfterRows = 4
        public var lease: Duration = .seconds(30)
        /// How often a claim takes over expired leases first (`OutboxClaim.takeOverExpiredLeases`): a crashed or
        /// stalled relay's rows are taken over about this long after its lease ran out, by whichever relay claims.
        public var leaseSweepInterval: Duration = .seconds(1)
        /// Fallback poll when no NOTIFY arrives.
        public var pollInterval: Duration = .seconds(1)
        /// Backoff of a row whose publish failed (by its attempts) and of failed store calls.
        public var backoff = Backoff()
        /// After a batch of which nothing was delivered (the broker may be unreachable from here, not the rows at
        /// fault) the relay hands the rows back due at once, waits a growing backoff before its next claim, and until
        /// a delivery succeeds ignores NOTIFYs and claims one row at a time, one batch in the air (a probe): a relay
        /// cut from its broker leaves the outbox to the relays that can reach theirs, and never pushes rows into
        /// their future.
        public var backOffWhileBrokerUnreachable = true

        public init(outbox: OutboxKind, owner: String) {
            self.outbox = outbox
            self.owner = owner
            self.batchSize = outbox == .kafka ? 500 : 100
        }

        public var channel: Channel { outbox == .kafka ? .orders : .fulfilment }
    }

    /// An effect the relay waits for; a store call that failed is done again, as the same work, after a backoff.
    enum Work: Hashable, Sendable {
        case release
        case claim
        case publish([OutboxMessage])
        case settle(OutboxSettlement)
    }

    public let configuration: Configuration
    /// The release of the past life's claims is done: claims may start.
    private var released = false
    private var nextTicket: UInt64 = 0
    /// Effects out, by ticket (looked up only, never iterated for a decision).
    private var awaiting: [Ticket: Work] = [:]
    /// Store work that failed, done again when the retry timer fires at `retryAt`.
    private var retrying: [Work] = []
    private var retryAt: Instant?
    /// No claim before this time: nothing was delivered on the latest batch.
    private var pausedUntil: Instant?
    /// Rows may be waiting: claim as soon as a slot is free.
    private var wantsClaim = false
    /// The latest claim found rows held back behind rows this relay holds: the settle of one may free them.
    private var rowsHeldBack = false
    /// A settle came back while the claim that is out was: that claim may have seen its rows still held.
    private var settledDuringClaim = false
    /// Idle: the poll timer is set.
    private var polling = false
    /// Rows the latest claim found: the load signal for gathering.
    private var latestClaimRows = 0
    /// A claim is waiting for the gather timer (`.waiting`), or its wait is over (`.done`): it goes out at the next
    /// free slot.
    private var gathering = Gathering.no
    enum Gathering { case no, waiting, done }
    /// When the latest claim that takes over expired leases went out (nil: the next claim does).
    private var lastLeaseSweep: Instant?
    private var storeFailures = 0
    /// Consecutive batches of which nothing was delivered.
    private var brokerFailures = 0
    /// A publish reported the publisher's session unusable: reset it before the next publish.
    private var publisherNeedsReset = false
    /// Publishes with a ticket up to this one went out before the latest reset: their session is already replaced.
    private var lastTicketBeforeReset: UInt64 = 0
    private var random: SplitMix64

    /// `seed` feeds the jitter: the production shell draws it from the system, the simulator from its run seed.
    public init(configuration: Configuration, seed: UInt64) {
        self.configuration = configuration
        self.random = SplitMix64(seed: seed)
    }

    /// Started, nothing in flight, nothing to retry: waiting for a NOTIFY or the poll.
    public var isIdle: Bool { released && awaiting.isEmpty && retrying.isEmpty && pausedUntil == nil && gathering != .waiting }

    /// Nothing got through on the latest batch: the broker may be unreachable from here.
    private var suspectsBroker: Bool { configuration.backOffWhileBrokerUnreachable && brokerFailures > 0 }

    public mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        switch input {
        case .start:
            released = false
            awaiting = [:]
            retrying = []
            retryAt = nil
            pausedUntil = nil
            wantsClaim = false
            rowsHeldBack = false
            settledDuringClaim = false
            polling = false
            latestClaimRows = 0
            gathering = .no
            lastLeaseSweep = nil
            storeFailures = 0
            brokerFailures = 0
            // A restarted relay process has a fresh publisher.
            publisherNeedsReset = false
            return issue(.release, now: now)
        case .wake:
            guard released, !suspectsBroker else { return [] }
            wantsClaim = true
            let wasPolling = polling
            let claim = claimIfPossible(now: now)
            return wasPolling && !claim.isEmpty ? [.cancelTimer(.poll)] + claim : claim
        case .timer(.poll):
            guard polling else { return [] }
            polling = false
            wantsClaim = true
            return claimIfPossible(now: now)
        case .timer(.retry):
            return retryTimerFired(now: now)
        case .timer(.gather):
            guard gathering == .waiting else { return [] }
            gathering = .done
            return claimIfPossible(now: now)
        case let .stored(ticket, result):
            guard let work = awaiting[ticket], !work.isPublish else { return [] }
            awaiting[ticket] = nil
            return stored(work, result, now: now)
        case let .published(ticket, outcomes):
            guard case .publish(let rows)? = awaiting[ticket], outcomes.count == rows.count else { return [] }
            awaiting[ticket] = nil
            if ticket.raw > lastTicketBeforeReset, outcomes.contains(where: \.isSessionUnusable) { publisherNeedsReset = true }
            return settle(rows, outcomes, now: now)
        case .timer(.commit), .fetched, .assigned, .offsetsCommitted, .createOrder, .changeStatus:
            return []
        }
    }

    // MARK: bookkeeping

    private var claimOutstanding: Bool { awaiting.values.contains(.claim) || retrying.contains(.claim) }

    /// Batches claimed and not yet settled: being published, being settled, or waiting to settle again.
    private var batchesInFlight: Int {
        awaiting.values.reduce(0) { count, work in work.isBatch ? count + 1 : count } + retrying.reduce(0) { $1.isBatch ? $0 + 1 : $0 }
    }

    private mutating func issue(_ work: Work, now: Instant) -> [Effect] {
        nextTicket += 1
        let ticket = Ticket(nextTicket)
        awaiting[ticket] = work
        let c = configuration
        switch work {
        case .release:
            return [.store(ticket, .releaseClaims(outbox: c.outbox, owner: c.owner))]
        case .claim:
            settledDuringClaim = false
            // The host clock may step back (seen by the lab: a relay whose clock stepped back 21 s took over its own
            // expired lease only 21 s later): a time before the latest sweep counts as due.
            let sweep = lastLeaseSweep.map { now >= $0 + c.leaseSweepInterval || now < $0 } ?? true
            if sweep { lastLeaseSweep = now }
            let claim = OutboxClaim(outbox: c.outbox, owner: c.owner, limit: suspectsBroker ? 1 : c.batchSize, lease: c.lease, takeOverExpiredLeases: sweep)
            return [.store(ticket, .claimOutbox(claim))]
        case .publish(let rows):
            guard publisherNeedsReset else { return [.publish(ticket, c.channel, rows)] }
            publisherNeedsReset = false
            lastTicketBeforeReset = ticket.raw - 1
            return [.resetPublisher(c.channel), .publish(ticket, c.channel, rows)]
        case .settle(let settlement):
            return [.store(ticket, .settleOutbox(settlement))]
        }
    }

    /// Under load (see `gatherDelay`), and not probing a suspected broker.
    private var shouldGather: Bool {
        let c = configuration
        return c.gatherDelay > .zero && !suspectsBroker && latestClaimRows >= c.gatherAfterRows && latestClaimRows < c.batchSize
    }

    /// Claims when rows may be waiting, no claim is out, a batch slot is free and no broker backoff holds it; under
    /// load, after the gather wait. With nothing at all to do, goes idle on the poll timer.
    private mutating func claimIfPossible(now: Instant) -> [Effect] {
        let depth = suspectsBroker ? 1 : max(1, configuration.pipelineDepth)
        if wantsClaim, released, pausedUntil == nil, !claimOutstanding, batchesInFlight < depth {
            polling = false
            if gathering == .no, shouldGather {
                gathering = .waiting
                return [.setTimer(.gather, at: now + configuration.gatherDelay)]
            }
            guard gathering != .waiting else { return [] }
            wantsClaim = false
            gathering = .no
            return issue(.claim, now: now)
        }
        guard released, !wantsClaim, !polling, awaiting.isEmpty, retrying.isEmpty, pausedUntil == nil else { return [] }
        polling = true
        return [.setTimer(.poll, at: now + configuration.pollInterval)]
    }

    /// The one retry timer serves both the store backoff (`retryAt`) and the broker backoff (`pausedUntil`).
    private func armRetryTimer() -> [Effect] {
        let times = [retryAt, pausedUntil].compactMap { $0 }
        guard let at = times.min() else { return [] }
        return [.setTimer(.retry, at: at)]
    }

    private mutating func retryTimerFired(now: Instant) -> [Effect] {
        // The timer was set for the earliest of the two: that one is due even if the clock reads a little earlier.
        guard let earliest = [retryAt, pausedUntil].compactMap({ $0 }).min() else { return [] }
        let due = max(now, earliest)
        var effects: [Effect] = []
        if let at = retryAt, at <= due {
            retryAt = nil
            let works = retrying
            retrying = []
            for work in works { effects += issue(work, now: now) }
        }
        if let until = pausedUntil, until <= due {
            pausedUntil = nil
            wantsClaim = true
        }
        return effects + claimIfPossible(now: now) + armRetryTimer()
    }

    // MARK: results

    private mutating func stored(_ work: Work, _ result: StoreResult, now: Instant) -> [Effect] {
        guard case .committed(let reply) = result else {
            storeFailures += 1
            retrying.append(work)
            let at = now + configuration.backoff.delay(attempt: storeFailures, using: &random)
            retryAt = min(retryAt ?? at, at)
            let step = "\(configuration.owner) \(work.name)"
            return [.note(result == .unknown ? .unknownOutcome(step) : .storeRetry(step))] + armRetryTimer()
        }
        storeFailures = 0
        switch (work, reply) {
        case (.release, .released):
            released = true
            wantsClaim = true
            return claimIfPossible(now: now)
        case (.claim, .claimed(let rows, let heldBack)):
            rowsHeldBack = heldBack
            latestClaimRows = rows.count
            // A full batch: more rows are likely waiting, so the next claim goes out while this batch is published.
            // Rows held back behind a head whose settle came back meanwhile are free now.
            if rows.count >= configuration.batchSize || (heldBack && settledDuringClaim) { wantsClaim = true }
            return (rows.isEmpty ? [] : issue(.publish(rows), now: now)) + claimIfPossible(now: now)
        case (.settle(let settlement), .settled(let rows)):
            let expected = settlement.published.count + settlement.retries.count + settlement.rejections.count
            let lost: [Effect] = rows < expected ? [.note(.leaseLost(configuration.outbox, rows: expected - rows))] : []
            let nothingDelivered = settlement.published.isEmpty && settlement.rejections.isEmpty && !settlement.retries.isEmpty
            let ignoredWakes = suspectsBroker
            brokerFailures = nothingDelivered ? brokerFailures + 1 : 0
            if nothingDelivered, configuration.backOffWhileBrokerUnreachable {
                let at = now + configuration.backoff.delay(attempt: brokerFailures, using: &random)
                pausedUntil = max(pausedUntil ?? at, at)
                return lost + armRetryTimer()
            }
            // A delivery ends any broker backoff. Claim again only if rows may be waiting: a NOTIFY came since the
            // latest claim went out (`wantsClaim` is set already), NOTIFYs were ignored while the broker was
            // suspected, or rows were held back behind this relay's heads, one of which this settle may have freed
            // (no NOTIFY says so). If a claim is out, its reply decides: it may have seen the head still held.
            pausedUntil = nil
            if ignoredWakes { wantsClaim = true }
            if claimOutstanding { settledDuringClaim = true } else if rowsHeldBack { wantsClaim = true }
            return lost + claimIfPossible(now: now)
        default:
            // Never expected: a reply that does not fit the work. Carry on from a claim, and say so.
            wantsClaim = true
            released = true
            return [.note(.unexpected("\(work.name) answered \(reply.summary)"))] + claimIfPossible(now: now)
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
            case .appended(let position):
                settlement.published.append(row.sequence)
                settlement.positions[row.sequence] = position
                notes.append(.note(.published(channel, row)))
            case .failed(retriable: true, let reason), .unknown(let reason), .sessionUnusable(let reason):
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
        return notes + issue(.settle(settlement), now: now)
    }
}

extension OutboxRelay.Work {
    var name: String {
        switch self {
        case .release: "release"
        case .claim: "claim"
        case .publish: "publish"
        case .settle: "settle"
        }
    }

    var isPublish: Bool {
        if case .publish = self { true } else { false }
    }

    /// Publishing or settling a claimed batch.
    var isBatch: Bool {
        switch self {
        case .publish, .settle: true
        case .release, .claim: false
        }
    }
}
