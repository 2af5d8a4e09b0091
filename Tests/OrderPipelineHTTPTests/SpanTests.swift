import HTTPTypes
import Hummingbird
import HummingbirdTesting
import OrderPipelineCore
import OrderPipelineHTTP
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineServiceBus
import OrderPipelineTestSupport
import Synchronization
import Testing
import Tracing

/// Spans at the pipeline's hops with a recording tracer that propagates W3C (docs/TRACING.md), on fakes: no
/// services. The request's span, each relay's producer span and the consumer's span are one trace, each the
/// parent of the next through the ids the hops carry (outbox row, Kafka header, Service Bus properties).
@Suite("Spans: API → Kafka relay → consumer → Service Bus relay, one trace")
struct SpanTests {
    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let callerSpan = "00f067aa0ba902b7"
    static let caller = "00-\(traceID)-\(callerSpan)-01"

    /// The database as the intake and the consumer see it: every command succeeds (or every one fails), and is kept.
    final class Store: StorePerforming {
        let commands = Mutex<[StoreCommand]>([])
        let failing: Bool
        init(failing: Bool = false) { self.failing = failing }

        func perform(_ command: StoreCommand) async -> StoreResult {
            commands.withLock { $0.append(command) }
            if failing { return .failed(.unavailable("connection refused by db.internal as admin")) }
            switch command {
            case .createOrders(let batch): return .committed(.ordersCreated(batch.map { .created($0.order) }))
            case .transition(let t): return .committed(.transitioned(Sample.order(t.orderID, status: t.to, at: t.at)))
            case .fulfil(let batch): return .committed(.fulfilments(batch.map { _ in .fulfilled }))
            default: return .failed(.unavailable("not an intake or consumer recipe"))
            }
        }

        var created: NewOrder? { commands.withLock { $0.lazy.compactMap { if case .createOrders(let batch) = $0 { batch.first } else { nil } }.first } }
        var transition: OrderTransition? { commands.withLock { $0.lazy.compactMap { if case .transition(let t) = $0 { t } else { nil } }.first } }
        var fulfilment: Fulfilment? { commands.withLock { $0.lazy.compactMap { if case .fulfil(let batch) = $0 { batch.first } else { nil } }.first } }
    }

    struct NoReads: OrderReading {
        func order(_ id: OrderID) async throws -> Order? { nil }
        func orders(limit: Int, after cursor: OrderCursor?) async throws -> [Order] { [] }
        func pendingOutbox(_ kind: OutboxKind) async throws -> (count: Int, oldestAgeSeconds: Double) { (0, 0) }
        func schemaVersion() async throws -> Int? { nil }
    }

    /// A broker that takes everything (Kafka says where: partition 2, offsets from 117), or refuses everything.
    final class Broker: OutboxPublishing {
        let sent = Mutex<[OutboxMessage]>([])
        let refusing: Bool
        init(refusing: Bool = false) { self.refusing = refusing }

        func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
            if refusing { return messages.map { _ in .refused(condition: "com.microsoft:server-busy", description: "busy") } }
            return sent.withLock { sent in
                defer { sent += messages }
                return messages.indices.map { .appended(RecordPosition(partition: 2, offset: Int64(117 + sent.count + $0))) }
            }
        }

