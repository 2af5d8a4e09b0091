import OrderPipelineCore

/// Every fault the world can inject, each switchable on its own.
public enum FaultKind: String, CaseIterable, Sendable, Hashable, Comparable, Codable {
    /// A component crashes just before an effect of its reaches the server (nothing happens).
    case crashBeforeEffect = "crash-before-effect"
    /// A component crashes just after its effect took place (crash-after-commit, after-ack…): the result is lost.
    case crashAfterEffect = "crash-after-effect"
    /// A relay stalls longer than its lease (GC pause, stopped VM) and wakes up to find its rows taken over.
    case relayPause = "relay-pause"
    case databaseOutage = "database-outage"
    case kafkaOutage = "kafka-outage"
    case serviceBusOutage = "service-bus-outage"
    /// The connection dies during COMMIT: the transaction may or may not have happened.
    case commitUnknown = "commit-unknown"
    /// A produce times out after the broker did, or did not, write the records.
    case produceTimeout = "produce-timeout"
    /// A Service Bus send gets no disposition; the message may or may not be on the queue.
    case sendTimeout = "send-timeout"
    /// Records (Kafka) or messages (Service Bus → downstream) handed over again.
    case duplicateDelivery = "duplicate-delivery"
    /// A client submits the same request twice at once (double click, retry storm).
    case duplicateRequest = "duplicate-request"
    /// The consumer group rebalances in the middle of a batch.
    case rebalance
    /// A foreign producer writes an undecodable record to the orders topic.
    case poison
    /// A node's wall clock is off (NTP broken, a VM resumed): fixed offsets and sudden steps, both directions.
    case clockSkew = "clock-skew"
    /// One transaction fails outside any outage: serialization failure, deadlock, statement timeout, a stale
    /// pooled connection after a server restart. Nothing was written.
    case storeFailure = "store-failure"
    /// The dead-letter topic cannot take records (missing with auto-create off, an ACL, too large with the
    /// extra headers) — for the whole run: a configuration fault the heal does not repair.
    case deadLetterTopicDown = "dead-letter-topic-down"
    /// One relay reaches PostgreSQL but not its broker for a window, while the other nodes are healthy.
    case partialPartition = "partial-partition"
    /// The broker loses records it acknowledged (retention expired while the group was down, an unclean leader
    /// election, `acks=1`, a memory-only broker restarting): the log start of a partition jumps past records the
    /// group has not consumed.
    case recordLoss = "record-loss"
    /// A store or broker call hangs (frozen PostgreSQL, black-holed broker, half-open TCP connection) until the
    /// caller's deadline makes it an unknown outcome.
    case hang
    /// Service Bus refuses a send with a condition that passes: `com.microsoft:server-busy`, a quota momentarily
    /// exceeded, an expired token being refreshed, an internal error.
    case transientRefusal = "transient-refusal"
    /// A relay's Kafka producer session becomes unusable (`PRODUCER_FENCED`, a fatal error, an idempotent session
    /// that timed out): every publish from it answers `.sessionUnusable` until that relay resets its publisher.
    case producerFenced = "producer-fenced"

    /// Kinds added after seeds and fixtures were recorded: swarm draws them last, so older seeds keep their worlds.
    static let drawnLast: [FaultKind] = [.producerFenced]

    public static func < (lhs: FaultKind, rhs: FaultKind) -> Bool { lhs.index < rhs.index }
    public var index: Int { FaultKind.allCases.firstIndex(of: self)! }
}

/// The named fault profiles of `order-sim --faults`.
public enum FaultProfile: String, CaseIterable, Sendable {
    case none, crash, outage, duplicates, hostile, all

    public var kinds: [FaultKind] {
        switch self {
        case .none: []
        case .crash: [.crashBeforeEffect, .crashAfterEffect, .relayPause]
        case .outage: [.databaseOutage, .kafkaOutage, .serviceBusOutage, .commitUnknown, .produceTimeout, .sendTimeout]
        case .duplicates: [.duplicateDelivery, .duplicateRequest, .rebalance, .poison]
        // Poison too: a dead-letter topic that is down matters only when there is something to dead-letter.
        case .hostile: [.clockSkew, .storeFailure, .deadLetterTopicDown, .partialPartition, .transientRefusal, .recordLoss, .hang, .poison, .producerFenced]
        case .all: FaultKind.allCases
        }
    }
}

