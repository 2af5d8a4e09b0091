import Foundation
import Logging
import OrderPipelineCore
import OrderPipelineKafka
import OrderPipelineTestSupport
import Synchronization
import Testing

/// Integration tests against a real Kafka-protocol broker (Tansu from `scripts/services`). They run only when
/// KAFKA_BROKERS is set (CI sets it; `eval "$(scripts/services env)"` does locally, together with the
/// LD_LIBRARY_PATH that loads librdkafka 2.16).
enum TestKafka {
    static var brokers: String? { TestEnvironment.value("KAFKA_BROKERS") }

    static var isConfigured: Bool { brokers != nil }

    static var configuration: KafkaConfiguration {
        var configuration = KafkaConfiguration(brokers: brokers ?? "127.0.0.1:59092")
        if let topic = TestEnvironment.value("KAFKA_TOPIC") { configuration.topic = topic }
        if let topic = TestEnvironment.value("KAFKA_DEAD_LETTER_TOPIC") { configuration.deadLetterTopic = topic }
        configuration.groupID = "test-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        return configuration
    }

    static let logger = TestEnvironment.logger("test.kafka")

    static func message(sequence: Int64) -> OutboxMessage {
        var random = SystemRandomNumberGenerator()
        let order = OrderID(UUID128.random(using: &random))
        let event = PipelineEvent(type: .orderCreated, orderID: order, at: Instant(microseconds: 1_800_000_000_000_000), status: .pending)
        return OutboxMessage(sequence: sequence, event: event, attempts: 1)
    }
}

/// Collects what a consumer says through its sink.
final class ConsumerProbe: Sendable {
    let inputs: AsyncStream<Input>
    let continuation: AsyncStream<Input>.Continuation
    private let ticket = Atomic<UInt64>(0)

    init() { (inputs, continuation) = AsyncStream.makeStream(of: Input.self) }

    var sink: @Sendable (Input) -> Void { { [continuation] in continuation.yield($0) } }

    func nextTicket() -> Ticket { Ticket(ticket.add(1, ordering: .relaxed).newValue) }

    /// Says `.wake` (which the driver ignores) once `deadline` has passed, unless cancelled first: a wait for the
    /// consumer's next input then sees its deadline even when the consumer says nothing (a join that never completes).
    func alarm(at deadline: ContinuousClock.Instant) -> Task<Void, Never> {
        Task { [continuation] in
            guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
            continuation.yield(.wake)
        }
    }
}

/// Drives a consumer like the machine would: wait for an assignment, fetch until `until` says stop.
struct ConsumerDriver {
    let consumer: KafkaConsumer
    let probe: ConsumerProbe
    var generation: Int64 = -1
    var partitions: [Int32] = []
    var iterator: AsyncStream<Input>.Iterator

    init(consumer: KafkaConsumer, probe: ConsumerProbe) {
        self.consumer = consumer
        self.probe = probe
        self.iterator = probe.inputs.makeAsyncIterator()
    }

    mutating func next() async -> Input? { await iterator.next() }

    /// Fetches until `predicate` holds for the records seen so far (or the deadline passes); returns them all.
    mutating func fetch(until predicate: ([ConsumedRecord]) -> Bool, within seconds: Double = 30) async -> [ConsumedRecord] {
        let deadline = ContinuousClock.now + .seconds(seconds)
        let alarm = probe.alarm(at: deadline)
        defer { alarm.cancel() }
        var seen: [ConsumedRecord] = []
        var outstanding: Ticket?
        while ContinuousClock.now < deadline, !predicate(seen) {
            if outstanding == nil, !partitions.isEmpty {
                let ticket = probe.nextTicket()
                consumer.fetch(ticket, max: 500)
                outstanding = ticket
            }
            guard let input = await next() else { break }
            switch input {
            case let .assigned(generation, partitions):
                self.generation = generation
                self.partitions = partitions
            case let .fetched(ticket, records) where ticket == outstanding:
                outstanding = nil
                seen += records
            default:
                break
            }
        }
        return seen
    }