        func reset() {}
    }

    /// The consumer machine's `.fulfil` for `records`, as it issues it (assigned partition 2, then the fetch answered).
    func fulfil(_ records: ConsumedRecord...) throws -> StoreCommand {
        struct Effects: EffectPerformers {
            var fetches: [Ticket] = []
            var stores: [StoreCommand] = []
            mutating func fetch(max: Int, ticket: Ticket) { fetches.append(ticket) }
            mutating func store(_ command: StoreCommand, ticket: Ticket) { stores.append(command) }
            mutating func observe(_ note: Note) {}
        }
        var runner = MachineRunner(FulfilmentConsumer(seed: 1))
        var effects = Effects()
        let now = Instant(microseconds: 1_000_000)
        runner.handle(.start, now: now, performers: &effects)
        runner.handle(.assigned(generation: 1, partitions: [2]), now: now, performers: &effects)
        runner.handle(.fetched(try #require(effects.fetches.last), records), now: now, performers: &effects)
        return try #require(effects.stores.last)
    }

    func post(_ api: OrderAPI, traceparent: String?) async throws {
        let headers: HTTPFields = {
            var headers: HTTPFields = [.contentType: "application/json"]
            if let traceparent { headers[HTTPField.Name("traceparent")!] = traceparent }
            return headers
        }()
        let app = Application(router: api.makeRouter(), logger: HTTPTestDatabase.logger)
        try await app.test(.router) { client in
            let response = try await client.execute(uri: "/api/orders", method: .post, headers: headers, body: ByteBuffer(string: johnSmith))
            #expect(response.status == .created, "\(response.text)")
        }
    }

    @Test("a POST with a traceparent: the server span is the caller's child and its ids go on; relay, consumer and Service Bus relay spans follow, one trace")
    func oneTraceAcrossTheHops() async throws {
        let tracer = RecordingTracer()
        let store = Store()
        let api = OrderAPI(shell: IntakeShell(store: store, logger: HTTPTestDatabase.logger, tracer: tracer), reads: NoReads(), metrics: PipelineMetrics())
        try await post(api, traceparent: Self.caller)

        let server = try #require(tracer.span(named: "POST /api/orders"))
        #expect(server.kind == .server)
        #expect(server.parentID == Self.callerSpan)
        #expect(server.ids.traceID == Self.traceID)
        let new = try #require(store.created)
        #expect(server.attribute("orderpipeline.order.id") == new.order.id.description)
        #expect(server.attribute("orderpipeline.outcome") == "created")
        #expect(server.status == nil)
        // The Kafka outbox row stores the server span's own context.
        #expect(new.event.traceParent?.description == server.ids.traceParent)

        // The Kafka relay: a producer span per row, child of the row's trace; the record header is that span.
        let kafka = Broker()
        let outcomes = await TracedPublisher(kafka, outbox: .kafka, tracer: tracer).publish([OutboxMessage(sequence: 41, event: new.event, attempts: 1)])
        #expect(outcomes == [.appended(RecordPosition(partition: 2, offset: 117))])
        let send = try #require(tracer.span(named: "send orders"))
        #expect(send.kind == .producer)
        #expect(send.parentID == server.ids.spanID)
        #expect(send.attribute("orderpipeline.outbox.sequence") == "41")
        #expect(send.attribute("messaging.message.id") == new.event.id.description)
        #expect(send.attribute("messaging.destination.partition.id") == "2")
        #expect(send.attribute("messaging.kafka.offset") == "117")
        let sent = try #require(kafka.sent.withLock { $0.first })
        let header = try #require(sent.event.kafkaHeaders.first { $0.name == "traceparent" })
        #expect(String(decoding: header.value, as: UTF8.self) == send.ids.traceParent)
        #expect(sent.event.payload == new.event.payload && sent.event.id == new.event.id, "only the trace changes")

        // The consumer: the machine's `.fulfil` for that record, in a consumer span whose parent is the record's trace.
        let record = ConsumedRecord(partition: 2, offset: 117, key: nil, headers: sent.event.kafkaHeaders, value: sent.event.payload)
        let consumerStore = Store()
        #expect(await TracedFulfilmentStore(consumerStore, tracer: tracer).perform(try fulfil(record)) == .committed(.fulfilments([.fulfilled])))
        let process = try #require(tracer.span(named: "process orders"))
        #expect(process.kind == .consumer)
        #expect(process.parentID == send.ids.spanID)
        #expect(process.attribute("messaging.destination.partition.id") == "2")
        #expect(process.attribute("messaging.kafka.offset") == "117")
        #expect(process.attribute("orderpipeline.order.id") == new.order.id.description)
        let fulfilment = try #require(consumerStore.fulfilment)
        #expect(fulfilment.fulfilmentEvent.traceParent?.description == process.ids.traceParent, "the Service Bus outbox row stores the consumer span")

        // The Service Bus relay: its span's context is in the message's application properties.
        let serviceBus = Broker()
        _ = await TracedPublisher(serviceBus, outbox: .serviceBus, tracer: tracer).publish([OutboxMessage(sequence: 7, event: fulfilment.fulfilmentEvent, attempts: 1)])
        let sendFulfilment = try #require(tracer.span(named: "send fulfilment"))
        #expect(sendFulfilment.parentID == process.ids.spanID)
        let message = ServiceBusSender.message(for: try #require(serviceBus.sent.withLock { $0.first }).event)
        #expect(message.applicationProperties["traceparent"] == sendFulfilment.ids.traceParent)
        #expect(message.applicationProperties["Diagnostic-Id"] == sendFulfilment.ids.traceParent)

        #expect(tracer.spans.map(\.ids.traceID) == Array(repeating: Self.traceID, count: 4))
        #expect(tracer.spans.allSatisfy { !$0.isRecording }, "every span ended")
    }

    @Test("no traceparent: the server span starts the trace the row carries; PATCH has its span too")
    func newTraceAndPatch() async throws {
        let tracer = RecordingTracer()
        let store = Store()
        let shell = IntakeShell(store: store, logger: HTTPTestDatabase.logger, tracer: tracer)
        try await post(OrderAPI(shell: shell, reads: NoReads(), metrics: PipelineMetrics()), traceparent: nil)
        let server = try #require(tracer.span(named: "POST /api/orders"))
        #expect(server.parentID == nil)
        let created = try #require(store.created)
        #expect(created.event.traceParent?.description == server.ids.traceParent)

        let id = created.order.id
        let answer = await shell.changeStatus(id, body: Array(#"{"status":"Processing"}"#.utf8), traceParent: TraceParent(Self.caller))
        guard case .statusChanged = answer else { Issue.record("\(answer)"); return }
        let patch = try #require(tracer.span(named: "PATCH /api/orders/{id}/status"))
        #expect(patch.kind == .server)
        #expect(patch.parentID == Self.callerSpan)
        #expect(patch.attribute("orderpipeline.order.id") == id.description)
        let transition = try #require(store.transition)
        #expect(transition.traceParent?.description == patch.ids.traceParent)
    }

    @Test("failures are error spans: the database down for a request or a fulfilment, a broker refusing a row")
    func errorStatus() async throws {
        let tracer = RecordingTracer()
        let shell = IntakeShell(store: Store(failing: true), logger: HTTPTestDatabase.logger, tracer: tracer)
        let answer = await shell.createOrder(body: Array(johnSmith.utf8), idempotencyKey: nil, traceParent: TraceParent(Self.caller))
        guard case .unavailable = answer else { Issue.record("\(answer)"); return }
        let server = try #require(tracer.span(named: "POST /api/orders"))
        #expect(server.status == SpanStatus(code: .error, message: "database unavailable"), "the driver's text (hosts, users) stays out")

        var event = PipelineEvent(type: .orderCreated, order: Sample.order(Sample.orderID(1), at: Instant(microseconds: 0)), at: Instant(microseconds: 0), includeOrder: true)
        event.traceParent = TraceParent(Self.caller)
        let row = OutboxMessage(sequence: 3, event: event, attempts: 2)
        _ = await TracedPublisher(Broker(refusing: true), outbox: .serviceBus, tracer: tracer).publish([row])
        let send = try #require(tracer.span(named: "send fulfilment"))
        #expect(send.status?.code == .error)
        #expect(send.attribute("orderpipeline.outcome") == "refused")
        #expect(send.attribute("orderpipeline.outbox.attempt") == "2")

        let record = ConsumedRecord(partition: 2, offset: 5, key: nil, headers: row.event.kafkaHeaders, value: row.event.payload)
        #expect(
            await TracedFulfilmentStore(Store(failing: true), tracer: tracer).perform(try fulfil(record)) == .failed(.unavailable("connection refused by db.internal as admin")))
        let process = try #require(tracer.span(named: "process orders"))
        #expect(process.status == SpanStatus(code: .error, message: "database unavailable"))
    }

    /// Answers a `.fulfil` batch with the given outcomes.
    struct Outcomes: StorePerforming {
        let outcomes: [FulfilmentOutcome]
        func perform(_ command: StoreCommand) async -> StoreResult { .committed(.fulfilments(outcomes)) }
    }

    @Test("a batch of records from two orders: a consumer span per record, each in its record's trace, with its own outcome")
    func consumerBatch() async throws {
        let tracer = RecordingTracer()
        let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let records = [Self.caller, other].enumerated().map { n, trace in
            var event = PipelineEvent(
                type: .orderCreated, order: Sample.order(Sample.orderID(UInt64(n + 1)), at: Instant(microseconds: 0)), at: Instant(microseconds: 0), includeOrder: true)
            event.traceParent = TraceParent(trace)
            return ConsumedRecord(partition: 2, offset: Int64(10 + n), key: nil, headers: event.kafkaHeaders, value: event.payload)
        }
        let command = try fulfil(records[0], records[1])
        guard case .fulfil(let batch) = command else { Issue.record("\(command)"); return }
        #expect(batch.count == 2, "one transaction for both")
        _ = await TracedFulfilmentStore(Outcomes(outcomes: [.fulfilled, .duplicate]), tracer: tracer).perform(command)
        let spans = tracer.spans.filter { $0.operationName == "process orders" }.sorted {
            $0.attribute("messaging.kafka.offset") ?? "" < $1.attribute("messaging.kafka.offset") ?? ""
        }
        #expect(spans.map(\.ids.traceID) == [Self.traceID, "0af7651916cd43dd8448eb211c80319c"])
        #expect(spans.map(\.parentID) == [Self.callerSpan, "b7ad6b7169203331"])
        #expect(spans.map { $0.attribute("orderpipeline.outcome") } == ["fulfilled", "duplicate (inbox)"])
    }

    @Test("the no-op tracer changes nothing: our own ids, messages and commands as they were")
    func noOpTracer() async throws {
        let store = Store()
        let shell = IntakeShell(store: store, logger: HTTPTestDatabase.logger, tracer: NoOpTracer())
        _ = await shell.createOrder(body: Array(johnSmith.utf8), idempotencyKey: nil, traceParent: TraceParent(Self.caller))
        let created = try #require(store.created)
        let trace = try #require(created.event.traceParent)
        #expect(trace.traceID == Self.traceID && trace.parentID != Self.callerSpan, "the caller's trace, continued by our own span id")

        let row = OutboxMessage(sequence: 1, event: created.event, attempts: 1)
        let broker = Broker()
        _ = await TracedPublisher(broker, outbox: .kafka, tracer: NoOpTracer()).publish([row])
        #expect(broker.sent.withLock { $0 } == [row])

        let record = ConsumedRecord(partition: 2, offset: 117, key: nil, headers: row.event.kafkaHeaders, value: row.event.payload)
        let command = try fulfil(record)
        let consumerStore = Store()
        _ = await TracedFulfilmentStore(consumerStore, tracer: NoOpTracer()).perform(command)
        #expect(consumerStore.commands.withLock { $0 } == [command])
        guard case .fulfil(let batch) = command, let fulfilment = batch.first else { Issue.record("\(command)"); return }
        #expect(fulfilment.fulfilmentEvent.traceParent == trace.child(derivedFrom: fulfilment.fulfilmentEvent.id.uuid), "the derived span id, as before")
    }
}
