import CRdKafka
import Foundation
import Logging
import OrderPipelineCore
import Synchronization

/// The relay's Kafka side: performs `.publish(_, .orders, rows)` and `.forwardDeadLetter`.
///
/// Idempotent (`enable.idempotence=true`, `acks=all`); key = order id, headers `event-id`, `event-type` and (when
/// the row has a trace) `traceparent`. A batch is handed to librdkafka at once and its delivery reports are awaited concurrently; every report resumes exactly
/// one slot, and the batch's caller is resumed once, when its last slot is filled. A full local queue is
/// back-pressure: the publish waits and tries again. After `PRODUCER_FENCED`, a fatal error or a message timeout
/// (an idempotent producer stays broken after one) the session is unusable: those records (the broker may have
/// written them) and every later batch answer `.sessionUnusable`, until the relay machine decides to `reset()` it
/// (a new librdkafka producer). Single messages and batches of several go through two librdkafka producers
/// (`Sessions`), replaced together.
public final class KafkaProducer: Sendable {
    public let configuration: KafkaConfiguration
    private let logger: Logger
    private let forBatches: Bool
    private let sessions: Mutex<Sessions?>

    /// Creates the first producer session (idempotent, `acks=all`), and with `forBatches` (the relay's) a second one
    /// for batches of several messages (`KafkaConfiguration.batchLingerMilliseconds`).
    /// - Throws: `KafkaError` when librdkafka refuses the configuration or cannot create the client.
    public init(configuration: KafkaConfiguration, forBatches: Bool = true, logger: Logger) throws(KafkaError) {
        self.configuration = configuration
        self.logger = logger
        self.forBatches = forBatches
        self.sessions = Mutex(try Sessions(configuration: configuration, number: 1, forBatches: forBatches, logger: logger))
        logger.info(
            "Kafka producer ready",
            metadata: [
                "kafka.brokers": "\(configuration.brokers)", "kafka.topic": "\(configuration.topic)",
                "kafka.librdkafka": "\(KafkaConfiguration.librdkafkaVersion)",
                "kafka.batch_linger_ms": "\(forBatches ? configuration.batchLingerMilliseconds : 0)",
            ])
    }