    /// Commits `offsets` in the current generation; nil when no answer came within `seconds`.
    mutating func commit(_ offsets: [PartitionOffset], within seconds: Double = 30) async -> CommitOutcome? {
        let ticket = probe.nextTicket()
        consumer.commit(ticket, offsets, generation: generation)
        return await outcome(of: ticket, within: seconds)
    }

    /// The answer to the commit `ticket`; nil when none came within `seconds`.
    mutating func outcome(of ticket: Ticket, within seconds: Double = 30) async -> CommitOutcome? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        let alarm = probe.alarm(at: deadline)
        defer { alarm.cancel() }
        while ContinuousClock.now < deadline, let input = await next() {
            switch input {
            case let .offsetsCommitted(answered, outcome) where answered == ticket: return outcome
            case let .assigned(generation, partitions):
                self.generation = generation
                self.partitions = partitions
            default: break
            }
        }
        return nil
    }
}

@Suite("Kafka adapter against a real broker", .enabled(if: TestKafka.isConfigured, "KAFKA_BROKERS is not set"), .serialized, .timeLimit(.minutes(5)))
struct KafkaIntegrationTests {
    @Test("librdkafka 2.16 is the one loaded (Debian's 2.0.2 cannot talk to Tansu)")
    func version() {
        #expect(!KafkaConfiguration.librdkafkaVersion.hasPrefix("2.0."), "LD_LIBRARY_PATH must put $RDKAFKA_LIB_DIR first")
    }

    @Test("publish a batch: one delivered outcome per message, each with its own position")
    func publishBatch() async throws {
        let producer = try KafkaProducer(configuration: TestKafka.configuration, logger: TestKafka.logger)
        let messages = (1...20).map { TestKafka.message(sequence: Int64($0)) }
        let outcomes = await producer.publish(messages)
        let positions = outcomes.compactMap { if case .appended(let position) = $0 { position } else { nil } }
        #expect(positions.count == 20, "\(outcomes)")
        #expect(Set(positions).count == 20, "no two records at one position")
        #expect(await producer.publish([]) == [])
        await producer.shutdown()
        // After shutdown nothing is sent, and that is a retriable failure.
        let after = await producer.publish([TestKafka.message(sequence: 99)])
        #expect(after.count == 1)
        if case .failed(retriable: true, _) = after.first {} else { Issue.record("expected a retriable failure, got \(after)") }
    }

    @Test("single messages and batches go through two producers; one after the other, one order's events keep their order")
    func singleAndBatchProducersKeepOrderPerKey() async throws {
        let producer = try KafkaProducer(configuration: TestKafka.configuration, logger: TestKafka.logger)
        var random = SystemRandomNumberGenerator()
        let order = OrderID(UUID128.random(using: &random))
        func event(_ sequence: Int64) -> OutboxMessage {
            var message = TestKafka.message(sequence: sequence)
            message.event.orderID = order
            return message
        }
        // As the relay publishes: each call once the one before was acknowledged (the claim's head of line).
        var outcomes: [PublishOutcome] = []
        for batch in [[event(1)], [event(2), event(3), event(4)], [event(5)], [event(6), event(7)]] {
            outcomes += await producer.publish(batch)
        }
        await producer.shutdown()
        let positions = outcomes.compactMap { if case .appended(let position) = $0 { position } else { nil } }
        #expect(positions.count == 7, "\(outcomes)")
        #expect(Set(positions.map(\.partition)).count == 1, "one key, one partition: \(positions)")
        #expect(positions.map(\.offset) == positions.map(\.offset).sorted() && Set(positions.map(\.offset)).count == 7, "\(positions)")
    }