/// How often each enabled fault strikes. Per-effect probabilities unless said otherwise.
public struct FaultRates: Sendable, Hashable, Codable {
    public var crashBeforeEffect = 0.004
    public var crashAfterEffect = 0.004
    /// Per claim that returned rows.
    public var relayPause = 0.02
    /// Outage windows per enabled outage kind during the safety phase.
    public var outageWindows = 2
    public var commitUnknown = 0.01
    public var produceTimeout = 0.01
    public var sendTimeout = 0.01
    /// Per fetch / per downstream delivery.
    public var duplicateDelivery = 0.05
    /// Per client.
    public var duplicateRequest = 0.05
    /// Spontaneous rebalances during the safety phase.
    public var rebalances = 3
    /// Per offset commit: the group rebalances just before the commit lands (it is fenced).
    public var rebalanceBeforeCommit = 0.02
    /// Poison records during the safety phase.
    public var poisonRecords = 2
    /// Per node: the chance its clock runs off true time (by up to a minute either way) for the whole run.
    public var clockSkewedNodes = 0.3
    /// Clock steps (a node's clock jumps by up to 30 s either way) during the safety phase.
    public var clockSteps = 2
    /// Per store transaction, outside outage windows.
    public var storeFailure = 0.01
    /// Windows during the safety phase in which one relay cannot reach its broker.
    public var partialPartitions = 2
    /// Per Service Bus send.
    public var transientRefusal = 0.02
    /// Times during the safety phase a partition loses its unconsumed records.
    public var recordLosses = 1
    /// Per store call and per publish.
    public var hang = 0.003
    /// Per Kafka publish.
    public var producerFenced = 0.01
    public init() {}

    /// Replay files written before a rate existed leave it out: it takes its default.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = FaultRates()
        func rate<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T { try c.decodeIfPresent(T.self, forKey: key) ?? fallback }
        crashBeforeEffect = try rate(.crashBeforeEffect, d.crashBeforeEffect)
        crashAfterEffect = try rate(.crashAfterEffect, d.crashAfterEffect)
        relayPause = try rate(.relayPause, d.relayPause)
        outageWindows = try rate(.outageWindows, d.outageWindows)
        commitUnknown = try rate(.commitUnknown, d.commitUnknown)
        produceTimeout = try rate(.produceTimeout, d.produceTimeout)
        sendTimeout = try rate(.sendTimeout, d.sendTimeout)
        duplicateDelivery = try rate(.duplicateDelivery, d.duplicateDelivery)
        duplicateRequest = try rate(.duplicateRequest, d.duplicateRequest)
        rebalances = try rate(.rebalances, d.rebalances)
        rebalanceBeforeCommit = try rate(.rebalanceBeforeCommit, d.rebalanceBeforeCommit)
        poisonRecords = try rate(.poisonRecords, d.poisonRecords)
        clockSkewedNodes = try rate(.clockSkewedNodes, d.clockSkewedNodes)
        clockSteps = try rate(.clockSteps, d.clockSteps)
        storeFailure = try rate(.storeFailure, d.storeFailure)
        partialPartitions = try rate(.partialPartitions, d.partialPartitions)
        transientRefusal = try rate(.transientRefusal, d.transientRefusal)
        recordLosses = try rate(.recordLosses, d.recordLosses)
        hang = try rate(.hang, d.hang)
        producerFenced = try rate(.producerFenced, d.producerFenced)
    }
}