    /// One outcome per message, in order; a delivered one says where it went (`.appended`).
    public func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        let items = messages.map { message in
            let event = message.event
            return ProducerSession.Item(key: Array(event.orderID.description.utf8), value: event.payload, headers: event.kafkaHeaders, orderID: event.orderID)
        }
        return await send(items, topic: configuration.topic)
    }

    /// Copies a poison record as it was (key, value, headers) to the dead-letter topic, with the reason and source.
    public func forward(_ record: ConsumedRecord, reason: String) async -> PublishOutcome {
        var headers = record.headers
        headers.append(.init(name: "dead-letter-reason", value: Array(reason.utf8)))
        headers.append(.init(name: "dead-letter-source", value: Array(record.source(topic: configuration.topic).utf8)))
        let item = ProducerSession.Item(key: record.key, value: record.value, headers: headers, orderID: nil)
        // The copy's position is not kept anywhere: its outcome is plain `.delivered`.
        let outcome = await send([item], topic: configuration.deadLetterTopic).first ?? .unknown("no delivery report")
        return outcome.isDelivered ? .delivered : outcome
    }

    /// Flushes what is in flight (up to `timeout`) and destroys the producers. Later publishes fail (retriable).
    public func shutdown(timeout: Duration = .seconds(10)) async {
        let current = sessions.withLock { current -> Sessions? in
            defer { current = nil }
            return current
        }
        await current?.stop(flushTimeout: timeout)
    }

    /// Replaces the sessions by new producers (the machine's `.resetPublisher`); the old ones' in-flight reports
    /// still resolve their batches. If a new producer cannot be created the old ones stay, and keep answering
    /// `.sessionUnusable` when broken, so the relay asks again before its next publish.
    public func reset() {
        let retired: Sessions? = sessions.withLock { current in
            guard let existing = current else { return nil }
            do {
                current = try Sessions(configuration: configuration, number: existing.number + 1, forBatches: forBatches, logger: logger)
                return existing
            } catch {
                logger.error("Could not recreate the Kafka producer", metadata: ["kafka.error": "\(error)"])
                return nil
            }
        }
        guard let retired else { return }
        logger.warning(
            "Recreated the Kafka producer",
            metadata: [
                "kafka.producer": "\(retired.number + 1)", "kafka.reason": "\(retired.brokenReason ?? "reset while usable")",
            ])
        Task.detached { await retired.stop(flushTimeout: .seconds(1)) }
    }

    /// Which producer session is live (1 for the first; each reset adds one). For tests and logs.
    public var sessionNumber: Int? { sessions.withLock { $0?.number } }

    private func send(_ items: [ProducerSession.Item], topic: String) async -> [PublishOutcome] {
        guard !items.isEmpty else { return [] }
        guard let current = sessions.withLock({ $0 }) else {
            return items.map { _ in .failed(retriable: true, reason: "producer is shut down") }
        }
        // One broken producer makes the pair unusable: the relay resets both before its next publish.
        if let reason = current.brokenReason {
            return items.map { _ in .sessionUnusable(ProducerSession.unusable(reason)) }
        }
        return await current.session(for: items.count).send(items, topic: topic)
    }

    /// The live producers: batches of one message go through `single`, larger ones through `batches` when there is
    /// one. Order per key does not depend on which: the relay publishes an order's next row only once the broker has
    /// acknowledged the one before (the claim's head of line).
    private struct Sessions: Sendable {
        let number: Int
        let single: ProducerSession
        let batches: ProducerSession?

        init(configuration: KafkaConfiguration, number: Int, forBatches: Bool, logger: Logger) throws(KafkaError) {
            let single = try ProducerSession(configuration: configuration, role: .single, number: number, logger: logger)
            var batches: ProducerSession?
            if forBatches, configuration.batchLingerMilliseconds > 0 {
                do {
                    batches = try ProducerSession(configuration: configuration, role: .batches, number: number, logger: logger)
                } catch {
                    Task.detached { await single.stop(flushTimeout: .zero) }
                    throw error
                }
            }
            self.number = number
            self.single = single
            self.batches = batches
        }

        var brokenReason: String? { single.brokenReason ?? batches?.brokenReason }

        func session(for count: Int) -> ProducerSession { count > 1 ? batches ?? single : single }

        func stop(flushTimeout: Duration) async {
            async let first: Void = single.stop(flushTimeout: flushTimeout)
            await batches?.stop(flushTimeout: flushTimeout)
            await first
        }
    }
}

/// One librdkafka producer instance with its poll thread and its outstanding deliveries.
final class ProducerSession: Sendable {
    struct Item: Sendable {
        var key: [UInt8]?
        var value: [UInt8]
        var headers: [ConsumedRecord.Header]
        /// For the debug log line of each delivery (formatted only when it is written).
        var orderID: OrderID?
    }

    private struct Batch {
        var outcomes: [PublishOutcome?]
        var remaining: Int
        var continuation: CheckedContinuation<[PublishOutcome], Never>?
    }

    private struct Slot {
        var batch: UInt64
        var index: Int
        var orderID: OrderID?
        var topic: String
        /// When the report is overdue, on the monotonic clock: librdkafka's own message timeout reads the wall
        /// clock, which a skewed or stepped host clock can stop from ever firing.
        var deadline: ContinuousClock.Instant
    }

    private struct Pending {
        var nextToken: UInt64 = 0
        var nextBatch: UInt64 = 0
        var slots: [UInt64: Slot] = [:]
        var batches: [UInt64: Batch] = [:]
        var brokenReason: String?
        var stopping = false
    }

    let number: Int
    private let handle: ProducerHandle
    private let pending = Mutex(Pending())
    private let logger: Logger
    private let messageTimeout: Duration
    private let stopped = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let threadDone = Atomic<Bool>(false)

    /// Which messages a session sends (`KafkaProducer.Sessions`): its `client.id`, thread name and linger.
    enum Role {
        case single, batches
    }

