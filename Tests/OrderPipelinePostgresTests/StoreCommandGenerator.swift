import OrderPipelineCore
import OrderPipelineSimulation

/// Seeded random sequences of store steps with the dependencies a real pipeline has: claims of rows that exist,
/// settlements of what was claimed (by its owner, and by owners whose claim was since taken over), deliveries of
/// events that were written, replays and reuses of recorded idempotency keys.
///
/// The generator follows its own copy of the model (a shadow) to know what exists; the sequence it returns is
/// plain data, so it can be replayed, shrunk and printed. One clock, the database's, drives every step and only
/// moves forward, as `now()` does; leases and retry delays are durations on it.
struct StoreCommandGenerator {
    private var random: SplitMix64
    private let shadow = PostgresModel()
    private var clock: Int64 = 0
    private var lastFulfil: Step?
    private var nextOrder: UInt64 = 1
    private var nextKey = 1
    private var nextOffset = 100
    private var created: [UInt64] = []
    private var numbers: [OrderID: UInt64] = [:]
    /// Recorded keys with the body they were recorded with.
    private var keys: [(key: String, body: Int)] = []
    /// Every (outbox, sequence) each owner ever claimed, in claim order: its live claims and its stale ones.
    private var claimed: [String: [(OutboxKind, Int64)]] = [:]
    private var delivered: [Step.Delivery] = []
    private var sources: [String] = []