/// The shape and workload of one simulated run.
public struct SimulationOptions: Sendable, Hashable {
    public var seed: UInt64 = 1
    public var orders = 100
    public var faults: [FaultKind] = FaultProfile.all.kinds
    public var rates = FaultRates()
    public var apiInstances = 2
    public var relays = 2
    public var serviceBusRelays = 1
    public var consumers = 2
    public var partitions = 3
    /// Reconciler nodes (re-announce orders published but not fulfilled in time: broker data loss).
    public var reconcilers = 1
    /// Share of client requests that are invalid (they must be refused and write nothing).
    public var invalidRequestShare = 0.05
    /// Share of clients that cancel their order right after it is acknowledged (PATCH status Failed): their
    /// `OrderFailed` event follows `OrderCreated` through the Kafka outbox, and races the fulfilment.
    public var cancelShare = 0.1
    /// Record the history (needed for `--trace`; off for speed otherwise).
    public var recordHistory = false
    /// The bounded-recovery invariant: after the heal, everything is quiescent within this much virtual time, or
    /// the seed fails — a bug that only stalls fails too. Derived from the pipeline's own timings: a row whose
    /// retry was scheduled just before the heal waits at most one capped backoff (10 s) and may fail once more in
    /// flight (another 10 s); a crashed relay's claims expire with its lease (2 s); the fallback poll (0.5 s); a
    /// consumer-group rebalance after a restart and a client's retry (about 2.5 s). 25 s, rounded up to 30 s.
    public var livenessDeadline: Duration = .seconds(30)
    /// When set, only these fault chances may strike (see `FaultReference`): how shrinking removes faults.
    public var faultSchedule: Set<FaultReference>?
    /// A bug-zoo variant of the pipeline to run instead of the correct one (see `ZooBug`).
    public var bug: ZooBug?
    /// Store recipes replaced by a broken variant (tests of the checker, the bug zoo); none by default.
    public var recipeVariants = RecipeVariants()

    public init() {}

    public func enabled(_ kind: FaultKind) -> Bool { faults.contains(kind) }
}

extension SimulationOptions {
    /// Swarm testing: the seed itself draws which fault kinds are on, how often they strike, and the shape of the
    /// world, so a batch of seeds explores many different worlds rather than one world many times.
    public static func swarm(seed: UInt64, orders: Int) -> SimulationOptions {
        var draw = SplitMix64(seed: seed ^ 0x5157_4152_4D21_2121)
        var options = SimulationOptions()
        options.seed = seed
        options.orders = orders
        options.faults = FaultKind.allCases.filter { !FaultKind.drawnLast.contains($0) && draw.chance(0.5) }
        func scale(_ rate: Double) -> Double { rate * [0.25, 0.5, 1, 2, 4][Int(draw.below(5))] }
        var rates = FaultRates()
        rates.crashBeforeEffect = scale(rates.crashBeforeEffect)
        rates.crashAfterEffect = scale(rates.crashAfterEffect)
        rates.relayPause = scale(rates.relayPause)
        rates.outageWindows = Int(draw.int(in: 1...4))
        rates.commitUnknown = scale(rates.commitUnknown)
        rates.produceTimeout = scale(rates.produceTimeout)
        rates.sendTimeout = scale(rates.sendTimeout)
        rates.duplicateDelivery = scale(rates.duplicateDelivery)
        rates.duplicateRequest = scale(rates.duplicateRequest)
        rates.rebalances = Int(draw.int(in: 1...6))
        rates.rebalanceBeforeCommit = scale(rates.rebalanceBeforeCommit)
        rates.poisonRecords = Int(draw.int(in: 1...4))
        rates.clockSkewedNodes = [0.2, 0.5, 1][Int(draw.below(3))]
        rates.clockSteps = Int(draw.int(in: 0...4))
        rates.storeFailure = scale(rates.storeFailure)
        rates.partialPartitions = Int(draw.int(in: 1...3))
        rates.transientRefusal = scale(rates.transientRefusal)
        rates.recordLosses = Int(draw.int(in: 1...3))
        rates.hang = scale(rates.hang)
        options.rates = rates
        options.apiInstances = Int(draw.int(in: 1...3))
        options.relays = Int(draw.int(in: 1...4))
        options.serviceBusRelays = Int(draw.int(in: 1...2))
        options.consumers = Int(draw.int(in: 1...4))
        options.partitions = Int(draw.int(in: 1...8))
        options.cancelShare = [0, 0.1, 0.3][Int(draw.below(3))]
        // Drawn after everything else (`drawnLast`).
        options.faults = (options.faults + FaultKind.drawnLast.filter { _ in draw.chance(0.5) }).sorted()
        options.rates.producerFenced = scale(options.rates.producerFenced)
        return options
    }
}

/// The `index`-th chance a fault kind had in a run (the 3rd crash-after-effect roll, the 1st outage window…).
public struct FaultReference: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    public var kind: FaultKind
    public var index: Int
    public init(kind: FaultKind, index: Int) {
        self.kind = kind
        self.index = index
    }
    public static func < (lhs: FaultReference, rhs: FaultReference) -> Bool { (lhs.kind, lhs.index) < (rhs.kind, rhs.index) }
    public var description: String { "\(kind.rawValue)#\(index)" }
}