    @Test("produce with key and headers, consume them back, commit, and resume from the committed offset")
    func produceConsumeCommitResume() async throws {
        // A topic of its own: the new group reads from the earliest record, on `orders` through every other test's.
        var configuration = TestKafka.configuration
        configuration.topic = configuration.groupID
        try await ScratchTopic.create(configuration.topic)
        try await withCleanup {
            let producer = try KafkaProducer(configuration: configuration, logger: TestKafka.logger)
            let first = TestKafka.message(sequence: 1)
            let firstOutcome = await producer.publish([first])
            guard case .appended(let firstPosition)? = firstOutcome.first else { Issue.record("expected a position, got \(firstOutcome)"); return }

            func isMessage(_ record: ConsumedRecord, _ message: OutboxMessage) -> Bool {
                record.headers.contains { $0.name == "event-id" && $0.value == Array(message.event.id.description.utf8) }
            }

            // First consumer: sees the message with its key and headers, commits past it.
            let probe = ConsumerProbe()
            let consumer = try KafkaConsumer(configuration: configuration, logger: TestKafka.logger, sink: probe.sink)
            var driver = ConsumerDriver(consumer: consumer, probe: probe)
            let seen = await driver.fetch(until: { $0.contains { isMessage($0, first) } })
            let record = try #require(
                seen.first { isMessage($0, first) }, "not consumed within 30 s (\(seen.count) records; assigned partitions \(driver.partitions))")
            #expect(RecordPosition(partition: record.partition, offset: record.offset) == firstPosition, "the delivery report names where it is")
            #expect(record.key == Array(first.event.orderID.description.utf8))
            #expect(record.value == first.event.payload)
            #expect(record.headers.first { $0.name == "event-type" }?.value == Array("OrderCreated".utf8))
            #expect(driver.generation >= 1)
            #expect(driver.partitions == [0, 1, 2])
            var next: [Int32: Int64] = [:]
            for seenRecord in seen { next[seenRecord.partition] = max(next[seenRecord.partition] ?? 0, seenRecord.offset + 1) }
            let offsets = next.keys.sorted().map { PartitionOffset(partition: $0, offset: next[$0]!) }
            let commitOutcome = await driver.commit(offsets)
            #expect(commitOutcome == .committed, "the commit: \(commitOutcome.map { "\($0)" } ?? "no answer within 30 s")")

            // A commit for an older generation changes nothing and says so.
            let stale = probe.nextTicket()
            consumer.commit(stale, offsets, generation: driver.generation - 1)
            let staleOutcome = await driver.outcome(of: stale)
            #expect(staleOutcome == .rebalanced, "the stale commit: \(staleOutcome.map { "\($0)" } ?? "no answer within 30 s")")
            await consumer.shutdown()

            // A second message with the same key lands on the same partition, right after the first.
            let second = OutboxMessage(
                sequence: 2, event: PipelineEvent(type: .orderFulfilled, orderID: first.event.orderID, at: first.event.occurredAt, status: .fulfilled), attempts: 1)
            #expect(await producer.publish([second]).allSatisfy(\.isDelivered))
            await producer.shutdown()

            // Second consumer in the same group resumes from the committed offsets: the first message never comes again.
            let probe2 = ConsumerProbe()
            let consumer2 = try KafkaConsumer(configuration: configuration, logger: TestKafka.logger, sink: probe2.sink)
            var driver2 = ConsumerDriver(consumer: consumer2, probe: probe2)
            let resumed = await driver2.fetch(until: { $0.contains { isMessage($0, second) } })
            await consumer2.shutdown()
            let secondRecord = try #require(
                resumed.first { isMessage($0, second) }, "not consumed within 30 s (\(resumed.count) records; assigned partitions \(driver2.partitions))")
            #expect(secondRecord.partition == record.partition)
            #expect(!resumed.contains { isMessage($0, first) })
            // Exactly at the committed offset.
            let onPartition = resumed.filter { $0.partition == record.partition }.map(\.offset)
            let committed = next[record.partition]!
            #expect(committed > record.offset)
            #expect(onPartition.first == committed, "resumed at \(onPartition.first ?? -1), committed \(committed)")
            #expect(secondRecord.offset >= committed)
        } cleanup: {
            await ScratchTopic.delete(configuration.topic)
        }
    }

    @Test("forward a poison record to the dead-letter topic")
    func deadLetter() async throws {
        let producer = try KafkaProducer(configuration: TestKafka.configuration, logger: TestKafka.logger)
        let poison = ConsumedRecord(partition: 1, offset: 42, key: Array("k".utf8), headers: [.init(name: "event-id", value: Array("x".utf8))], value: Array("not json".utf8))
        #expect(await producer.forward(poison, reason: "cannot decode") == .delivered)
        await producer.shutdown()
    }
}