    static let owners = ["relay-1", "relay-2", "relay-3"]
    static let errors = ["broker down", "message too large", "", #"quote " and backslash \"#, "{curly,comma}", "NULL", "ünïcödé ✓ 🚚"]

    init(seed: UInt64) {
        random = SplitMix64(seed: seed)
        shadow.now = Step.instant(0)
    }

    /// A sequence of `count` steps, each applied to the shadow as it is drawn.
    static func sequence(seed: UInt64, count: Int) -> [Step] {
        var generator = StoreCommandGenerator(seed: seed)
        return (0..<count).map { _ in generator.next() }
    }

    /// The shadow's state after every step drawn so far (used to pick concurrent groups).
    var model: PostgresModel { shadow }

    mutating func next() -> Step {
        clock += Int64(random.below(3_000_000))
        let roll = random.below(100)
        var step: Step
        switch roll {
        case 0..<20: step = random.chance(0.25) ? createBatch() : create()
        case 20..<32: step = transition()
        case 32..<52: step = claim()
        case 52..<70: step = settle()
        case 70..<75: step = release()
        case 75..<93: step = fulfil()
        default: step = deadLetter()
        }
        // Sometimes the host that stamps the step is off the database's clock, either way: what it stamps must
        // never decide a due time or a lease.
        if step.stamps, random.chance(0.15) { step = .skewed(step, by: Int64(random.below(10_000_001)) - 5_000_000) }
        apply(step)
        return step
    }

    /// Performs `step` on the shadow and learns what it created or claimed.
    mutating func apply(_ step: Step) {
        let reply = Differential.reply(step, on: shadow)
        switch (step.unskewed, reply) {
        case (.create, .ordersCreated(let outcomes)), (.createBatch, .ordersCreated(let outcomes)):
            let members = if case .createBatch(let members) = step.unskewed { members } else { [step.unskewed] }
            for case (.create(let n, let key, let body, _), .created) in zip(members, outcomes) {
                created.append(n)
                numbers[orderID(n)] = n
                keys.append((key, body))
            }
        case (.claim(let outbox, let owner, _, _, _, _), .claimed(let rows, _)):
            claimed[owner, default: []] += rows.map { (outbox, $0.sequence) }
        case (.fulfil(let deliveries, _), _):
            delivered += deliveries
        case (.deadLetter(let source, _, _, _), _):
            sources.append(source)
        default:
            break
        }
    }

    // MARK: steps

    private mutating func create() -> Step {
        let n = nextOrder
        nextOrder += 1
        let roll = random.below(100)
        if roll < 25, let reused = pick(keys) {
            return .create(order: n, key: reused.key, body: reused.body, at: clock)  // a retry: replayed
        }
        if roll < 37, let reused = pick(keys) {
            let other = (reused.body + 1 + Int(random.below(UInt64(Step.bodies.count - 1)))) % Step.bodies.count
            return .create(order: n, key: reused.key, body: other, at: clock)  // another body: refused
        }
        let key: String
        if random.chance(0.3) {
            key = "order:\(orderID(n))"
        } else {
            key = "key-\(nextKey)"
            nextKey += 1
        }
        return .create(order: n, key: key, body: Int(random.below(UInt64(Step.bodies.count))), at: clock)
    }

    /// Two to four creates in one transaction; a member whose key an earlier member has is left out.
    private mutating func createBatch() -> Step {
        var members: [Step] = []
        var taken: Set<String> = []  // membership only
        for _ in 0..<(2 + random.below(3)) {
            let member = create()
            if case .create(_, let key, _, _) = member, taken.insert(key).inserted { members.append(member) }
        }
        return .createBatch(members)
    }

    private mutating func transition() -> Step {
        let n = random.chance(0.9) ? (pick(created) ?? nextOrder + 50) : nextOrder + 50
        let status = shadow.orders[orderID(n)]?.status
        let to: OrderStatus
        if let status, !status.successors.isEmpty, random.chance(0.7) {
            to = pick(status.successors) ?? .failed
        } else {
            to = pick(OrderStatus.allCases) ?? .failed
        }
        let reason = to == .failed && random.chance(0.7) ? pick(Self.errors) : nil
        return .transition(order: n, to: to, at: clock, reason: reason)
    }

    private mutating func claim() -> Step {
        let limit = random.chance(0.05) ? 0 : Int(1 + random.below(4))
        // Short leases (often overtaken) and long ones (usually settled by their owner).
        let lease = random.chance(0.5) ? 200_000 + random.below(3_000_000) : 3_000_000 + random.below(17_000_000)
        // Often taking over expired leases first (relays do about once a second).
        return .claim(outbox(), owner: owner(), limit: limit, at: clock, lease: Int64(lease), takeOver: random.chance(0.4))
    }

    private mutating func settle() -> Step { settle(outbox(), owner: owner()) }

    private mutating func settle(_ outbox: OutboxKind, owner: String) -> Step {
        let table = shadow.outbox(outbox)
        // What the owner holds now, sometimes with rows it lost (stale) or that do not exist.
        var sequences = table.rows.filter { $0.claimedBy == owner && !$0.isSettled }.map(\.sequence)
        let past = claimed[owner, default: []].filter { $0.0 == outbox && !sequences.contains($0.1) }.map(\.1)
        let takenOver = past.filter { table.row($0)?.claimedBy.map { $0 != owner } ?? false }
        if random.chance(0.6), let stale = pick(takenOver.isEmpty ? past : takenOver) { sequences.append(stale) }
        if random.chance(0.05) { sequences.append(Int64(table.rows.count) + 1 + Int64(random.below(3))) }
        var published: [Int64] = []
        var retries: [Step.Retry] = []
        var rejections: [Step.Rejection] = []
        for sequence in shuffled(sequences) where random.chance(0.85) {
            switch random.below(10) {
            case 0..<6: published.append(sequence)
            case 6..<9: retries.append(.init(sequence, delay: Int64(random.below(10_000_000)), pick(Self.errors) ?? ""))
            default: rejections.append(.init(sequence, pick(Self.errors) ?? ""))
            }
        }
        return .settle(outbox, owner: owner, at: clock, published: published, retries: retries, rejections: rejections)
    }

    private mutating func release() -> Step { .release(outbox(), owner: owner()) }

    /// A batch of one to five deliveries; a batch may carry the same event twice (a relay re-sent it). Sometimes
    /// the last batch again, stamped as it was: its re-issue after an unknown outcome.
    private mutating func fulfil() -> Step {
        if random.chance(0.15), let last = lastFulfil { return last }
        var batch: [Step.Delivery] = []
        for _ in 0..<(random.chance(0.4) ? 1 : 2 + Int(random.below(4))) {
            let roll = random.below(100)
            if roll < 10, let earlier = pick(batch) {
                batch.append(earlier)
            } else if roll < 30, let again = pick(delivered) {
                batch.append(again)  // a redelivery
            } else if roll < 90, let row = pick(shadow.kafkaOutbox.rows), let n = numbers[row.event.orderID] {
                batch.append(.init(n, row.event.type))
            } else {
                batch.append(.init(nextOrder + 50, .orderCreated))  // its order was never stored
            }
        }
        lastFulfil = .fulfil(batch, at: clock)
        return .fulfil(batch, at: clock)
    }

    private mutating func deadLetter() -> Step {
        let source: String
        let roll = random.below(100)
        if roll < 25, let again = pick(sources) {
            source = again
        } else if roll < 30, let row = pick(shadow.kafkaOutbox.rows) {
            source = "kafka-outbox/\(row.sequence)"  // the same source as a rejected outbox row's
        } else {
            source = "orders/\(random.below(3))@\(nextOffset)"
            nextOffset += 1 + Int(random.below(5))
        }
        let payload = (0..<random.below(6)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        return .deadLetter(source: source, reason: pick(Self.errors) ?? "", payload: payload, at: clock)
    }

    // MARK: concurrent groups

    /// Steps to run at once, each on its own connection, after the steps drawn so far (see
    /// `StoreInterleavingTests`). Every template is one where PostgreSQL must look serial: members either touch
    /// different rows, wait on each other's locks, or skip (SKIP LOCKED) rows that a serial order would not let
    /// them claim either — a claimer never runs against a lease of a concurrent member that has expired.
    mutating func concurrentGroup() -> [Step] {
        clock += Int64(random.below(3_000_000))
        let pending = created.filter { shadow.orders[orderID($0)]?.status == .pending }
        // Owners whose live Kafka claims all hold at `clock`.
        let now = Step.instant(clock)
        let holders = Self.owners.filter { owner in
            let live = shadow.kafkaOutbox.pending.filter { $0.claimedBy == owner }
            return !live.isEmpty && live.allSatisfy { $0.claimedUntil > now }
        }
        let group: [Step]
        switch random.below(8) {
        case 1:
            let row = pick(shadow.kafkaOutbox.rows.filter { $0.event.type == .orderCreated })
            let delivery = Step.Delivery(row.flatMap { numbers[$0.event.orderID] } ?? nextOrder + 50, .orderCreated)
            let other = pick(created).map { Step.Delivery($0, .orderCreated) }
            // Two consumers with overlapping batches (a rebalance hands a partition over mid-batch).
            let step = Step.fulfil([delivery] + (other.map { [$0] } ?? []), at: clock)
            group = [step, step]
        case 2:
            let key = pick(keys) ?? ("key-\(nextKey)", Int(random.below(UInt64(Step.bodies.count))))
            let other = random.chance(0.5) ? key.body : (key.body + 1) % Step.bodies.count
            group = [.create(order: nextOrder, key: key.key, body: key.body, at: clock), .create(order: nextOrder + 1, key: key.key, body: other, at: clock)]
            nextOrder += 2
        case 3 where !pending.isEmpty:
            let n = pick(pending) ?? 1
            group = shuffled([.transition(order: n, to: pick([.processing, .failed]) ?? .failed, at: clock, reason: nil), .fulfil([.init(n, .orderCreated)], at: clock)])
        case 4 where !created.isEmpty:
            let n = pick(created) ?? 1
            group = [transition(of: n), transition(of: n)]
        case 5:
            let source = pick(sources) ?? "orders/0@1"
            group = [.deadLetter(source: source, reason: "first", payload: [1], at: clock), .deadLetter(source: source, reason: "second", payload: [2], at: clock)]
        case 6 where !holders.isEmpty:
            let owner = pick(holders) ?? "relay-1"
            group = shuffled([settle(.kafka, owner: owner), .release(.kafka, owner: owner)])
        case 7 where !holders.isEmpty:
            let owner = pick(holders) ?? "relay-1"
            let other = pick(Self.owners.filter { $0 != owner }) ?? "relay-9"
            group = shuffled([
                settle(.kafka, owner: owner), .claim(.kafka, owner: other, limit: Int(1 + random.below(4)), at: clock, lease: 5_000_000, takeOver: random.chance(0.5)),
            ])
        default:
            let outbox = outbox()
            group = shuffled(Self.owners).prefix(2 + Int(random.below(2))).map {
                .claim(outbox, owner: $0, limit: Int(1 + random.below(3)), at: clock, lease: Int64(500_000 + random.below(20_000_000)), takeOver: random.chance(0.5))
            }
        }
        return group
    }

    private mutating func transition(of n: UInt64) -> Step {
        let status = shadow.orders[orderID(n)]?.status ?? .pending
        let to = random.chance(0.8) ? (pick(status.successors) ?? .failed) : (pick(OrderStatus.allCases) ?? .failed)
        return .transition(order: n, to: to, at: clock, reason: to == .failed ? pick(Self.errors) : nil)
    }

    // MARK: choices

    private mutating func outbox() -> OutboxKind { random.chance(0.65) ? .kafka : .serviceBus }
    private mutating func owner() -> String { pick(Self.owners) ?? "relay-1" }

    private mutating func pick<T>(_ values: [T]) -> T? {
        values.isEmpty ? nil : values[Int(random.below(UInt64(values.count)))]
    }

    private mutating func shuffled<T>(_ values: [T]) -> [T] {
        var values = values
        for index in values.indices.reversed() where index > 0 {
            values.swapAt(index, Int(random.below(UInt64(index + 1))))
        }
        return values
    }
}
