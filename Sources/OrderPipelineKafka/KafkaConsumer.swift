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
/// - One dedicated thread polls (rebalance callbacks happen there). Records wait in librdkafka's queue, whose own
///   thresholds bound the prefetch, until the machine asks: while no fetch is asked for, the thread only polls
///   for callbacks, every 100 ms. Pausing the partitions would drop what librdkafka has prefetched (measured: each
///   resume cost ~600 ms without records, a third of a drain), so it is kept for a machine that stops asking for
///   long: the few records those callback polls take fill the buffer only then. A fetch request (and shutdown)
///   cuts a poll short (`rd_kafka_queue_yield`), so records go to the machine at once.
public final class KafkaConsumer: Sendable {
    public let configuration: KafkaConfiguration
    private let logger: Logger
    private let handle: ConsumerHandle
    private let shared: Mutex<Shared>
    /// Signalled by `fetch` and `shutdown`: the poll thread waits on it while the machine has asked for nothing.
    private let fetchAsked = DispatchSemaphore(value: 0)
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
        let poller = Thread { [self] in self.pollLoop() }
        poller.name = "kafka-consumer"
        poller.start()
        let committer = Thread { [self] in self.commitLoop() }
        committer.name = "kafka-commit"
        committer.start()
    }

    /// Ask for up to `max` records; answered through the sink with `.fetched(ticket, records)` (empty after
    /// `fetchWait` without records).
    public func fetch(_ ticket: Ticket, max: Int) {
        shared.withLock { state in
            state.fetch = (ticket, Swift.max(max, 1), ContinuousClock.now + configuration.fetchWait)
            if !state.stopping { handle.wakePoller() }
        }
        fetchAsked.signal()
    }

    /// Commit the next offsets to read; answered through the sink with `.offsetsCommitted`.
    public func commit(_ ticket: Ticket, _ offsets: [PartitionOffset], generation: Int64) {
        commits.push(Commit(ticket: ticket, offsets: offsets, generation: generation))
    }

    /// Leaves the group (revoking everything) and destroys the consumer; returns when both threads are done.
    public func shutdown() async {
        let first = shared.withLock { state -> Bool in
            defer { state.stopping = true }
            if !state.stopping { handle.wakePoller() }
            return !state.stopping
        }
        fetchAsked.signal()
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
        var paused = false
        var lagMeasured = ContinuousClock.now
        while true {
            if ContinuousClock.now - lagMeasured > .seconds(1) {
                lagMeasured = .now
                measureLag(rk)
            }
            let (stopping, fetch) = shared.withLock { ($0.stopping, $0.fetch) }
            if stopping { break }
            if let fetch {
                if !state.buffer.isEmpty {
                    // Take what else librdkafka already holds, without waiting: one bigger batch, not several.
                    while state.buffer.count < fetch.max, let message = rd_kafka_consumer_poll(rk, 0) { receive(message, state) }
                    let records = Array(state.buffer.prefix(fetch.max))
                    state.buffer.removeFirst(records.count)
                    answer(fetch.ticket, records, state)
                } else if ContinuousClock.now >= fetch.deadline {
                    answer(fetch.ticket, [], state)
                }
            }
            let full = state.buffer.count >= configuration.consumerBuffer
            if full != paused {
                setPaused(full, rk)
                paused = full
            }
            if fetch == nil {
                // Records stay in librdkafka's queue (its own thresholds bound the prefetch) until the machine
                // asks; the poll only serves callbacks. It may still take one record, so a machine that stops
                // asking for long fills the buffer slowly and only then pauses (which drops the prefetched records).
                _ = fetchAsked.wait(timeout: .now() + .milliseconds(100))
                if let message = rd_kafka_consumer_poll(rk, 0) { receive(message, state) }
                continue
            }
            guard let message = rd_kafka_consumer_poll(rk, 50) else { continue }
            receive(message, state)
        }
        // Leave the group: the revoke callback runs here; nothing more goes to the sink. No wake-up can come any
        // more (`stopping` is set under the same lock), and the queue reference must go before the close.
        shared.withLock { _ in handle.releaseConsumerQueue() }
        state.closing = true
        rd_kafka_consumer_close(rk)
        threadFinished()
    }

    /// Buffers a polled record (or logs the error it carries) and frees the message.
    private func receive(_ message: UnsafeMutablePointer<rd_kafka_message_t>, _ state: ConsumerThreadState) {
        defer { rd_kafka_message_destroy(message) }
        let m = message.pointee
        if m.err == RD_KAFKA_RESP_ERR_NO_ERROR {
            state.buffer.append(Self.record(m, message))
        } else if m.err != RD_KAFKA_RESP_ERR__PARTITION_EOF {
            logger.warning("Kafka consumer error", metadata: ["kafka.error": "\(errorText(m.err))", "kafka.code": "\(m.err.rawValue)"])
        }
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

    private func setPaused(_ pause: Bool, _ rk: OpaquePointer) {
        var assignment: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(rk, &assignment) == RD_KAFKA_RESP_ERR_NO_ERROR, let assignment else { return }
        defer { rd_kafka_topic_partition_list_destroy(assignment) }
        if pause { rd_kafka_pause_partitions(rk, assignment) } else { rd_kafka_resume_partitions(rk, assignment) }
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
    var buffer: [ConsumedRecord] = []
    var closing = false

    init(sink: @escaping @Sendable (Input) -> Void, logger: Logger, topic: String) {
        self.sink = sink
        self.logger = logger
        self.topic = topic
    }

    /// The rebalance callback (eager): assign or revoke everything, start a new generation, drop the buffer.
    func rebalance(_ rk: OpaquePointer, _ error: rd_kafka_resp_err_t, _ partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        buffer = []
        var assigned: [Int32] = []
        if error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, let partitions {
            rd_kafka_assign(rk, partitions)
            let list = partitions.pointee
            for index in 0..<Int(list.cnt) { assigned.append(list.elems[index].partition) }
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
}

/// Owns the consumer's `rd_kafka_t` and a reference to its consumer queue (the one `rd_kafka_consumer_poll` serves).
final class ConsumerHandle: @unchecked Sendable {
    let rk: OpaquePointer
    let state: ConsumerThreadState
    /// Used under the consumer's `shared` lock only; nil once released.
    private var consumerQueue: OpaquePointer?

    init(_ rk: OpaquePointer, state: ConsumerThreadState) {
        self.rk = rk
        self.state = state
        self.consumerQueue = rd_kafka_queue_get_consumer(rk)
    }

    /// Makes the poll in progress (or the next one) return at once.
    func wakePoller() {
        if let consumerQueue { rd_kafka_queue_yield(consumerQueue) }
    }

    func releaseConsumerQueue() {
        if let consumerQueue { rd_kafka_queue_destroy(consumerQueue) }
        consumerQueue = nil
    }

    deinit {
        releaseConsumerQueue()
        rd_kafka_destroy(rk)
    }
}
