import OrderPipelineCore

/// What is still pending after the liveness phase.
public struct LivenessReport: Sendable, Hashable {
    public var unansweredClients: [String] = []
    public var kafkaOutbox: [String] = []
    public var serviceBusOutbox: [String] = []
    public var uncommittedPartitions: [String] = []
    public var serviceBusBacklog = 0
    public var unfulfilledOrders: [String] = []

    public var isEmpty: Bool {
        unansweredClients.isEmpty && kafkaOutbox.isEmpty && serviceBusOutbox.isEmpty && uncommittedPartitions.isEmpty
            && serviceBusBacklog == 0 && unfulfilledOrders.isEmpty
    }

    public var summary: String {
        var parts: [String] = []
        func add(_ list: [String], _ what: String) {
            guard !list.isEmpty else { return }
            parts.append("\(list.count) \(what): \(list.prefix(3).joined(separator: "; "))\(list.count > 3 ? "; …" : "")")
        }
        add(unansweredClients, "client requests never answered")
        add(kafkaOutbox, "Kafka outbox rows unpublished")
        add(serviceBusOutbox, "Service Bus outbox rows unsent")
        add(uncommittedPartitions, "partitions with uncommitted records")
        if serviceBusBacklog > 0 { parts.append("\(serviceBusBacklog) Service Bus messages not yet received downstream") }
        add(unfulfilledOrders, "orders neither Fulfilled nor Failed")
        return parts.joined(separator: " | ")
    }
}

/// How often each recovery path ran: a green run where these are zero proved little.
public struct RecoveryCounts: Sendable, Hashable {
    public var idempotentReplays = 0
    public var redeliveriesDeduplicated = 0
    public var unknownOutcomesResolved = 0
    public var storeRetries = 0
    public var publishRetries = 0
    public var leasesLost = 0
    public var poisonDeadLettered = 0
    public var offsetCommitsFenced = 0
    public var duplicatesDroppedByServiceBus = 0
    public var deadLetterCopiesSkipped = 0
    public var ordersReannounced = 0
    public var publisherResets = 0

    public init() {}

    mutating func count(_ note: Note) {
        switch note {
        case .orderAccepted(_, replayed: true): idempotentReplays += 1
        case .redeliveryDeduplicated: redeliveriesDeduplicated += 1
        case .unknownOutcome: unknownOutcomesResolved += 1
        case .storeRetry: storeRetries += 1
        case .publishRetry: publishRetries += 1
        case .leaseLost(_, let rows): leasesLost += rows
        case .poison: poisonDeadLettered += 1
        case .deadLetterCopySkipped: deadLetterCopiesSkipped += 1
        case .reannounced(let orders): ordersReannounced += orders.count
        default: break
        }
    }

    public var rows: [(String, Int)] {
        [
            ("idempotent replay (client retry or unknown commit)", idempotentReplays),
            ("redelivery deduplicated by the inbox", redeliveriesDeduplicated),
            ("unknown outcome re-issued", unknownOutcomesResolved),
            ("store call retried after a failure", storeRetries),
            ("publish retried (broker down / timeout)", publishRetries),
            ("lease lost, settlement fenced", leasesLost),
            ("poison record dead-lettered", poisonDeadLettered),
            ("offset commit fenced by a rebalance", offsetCommitsFenced),
            ("duplicate dropped by Service Bus", duplicatesDroppedByServiceBus),
            ("dead-letter topic copy skipped (table row kept)", deadLetterCopiesSkipped),
            ("overdue order re-announced by the reconciler", ordersReannounced),
            ("fenced Kafka producer reset by its relay", publisherResets),
        ]
    }

    public static func + (lhs: RecoveryCounts, rhs: RecoveryCounts) -> RecoveryCounts {
        var sum = lhs
        sum.idempotentReplays += rhs.idempotentReplays
        sum.redeliveriesDeduplicated += rhs.redeliveriesDeduplicated
        sum.unknownOutcomesResolved += rhs.unknownOutcomesResolved
        sum.storeRetries += rhs.storeRetries
        sum.publishRetries += rhs.publishRetries
        sum.leasesLost += rhs.leasesLost
        sum.poisonDeadLettered += rhs.poisonDeadLettered
        sum.offsetCommitsFenced += rhs.offsetCommitsFenced
        sum.duplicatesDroppedByServiceBus += rhs.duplicatesDroppedByServiceBus
        sum.deadLetterCopiesSkipped += rhs.deadLetterCopiesSkipped
        sum.ordersReannounced += rhs.ordersReannounced
        sum.publisherResets += rhs.publisherResets
        return sum
    }
}
