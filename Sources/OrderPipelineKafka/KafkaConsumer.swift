import CRdKafka
import Foundation
import Logging
import OrderPipelineCore
import Synchronization

/// The fulfilment consumer's Kafka side: performs `.fetch` and `.commitOffsets` and reports the group's
/// assignments as `.assigned(generation:partitions:)`.
///
/// Everything the consumer says goes through one `sink` in the order it happened (an assignment before the records
/// fetched under it), so a shell that feeds the sink into its machine sees a consistent history.
/// - `enable.auto.commit=false`, `enable.auto.offset.store=false`, `auto.offset.reset=earliest`; offsets are
///   committed only when the machine asks, explicitly, synchronously (on a dedicated commit thread).
/// - Eager rebalancing (`partition.assignment.strategy=range`): every assignment starts a new generation (a
///   counter of this adapter) and drops what the adapter had buffered. A commit is judged by the group's rule in
///   the core (`CommitOutcome.fence`, which the simulator's group model applies too): one for an older generation,
///   or for a partition not assigned now, answers `.rebalanced` and commits nothing.
/// - One dedicated thread serves the consumer queue (rebalance callbacks happen there) and answers fetches. Each
///   assigned partition's records go to a queue of its own (`rd_kafka_queue_get_partition`, forwarded nowhere), and
///   a fetch takes from every partition in turn: librdkafka hands records over a partition at a time, thousands
///   of them, so from one shared queue a fetch would see one partition and the machine could not work on the
///   others meanwhile. Records wait in those queues, whose own thresholds bound the prefetch, until the machine
///   asks; nothing is ever paused (a pause drops what librdkafka has prefetched: measured, each resume cost
///   ~600 ms without records). The thread sleeps on a doorbell rung by a fetch request, shutdown, and librdkafka
///   when one of the queues gets something, so records go to the machine at once.
public final class KafkaConsumer: Sendable {
    public let configuration: KafkaConfiguration
    private let logger: Logger
    private let handle: ConsumerHandle
    private let shared: Mutex<Shared>
    private let commits = BlockingQueue<Commit>()
    private let threadsDone = Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))
    private let lagByPartition = Mutex<[Int32: Int64]>([:])
    /// The next offset to read as committed to the group, per assigned partition (what a restart resumes from):
    /// this member's successful commits, or the group's, asked once per partition after an assignment.
    private let committedOffsets = Mutex<[Int32: Int64]>([:])

    private struct Shared {
        var generation: Int64 = 0
        /// The partitions of `generation`.
        var assigned: [Int32] = []
        var fetch: (ticket: Ticket, max: Int, deadline: ContinuousClock.Instant)?
        var stopping = false
    }

    private struct Commit: Sendable {
        var ticket: Ticket
        var offsets: [PartitionOffset]
        var generation: Int64
    }

    /// `sink` receives `.assigned`, `.fetched` and `.offsetsCommitted`, one at a time, in order per kind.
    public init(configuration: KafkaConfiguration, logger: Logger, sink: @escaping @Sendable (Input) -> Void) throws(KafkaError) {
        self.configuration = configuration
        self.logger = logger
        self.shared = Mutex(Shared())
        let conf = KafkaConf()
        try conf.set("bootstrap.servers", configuration.brokers)
        try conf.set("client.id", "\(configuration.clientID)-consumer")
        try conf.set("group.id", configuration.groupID)
        try conf.set("enable.auto.commit", "false")
        try conf.set("enable.auto.offset.store", "false")
        try conf.set("auto.offset.reset", "earliest")
        try conf.set("partition.assignment.strategy", "range")
        try conf.set("session.timeout.ms", String(configuration.sessionTimeoutMilliseconds))
        try conf.set("heartbeat.interval.ms", String(configuration.heartbeatIntervalMilliseconds))
        try conf.set("max.poll.interval.ms", String(configuration.maxPollIntervalMilliseconds))
        try conf.set("fetch.wait.max.ms", String(configuration.fetchWaitMaxMilliseconds))
        try conf.set("queued.max.messages.kbytes", String(configuration.consumerPrefetchKilobytes))
        // A partition whose queue is at that bound is fetched again this soon after it drops (default 1 s, since
        // librdkafka 2.1: a stall of a second per refill with a small bound).
        try conf.setIfKnown("fetch.queue.backoff.ms", "10")
        for (name, value) in configuration.extraProperties.sorted(by: { $0.key < $1.key }) { try conf.set(name, value) }
        let state = ConsumerThreadState(sink: sink, logger: logger, topic: configuration.topic)
        rd_kafka_conf_set_opaque(conf.handle, Unmanaged.passUnretained(state).toOpaque())
        rd_kafka_conf_set_rebalance_cb(conf.handle) { rk, error, partitions, opaque in
            guard let rk, let opaque else { return }
            Unmanaged<ConsumerThreadState>.fromOpaque(opaque).takeUnretainedValue().rebalance(rk, error, partitions)
        }
        var error = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.handle, &error, error.count) else {
            throw KafkaError(code: .client, message: errorText(error))
        }
        _ = conf.release()
        rd_kafka_poll_set_consumer(rk)
        self.handle = ConsumerHandle(rk, state: state)
        state.consumer = self

        let topics = rd_kafka_topic_partition_list_new(1)
        rd_kafka_topic_partition_list_add(topics, configuration.topic, RD_KAFKA_PARTITION_UA)
        let code = rd_kafka_subscribe(rk, topics)
        rd_kafka_topic_partition_list_destroy(topics)
        guard code == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(code: .client, librdkafkaCode: code.rawValue, message: "subscribe \(configuration.topic): \(errorText(code))")
        }
        logger.info(
            "Kafka consumer subscribed",
            metadata: [
                "kafka.brokers": "\(configuration.brokers)", "kafka.topic": "\(configuration.topic)",
                "kafka.group": "\(configuration.groupID)", "kafka.librdkafka": "\(KafkaConfiguration.librdkafkaVersion)",
            ])
        DedicatedThread.start("kafka-consumer") { [self] in self.pollLoop() }
        DedicatedThread.start("kafka-commit") { [self] in self.commitLoop() }
    }

    /// Ask for up to `max` records; answered through the sink with `.fetched(ticket, records)` (empty after
    /// `fetchWait` without records).
    public func fetch(_ ticket: Ticket, max: Int) {
        shared.withLock { state in
            state.fetch = (ticket, Swift.max(max, 1), ContinuousClock.now + configuration.fetchWait)
        }
        handle.doorbell.signal()
    }

    /// Commit the next offsets to read; answered through the sink with `.offsetsCommitted`.
    public func commit(_ ticket: Ticket, _ offsets: [PartitionOffset], generation: Int64) {
        commits.push(Commit(ticket: ticket, offsets: offsets, generation: generation))
    }

    /// Leaves the group (revoking everything) and destroys the consumer; returns when both threads are done.
    public func shutdown() async {
        let first = shared.withLock { state -> Bool in
            defer { state.stopping = true }
            return !state.stopping
        }
        handle.doorbell.signal()
        if first { commits.close() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = threadsDone.withLock { state -> Bool in
                if state.count == 2 { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Records behind the partitions' high watermarks counted from the committed offset (the work not yet done
    /// for good, what a restart would fetch again), per assigned partition whose committed offset is known;
    /// refreshed about once a second by the poll thread from librdkafka's cached watermarks.
    public var lag: [Int32: Int64] { lagByPartition.withLock { $0 } }

    fileprivate func newGeneration(_ assigned: [Int32]) -> Int64 {
        committedOffsets.withLock { $0 = [:] }
        lagByPartition.withLock { $0 = [:] }  // revoked partitions lose their gauge at once
        return shared.withLock { state in
            state.generation += 1
            state.assigned = assigned
            return state.generation
        }
    }

    private func threadFinished() {
        let waiters = threadsDone.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count += 1
            guard state.count == 2 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: - The poll thread

    private func pollLoop() {
        let state = handle.state
        let rk = handle.rk
        var lagMeasured = ContinuousClock.now
        while true {
            if ContinuousClock.now - lagMeasured > .seconds(1) {
                lagMeasured = .now
                measureLag(rk)
            }
            // Serves the rebalance callback and errors; a record only comes here from a partition not split off.
            while let message = rd_kafka_consumer_poll(rk, 0) { receive(message, state) }
            let (stopping, fetch) = shared.withLock { ($0.stopping, $0.fetch) }
            if stopping { break }
            var sleep = Duration.milliseconds(100)
            if let fetch {
                let records = take(fetch.max, state)
                if !records.isEmpty || ContinuousClock.now >= fetch.deadline {
                    answer(fetch.ticket, records, state)
                    continue
                }
                sleep = min(sleep, fetch.deadline - ContinuousClock.now)
            }
            handle.doorbell.wait(for: sleep)
        }
        // Leave the group: the revoke callback runs here (and lets go of the partition queues); nothing more goes
        // to the sink. The consumer queue's reference must go before the close.
        handle.releaseConsumerQueue()
        state.closing = true
        rd_kafka_consumer_close(rk)
        state.releasePartitionQueues()
        threadFinished()
    }

    /// Up to `max` records without waiting: the stray ones first, then from every partition's queue in turn (an
    /// equal share each, then what is left of `max` from those that have more), each partition's in order.
    private func take(_ max: Int, _ state: ConsumerThreadState) -> [ConsumedRecord] {
        var records = Array(state.buffer.prefix(max))
        state.buffer.removeFirst(records.count)
        let queues = state.partitionQueues
        guard !queues.isEmpty else { return records }
        let share = Swift.max(1, (max - records.count) / queues.count)
        var messages = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: Swift.max(1, max))
        for pass in 0..<2 {
            for queue in queues where records.count < max {
                let wanted = pass == 0 ? Swift.min(share, max - records.count) : max - records.count
                let count = messages.withUnsafeMutableBufferPointer { rd_kafka_consume_batch_queue(queue.queue, 0, $0.baseAddress, wanted) }
                for index in 0..<Swift.max(0, count) {
                    guard let message = messages[index] else { continue }
                    if let record = record(from: message) { records.append(record) }
                }
            }
        }
        return records
    }
    /// Buffers a polled record (or logs the error it carries).
    private func receive(_ message: UnsafeMutablePointer<rd_kafka_message_t>, _ state: ConsumerThreadState) {
        if let record = record(from: message) { state.buffer.append(record) }
    }

    /// The record a message carries (nil for an error, which is logged), and frees the message.
    private func record(from message: UnsafeMutablePointer<rd_kafka_message_t>) -> ConsumedRecord? {
        defer { rd_kafka_message_destroy(message) }
        let m = message.pointee
        if m.err == RD_KAFKA_RESP_ERR_NO_ERROR { return Self.record(m, message) }
        if m.err != RD_KAFKA_RESP_ERR__PARTITION_EOF {
            logger.warning("Kafka consumer error", metadata: ["kafka.error": "\(errorText(m.err))", "kafka.code": "\(m.err.rawValue)"])
        }
        return nil
    }

    private func measureLag(_ rk: OpaquePointer) {
        var assignment: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(rk, &assignment) == RD_KAFKA_RESP_ERR_NO_ERROR, let assignment else { return }
        defer { rd_kafka_topic_partition_list_destroy(assignment) }
        var committed = committedOffsets.withLock { $0 }
        let unknown = (0..<Int(assignment.pointee.cnt)).contains { committed[assignment.pointee.elems[$0].partition] == nil }
        // Asks the group coordinator (bounded: 500 ms) only for a partition this member has not committed yet.
        let asked = unknown && rd_kafka_committed(rk, assignment, 500) == RD_KAFKA_RESP_ERR_NO_ERROR
        var lag: [Int32: Int64] = [:]
        for index in 0..<Int(assignment.pointee.cnt) {
            let element = assignment.pointee.elems[index]
            var low: Int64 = 0
            var high: Int64 = 0
            guard rd_kafka_get_watermark_offsets(rk, element.topic, element.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0 else { continue }
            if committed[element.partition] == nil, asked, element.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                // No commit yet in the group: the consumer starts from the earliest record.
                let offset = element.offset >= 0 ? element.offset : low
                committed[element.partition] = offset
                noteCommitted([PartitionOffset(partition: element.partition, offset: offset)])
            }
            guard let position = committed[element.partition] else { continue }  // unknown: no gauge rather than a guess
            lag[element.partition] = max(0, high - position)
        }
        lagByPartition.withLock { $0 = lag }
    }

    private func noteCommitted(_ offsets: [PartitionOffset]) {
        committedOffsets.withLock { known in
            for offset in offsets { known[offset.partition] = max(known[offset.partition] ?? .min, offset.offset) }
        }
    }

    private func answer(_ ticket: Ticket, _ records: [ConsumedRecord], _ state: ConsumerThreadState) {
        let current = shared.withLock { shared -> Bool in
            guard shared.fetch?.ticket == ticket else { return false }
            shared.fetch = nil
            return true
        }
        guard current else { return }
        for record in records {
            logger.debug(
                "Record fetched",
                metadata: [
                    "kafka.topic": "\(configuration.topic)", "kafka.partition": "\(record.partition)", "kafka.offset": "\(record.offset)",
                ])
        }
        state.sink(.fetched(ticket, records))
    }

    private static func record(_ m: rd_kafka_message_t, _ message: UnsafeMutablePointer<rd_kafka_message_t>) -> ConsumedRecord {
        let value = m.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: m.len)) } ?? []
        let key = m.key.map { Array(UnsafeRawBufferPointer(start: $0, count: m.key_len)) }
        var headers: [ConsumedRecord.Header] = []
        var list: OpaquePointer?
        if rd_kafka_message_headers(message, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list {
            var index = 0
            while true {
                var name: UnsafePointer<CChar>?
                var bytes: UnsafeRawPointer?
                var size = 0
                guard rd_kafka_header_get_all(list, index, &name, &bytes, &size) == RD_KAFKA_RESP_ERR_NO_ERROR, let name else { break }
                let headerValue = bytes.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
                headers.append(.init(name: String(cString: name), value: headerValue))
                index += 1
            }
        }
        return ConsumedRecord(partition: m.partition, offset: m.offset, key: key, headers: headers, value: value)
    }

    // MARK: - The commit thread

    private func commitLoop() {
        while let commit = commits.pop() {
            let outcome = perform(commit)
            handle.state.sink(.offsetsCommitted(commit.ticket, outcome))
        }
        threadFinished()
    }

    private func perform(_ commit: Commit) -> CommitOutcome {
        let (current, assigned) = shared.withLock { ($0.generation, $0.assigned) }
        if let fenced = CommitOutcome.fence(commit.offsets, generation: commit.generation, current: current, owns: assigned.contains) {
            return fenced
        }
        guard !commit.offsets.isEmpty else { return .committed }
        let list = rd_kafka_topic_partition_list_new(Int32(commit.offsets.count))
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for offset in commit.offsets {
            rd_kafka_topic_partition_list_add(list, configuration.topic, offset.partition).pointee.offset = offset.offset
        }
        let code = rd_kafka_commit(handle.rk, list, 0)
        switch code {
        case RD_KAFKA_RESP_ERR_NO_ERROR, RD_KAFKA_RESP_ERR__NO_OFFSET:
            noteCommitted(commit.offsets)
            logger.debug("Committed offsets", metadata: ["kafka.offsets": "\(commit.offsets.map { "\($0.partition)@\($0.offset)" })"])
            return .committed
        case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID,
            RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST, RD_KAFKA_RESP_ERR__STATE:
            return .rebalanced
        default:
            return .failed(errorText(code))
        }
    }
}

/// What the poll thread owns (touched only on that thread, including inside the rebalance callback).
final class ConsumerThreadState: @unchecked Sendable {
    let sink: @Sendable (Input) -> Void
    let logger: Logger
    let topic: String
    weak var consumer: KafkaConsumer?
    let doorbell = Doorbell()
    /// Records polled from the consumer queue (from a partition that was not split off: none in practice).
    var buffer: [ConsumedRecord] = []
    /// The assigned partitions' own queues, by partition.
    var partitionQueues: [(partition: Int32, queue: OpaquePointer)] = []
    var closing = false

    init(sink: @escaping @Sendable (Input) -> Void, logger: Logger, topic: String) {
        self.sink = sink
        self.logger = logger
        self.topic = topic
    }

    /// The rebalance callback (eager): assign or revoke everything, start a new generation, drop the buffer. Each
    /// assigned partition's queue is split off before its fetching starts (librdkafka then leaves it so: an
    /// application's forwarding is not overridden by a fetch start); records fetched under an older assignment
    /// that are still in it are outdated for librdkafka and never served.
    func rebalance(_ rk: OpaquePointer, _ error: rd_kafka_resp_err_t, _ partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        buffer = []
        releasePartitionQueues()
        var assigned: [Int32] = []
        if error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, let partitions {
            let list = partitions.pointee
            for index in 0..<Int(list.cnt) {
                let element = list.elems[index]
                assigned.append(element.partition)
                guard let queue = rd_kafka_queue_get_partition(rk, element.topic, element.partition) else {
                    // Its records then come through the consumer queue, unshared and unbounded by a fetch: never
                    // seen, but not silent.
                    logger.warning("Kafka partition queue unavailable", metadata: ["kafka.topic": "\(topic)", "kafka.partition": "\(element.partition)"])
                    continue
                }
                rd_kafka_queue_forward(queue, nil)
                doorbell.ring(whenSomethingArrivesIn: queue)
                partitionQueues.append((element.partition, queue))
            }
            partitionQueues.sort { $0.partition < $1.partition }
            rd_kafka_assign(rk, partitions)
        } else {
            rd_kafka_assign(rk, nil)
        }
        guard !closing, let consumer else { return }
        assigned.sort()
        let generation = consumer.newGeneration(assigned)
        logger.info(
            "Kafka partitions \(error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? "assigned" : "revoked")",
            metadata: [
                "kafka.topic": "\(topic)", "kafka.partitions": "\(assigned)", "kafka.generation": "\(generation)",
            ])
        sink(.assigned(generation: generation, partitions: assigned))
    }

    func releasePartitionQueues() {
        for (_, queue) in partitionQueues {
            Doorbell.silence(queue)
            rd_kafka_queue_destroy(queue)
        }
        partitionQueues = []
    }
}

/// What the poll thread sleeps on: rung by any thread, and by librdkafka's own threads when a queue it was
/// attached to goes from empty to non-empty (the callback does nothing else: no librdkafka call may happen there).
final class Doorbell: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)

    func signal() { semaphore.signal() }

    /// Waits for a ring, at most `timeout`.
    func wait(for timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = max(0, Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
        _ = semaphore.wait(timeout: .now() + .nanoseconds(nanoseconds))
    }

    /// The doorbell must outlive the attachment (`silence` ends it).
    func ring(whenSomethingArrivesIn queue: OpaquePointer) {
        rd_kafka_queue_cb_event_enable(
            queue,
            { _, opaque in
                guard let opaque else { return }
                Unmanaged<Doorbell>.fromOpaque(opaque).takeUnretainedValue().signal()
            }, Unmanaged.passUnretained(self).toOpaque())
    }

    static func silence(_ queue: OpaquePointer) { rd_kafka_queue_cb_event_enable(queue, nil, nil) }
}

/// Owns the consumer's `rd_kafka_t` and a reference to its consumer queue (the one `rd_kafka_consumer_poll` serves).
final class ConsumerHandle: @unchecked Sendable {
    let rk: OpaquePointer
    let state: ConsumerThreadState
    /// Used on the poll thread only (and in deinit); nil once released.
    private var consumerQueue: OpaquePointer?

    init(_ rk: OpaquePointer, state: ConsumerThreadState) {
        self.rk = rk
        self.state = state
        self.consumerQueue = rd_kafka_queue_get_consumer(rk)
        if let consumerQueue { state.doorbell.ring(whenSomethingArrivesIn: consumerQueue) }
    }

    var doorbell: Doorbell { state.doorbell }

    func releaseConsumerQueue() {
        if let consumerQueue {
            Doorbell.silence(consumerQueue)
            rd_kafka_queue_destroy(consumerQueue)
        }
        consumerQueue = nil
    }

    deinit {
        releaseConsumerQueue()
        rd_kafka_destroy(rk)
    }
}
