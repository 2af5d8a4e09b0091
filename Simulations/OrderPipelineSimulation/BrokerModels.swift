import OrderPipelineCore

/// A Kafka model: one topic of ordered partitions, a dead-letter topic, and one consumer group with eager
/// rebalancing (every rebalance revokes everything and members resume from the committed offsets).
public final class KafkaModel {
    public struct Record: Sendable {
        public var record: ConsumedRecord
        /// The event it carries, if it came from a relay (poison written by a foreign producer has none).
        public var event: PipelineEvent?
        public var appendedAt: Instant
    }

    public private(set) var partitions: [[Record]]
    public private(set) var deadLetterTopic: [ConsumedRecord] = []
    public private(set) var committed: [Int64]
    public private(set) var generation: Int64 = 0
    /// Members of the group (node indices), sorted.
    public private(set) var members: [Int] = []
    /// partition → member node index (or -1).
    public private(set) var owner: [Int]
    /// Next offset each partition is read from, for its current owner.
    private var position: [Int64]
    /// The first offset still stored per partition: records before it are gone (retention, data loss).
    public private(set) var logStart: [Int64]

    public init(partitionCount: Int) {
        partitions = Array(repeating: [], count: partitionCount)
        committed = Array(repeating: 0, count: partitionCount)
        owner = Array(repeating: -1, count: partitionCount)
        position = Array(repeating: 0, count: partitionCount)
        logStart = Array(repeating: 0, count: partitionCount)
    }

    /// The broker loses every record of `p` the group has not committed: its log start moves to the log end, so
    /// a member resumes there (`auto.offset.reset`), as after retention deleted records while the group was down.
    /// Answers how many records were lost.
    public func loseUnconsumed(partition p: Int) -> Int {
        let end = Int64(partitions[p].count)
        let lost = Int(end - Swift.max(committed[p], logStart[p]))
        logStart[p] = end
        position[p] = Swift.max(position[p], end)
        return Swift.max(0, lost)
    }

    public var partitionCount: Int { partitions.count }

    /// Kafka's default partitioner hashes the key; any stable function of the order id keeps one order in one partition.
    public func partition(for order: OrderID) -> Int { Int(order.uuid.low % UInt64(partitions.count)) }

    @discardableResult
    public func append(_ event: PipelineEvent, at now: Instant) -> ConsumedRecord {
        let p = partition(for: event.orderID)
        let record = ConsumedRecord(
            partition: Int32(p), offset: Int64(partitions[p].count), key: event.orderID.uuid.textBytes,
            headers: event.kafkaHeaders, value: event.payload)
        partitions[p].append(Record(record: record, event: event, appendedAt: now))
        return record
    }

    /// A record from a foreign producer that no consumer can decode.
    public func appendPoison(partition p: Int, value: [UInt8], at now: Instant) {
        let record = ConsumedRecord(partition: Int32(p), offset: Int64(partitions[p].count), key: nil, headers: [], value: value)
        partitions[p].append(Record(record: record, event: nil, appendedAt: now))
    }

    public func appendDeadLetter(_ record: ConsumedRecord) { deadLetterTopic.append(record) }

    /// A new generation over `members`: partitions dealt round-robin, rotated by generation so they move around.
    public func rebalance(members newMembers: [Int]) -> [(member: Int, partitions: [Int32])] {
        generation += 1
        members = newMembers.sorted()
        for p in 0..<partitions.count {
            owner[p] = members.isEmpty ? -1 : members[(p + Int(generation)) % members.count]
            position[p] = Swift.max(committed[p], logStart[p])
        }
        return members.map { member in (member, (0..<partitions.count).filter { owner[$0] == member }.map { Int32($0) }) }
    }

    /// Up to `max` records for `member` from its partitions, advancing its positions.
    public func fetch(member: Int, max: Int) -> [ConsumedRecord] {
        var records: [ConsumedRecord] = []
        for p in 0..<partitions.count where owner[p] == member {
            position[p] = Swift.max(position[p], logStart[p])
            while records.count < max, position[p] < partitions[p].count {
                records.append(partitions[p][Int(position[p])].record)
                position[p] += 1
            }
        }
        return records
    }

    /// Whether the broker ever took a copy of `event` (it is in its order's partition).
    public func holds(_ event: PipelineEvent) -> Bool {
        partitions[partition(for: event.orderID)].contains { $0.event?.id == event.id }
    }

    public func hasRecords(for member: Int) -> Bool {
        (0..<partitions.count).contains { owner[$0] == member && position[$0] < partitions[$0].count }
    }

    /// Moves a member's read position back (a duplicate delivery: records handed over again).
    public func rewind(member: Int, partition p: Int, by count: Int64) -> Bool {
        guard owner[p] == member, position[p] > logStart[p] else { return false }
        position[p] = Swift.max(logStart[p], position[p] - count)
        return true
    }

    public func commit(member: Int, offsets: [PartitionOffset], generation claimed: Int64) -> CommitOutcome {
        if let fenced = CommitOutcome.fence(offsets, generation: claimed, current: generation, owns: { owner[Int($0)] == member }) { return fenced }
        for offset in offsets { committed[Int(offset.partition)] = offset.offset }
        return .committed
    }

    /// Records appended but not yet committed by the group, over all partitions.
    public var lag: Int64 { (0..<partitions.count).reduce(0) { $0 + Int64(partitions[$1].count) - Swift.max(committed[$1], logStart[$1]) } }
}

/// A Service Bus queue with duplicate detection: a message whose MessageId was accepted within the window is
/// accepted again and silently dropped, as Azure does.
public final class ServiceBusModel {
    public struct Message: Sendable {
        public var messageID: EventID
        public var subject: String
        public var orderID: OrderID
        public var enqueuedAt: Instant
        /// The application property `traceparent` (and `Diagnostic-Id`) the relay sent.
        public var traceParent: TraceParent?
    }

    public let duplicateDetectionWindow: Duration
    public private(set) var queue: [Message] = []
    public private(set) var delivered = 0
    public private(set) var duplicatesDropped = 0
    private var seen: [EventID: Instant] = [:]

    public init(duplicateDetectionWindow: Duration) {
        self.duplicateDetectionWindow = duplicateDetectionWindow
    }

    /// Whether the queue ever accepted a message with this MessageId.
    public func accepted(_ id: EventID) -> Bool { seen[id] != nil }

    /// Returns the message if it was enqueued, nil if duplicate detection dropped it.
    public func send(_ event: PipelineEvent, at now: Instant) -> Message? {
        if let first = seen[event.id], now - first < duplicateDetectionWindow {
            duplicatesDropped += 1
            return nil
        }
        seen[event.id] = now
        let message = Message(messageID: event.id, subject: event.type.rawValue, orderID: event.orderID, enqueuedAt: now, traceParent: event.traceParent)
        queue.append(message)
        return message
    }

    /// The downstream subscriber takes the next message (peek-lock + complete, modelled as one step).
    public func receive() -> Message? {
        guard delivered < queue.count else { return nil }
        delivered += 1
        return queue[delivered - 1]
    }

    public var backlog: Int { queue.count - delivered }
}

/// The subscriber behind the Service Bus queue: everything it ever received, copies included.
public struct Downstream: Sendable {
    public private(set) var received: [ServiceBusModel.Message] = []
    mutating func receive(_ message: ServiceBusModel.Message) { received.append(message) }
}