    init(configuration: KafkaConfiguration, role: Role, number: Int, logger: Logger) throws(KafkaError) {
        self.number = number
        self.logger = logger
        self.messageTimeout = configuration.messageTimeout
        let conf = KafkaConf()
        try conf.set("bootstrap.servers", configuration.brokers)
        try conf.set("client.id", "\(configuration.clientID)-\(role == .single ? "producer" : "batch-producer")-\(number)")
        try conf.set("enable.idempotence", "true")
        try conf.set("acks", "all")
        try conf.set("linger.ms", String(role == .single ? configuration.lingerMilliseconds : configuration.batchLingerMilliseconds))
        try conf.set("message.timeout.ms", String(configuration.messageTimeout.milliseconds))
        for (name, value) in configuration.extraProperties.sorted(by: { $0.key < $1.key }) { try conf.set(name, value) }
        let box = DeliveryBox()
        rd_kafka_conf_set_opaque(conf.handle, Unmanaged.passUnretained(box).toOpaque())
        rd_kafka_conf_set_dr_msg_cb(conf.handle) { _, message, opaque in
            guard let message, let opaque else { return }
            let box = Unmanaged<DeliveryBox>.fromOpaque(opaque).takeUnretainedValue()
            let token = UInt64(UInt(bitPattern: message.pointee._private))
            box.session?.delivered(token: token, error: message.pointee.err, partition: message.pointee.partition, offset: message.pointee.offset)
        }
        var error = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.handle, &error, error.count) else {
            throw KafkaError(code: .client, message: errorText(error))
        }
        _ = conf.release()
        self.handle = ProducerHandle(rk, box: box)
        box.session = self
        DedicatedThread.start("kafka-\(role == .single ? "prod" : "batch")-\(number)") { [self] in self.pollLoop() }
    }

    var brokenReason: String? { pending.withLock { $0.brokenReason } }

    func send(_ items: [Item], topic: String) async -> [PublishOutcome] {
        let clock = ContinuousClock()
        // The batch and a slot per item, under one lock: tokens first ..< first + count, in the items' order.
        let registered: (batch: UInt64, first: UInt64)? = pending.withLock { state in
            guard !state.stopping else { return nil }
            state.nextBatch += 1
            state.batches[state.nextBatch] = Batch(outcomes: Array(repeating: nil, count: items.count), remaining: items.count)
            let first = state.nextToken + 1
            let deadline = clock.now + messageTimeout + Self.reportGrace
            state.slots.reserveCapacity(state.slots.count + items.count)
            for (index, item) in items.enumerated() {
                state.slots[first + UInt64(index)] = Slot(batch: state.nextBatch, index: index, orderID: item.orderID, topic: topic, deadline: deadline)
            }
            state.nextToken += UInt64(items.count)
            return (state.nextBatch, first)
        }
        guard let (batchID, first) = registered else { return items.map { _ in .failed(retriable: true, reason: "producer is shutting down") } }
        for (index, item) in items.enumerated() {
            let token = first + UInt64(index)
            var deadline: ContinuousClock.Instant?
            while true {
                let code = produce(item, topic: topic, token: token)
                if code == RD_KAFKA_RESP_ERR_NO_ERROR { break }
                if code == RD_KAFKA_RESP_ERR__QUEUE_FULL {
                    let giveUp = deadline ?? clock.now + messageTimeout
                    deadline = giveUp
                    if clock.now < giveUp {
                        // Back-pressure: the poll thread drains delivery reports; try again shortly. The reports of
                        // this and the later items are due only after they were handed over.
                        try? await Task.sleep(for: .milliseconds(2))
                        postpone(from: token, to: first + UInt64(items.count), until: clock.now + messageTimeout + Self.reportGrace)
                        continue
                    }
                }
                var outcome = Self.outcome(for: code)
                if code == RD_KAFKA_RESP_ERR__FATAL || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED || code == RD_KAFKA_RESP_ERR__FENCED {
                    markBroken(errorText(code))
                    outcome = .sessionUnusable(Self.unusable(errorText(code)))
                }
                complete(token: token, outcome: outcome)
                break
            }
        }
        return await withCheckedContinuation { continuation in
            let ready: [PublishOutcome]? = pending.withLock { state in
                guard var batch = state.batches[batchID] else { return nil }
                if batch.remaining == 0 {
                    state.batches[batchID] = nil
                    return batch.outcomes.map { $0 ?? .unknown("no delivery report") }
                }
                batch.continuation = continuation
                state.batches[batchID] = batch
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Moves the report deadline of the slots `tokens` still open (items not handed over yet) to `deadline`.
    private func postpone(from token: UInt64, to end: UInt64, until deadline: ContinuousClock.Instant) {
        pending.withLock { state in
            for later in token..<end where state.slots[later] != nil { state.slots[later]?.deadline = deadline }
        }
    }

    /// How long after librdkafka's message timeout a missing delivery report is given up on.
    static let reportGrace: Duration = .seconds(5)

    /// Completes every slot whose report is overdue (on the poll thread), and marks the session broken: a producer
    /// that loses reports is unusable (the broker may still have the records: the relay retries them as unknown).
    private func expireOverdueReports() {
        let now = ContinuousClock.now
        let overdue: [UInt64] = pending.withLock { state in state.slots.filter { $0.value.deadline <= now }.map(\.key) }
        guard !overdue.isEmpty else { return }
        markBroken("delivery reports overdue")
        logger.warning("Kafka delivery reports overdue; outcome unknown", metadata: ["kafka.records": "\(overdue.count)"])
        for token in overdue { complete(token: token, outcome: .sessionUnusable(Self.unusable("no delivery report before the deadline"))) }
    }

    private func produce(_ item: Item, topic: String, token: UInt64) -> rd_kafka_resp_err_t {
        let headers = rd_kafka_headers_new(item.headers.count)
        for header in item.headers {
            _ = header.value.withUnsafeBytes { bytes in rd_kafka_header_add(headers, header.name, -1, bytes.baseAddress, bytes.count) }
        }
        let opaque = UnsafeMutableRawPointer(bitPattern: UInt(token))
        let code: rd_kafka_resp_err_t = item.value.withUnsafeBytes { value in
            if let key = item.key {
                return key.withUnsafeBytes { keyBytes in
                    orderpipeline_rdk_produce(handle.rk, topic, keyBytes.baseAddress, keyBytes.count, value.baseAddress, value.count, headers, opaque)
                }
            }
            return orderpipeline_rdk_produce(handle.rk, topic, nil, 0, value.baseAddress, value.count, headers, opaque)
        }
        // On success librdkafka owns the headers; on failure they are still ours.
        if code != RD_KAFKA_RESP_ERR_NO_ERROR { rd_kafka_headers_destroy(headers) }
        return code
    }

    /// A delivery report (on the poll thread).
    fileprivate func delivered(token: UInt64, error: rd_kafka_resp_err_t, partition: Int32, offset: Int64) {
        var outcome: PublishOutcome
        if error == RD_KAFKA_RESP_ERR_NO_ERROR {
            outcome = .appended(RecordPosition(partition: partition, offset: offset))
            if logger.logLevel <= .debug, let slot = pending.withLock({ $0.slots[token] }) {
                if let order = slot.orderID {
                    logger.debug(
                        "Order published to Kafka",
                        metadata: [
                            "order.id": "\(order)", "kafka.topic": "\(slot.topic)", "kafka.partition": "\(partition)", "kafka.offset": "\(offset)",
                        ])
                } else {
                    logger.debug(
                        "Record forwarded to Kafka",
                        metadata: [
                            "kafka.topic": "\(slot.topic)", "kafka.partition": "\(partition)", "kafka.offset": "\(offset)",
                        ])
                }
            }
        } else {
            outcome = Self.outcome(for: error)
            if error == RD_KAFKA_RESP_ERR_PRODUCER_FENCED || error == RD_KAFKA_RESP_ERR__FENCED
                || error == RD_KAFKA_RESP_ERR__FATAL || error == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT
            {
                // librdkafka 2.16's idempotent producer stays broken after a timeout (every later send is fenced).
                markBroken(errorText(error))
                outcome = .sessionUnusable(Self.unusable(errorText(error)))
            }
            logger.warning("Kafka delivery failed", metadata: ["kafka.error": "\(errorText(error))", "kafka.code": "\(error.rawValue)"])
        }
        complete(token: token, outcome: outcome)
    }

    /// Fills one slot; resumes the batch's caller when it was the last. A token completes at most once.
    private func complete(token: UInt64, outcome: PublishOutcome) {
        let resume: (CheckedContinuation<[PublishOutcome], Never>, [PublishOutcome])? = pending.withLock { state in
            guard let slot = state.slots.removeValue(forKey: token), state.batches[slot.batch]?.outcomes[slot.index] == nil else { return nil }
            // In place: a copy of the batch out of the dictionary would copy its outcomes on every report.
            state.batches[slot.batch]!.outcomes[slot.index] = outcome
            state.batches[slot.batch]!.remaining -= 1
            guard let batch = state.batches[slot.batch], batch.remaining == 0, let continuation = batch.continuation else { return nil }
            state.batches[slot.batch] = nil
            return (continuation, batch.outcomes.map { $0 ?? .unknown("no delivery report") })
        }
        if let (continuation, outcomes) = resume { continuation.resume(returning: outcomes) }
    }

    private func markBroken(_ reason: String) {
        pending.withLock { state in
            if state.brokenReason == nil { state.brokenReason = reason }
        }
    }

    /// The reason a `.sessionUnusable` outcome carries.
    static func unusable(_ reason: String) -> String { "producer session unusable (\(reason))" }

    static func outcome(for code: rd_kafka_resp_err_t) -> PublishOutcome {
        switch code {
        case RD_KAFKA_RESP_ERR_NO_ERROR:
            return .delivered
        case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
            return .unknown(errorText(code))
        default:
            // The broker (or librdkafka for it) refused the record: the relay machine judges the condition (`Refusal`).
            return .refused(condition: "kafka:" + String(cString: rd_kafka_err2name(code)), description: errorText(code))
        }
    }

    private func pollLoop() {
        while !pending.withLock({ $0.stopping }) {
            rd_kafka_poll(handle.rk, 100)
            expireOverdueReports()
            if rd_kafka_fatal_error(handle.rk, nil, 0) != RD_KAFKA_RESP_ERR_NO_ERROR { markBroken("fatal producer error") }
        }
        threadDone.store(true, ordering: .releasing)
        let continuation = stopped.withLock { $0.take() }
        continuation?.resume()
    }

    /// Flush on a dedicated thread (blocking), purge what is left (its reports resolve the waiters), destroy.
    func stop(flushTimeout: Duration) async {
        let already = pending.withLock { state -> Bool in
            defer { state.stopping = true }
            return state.stopping
        }
        guard !already else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = stopped.withLock { slot -> Bool in
                if threadDone.load(ordering: .acquiring) { return true }
                slot = continuation
                return false
            }
            if done { continuation.resume() }
        }
        let handle = self.handle
        let milliseconds = Int32(clamping: flushTimeout.milliseconds)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DedicatedThread.start("kafka-flush") {
                let flushed = rd_kafka_flush(handle.rk, milliseconds)
                if flushed != RD_KAFKA_RESP_ERR_NO_ERROR {
                    rd_kafka_purge(handle.rk, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
                    rd_kafka_poll(handle.rk, 0)
                }
                continuation.resume()
            }
        }
        // Anything still unresolved (never expected after purge + poll) is an unknown outcome.
        let tokens = pending.withLock { Array($0.slots.keys) }
        for token in tokens { complete(token: token, outcome: .unknown("producer stopped")) }
    }
}

/// Lets the C delivery callback find its session (the session owns the box, the box points back weakly).
final class DeliveryBox: @unchecked Sendable {
    weak var session: ProducerSession?
}

/// Owns the `rd_kafka_t` of a producer.
final class ProducerHandle: @unchecked Sendable {
    let rk: OpaquePointer
    let box: DeliveryBox
    init(_ rk: OpaquePointer, box: DeliveryBox) {
        self.rk = rk
        self.box = box
    }
    deinit { rd_kafka_destroy(rk) }
}
