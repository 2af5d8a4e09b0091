import OrderPipelineCore
import Tracing

/// Spans at the pipeline's hops, through swift-distributed-tracing and whatever `Tracer` the process bootstrapped
/// (docs/TRACING.md): the API request (`IntakeShell`), each row a relay publishes (`TracedPublisher`) and the
/// consumer's fulfilment of a record (`TracedFulfilmentStore`).
///
/// The W3C ids we carry are the tracer's own when it propagates `traceparent` (a `Tracer` is an `Instrument`): a
/// hop's span continues the trace it was handed, and what it hands on is its own context. With a tracer that
/// writes no `traceparent` — the default no-op tracer — our own ids travel unchanged.
enum TraceCarrier {
    /// The context of a span that continues `trace` (none: a new trace), read through the tracer's instrument.
    static func context(continuing trace: TraceParent?, tracer: any Tracer, base: ServiceContext = .topLevel) -> ServiceContext {
        var context = base
        if let trace { tracer.extract(["traceparent": trace.description], into: &context, using: Headers()) }
        return context
    }

    /// `span`'s context as the `traceparent` the tracer writes, if it writes a valid one.
    static func traceParent(of span: any Span, tracer: any Tracer) -> TraceParent? {
        var carrier: [String: String] = [:]
        tracer.inject(span.context, into: &carrier, using: Headers())
        return carrier["traceparent"].flatMap { TraceParent($0) }
    }

    struct Headers: Extractor, Injector {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }
}

/// Attribute names: OpenTelemetry's messaging conventions where one fits, `orderpipeline.*` for ours.
enum SpanKey {
    static let orderID = "orderpipeline.order.id"
    static let eventType = "orderpipeline.event.type"
    static let outboxSequence = "orderpipeline.outbox.sequence"
    static let outboxAttempt = "orderpipeline.outbox.attempt"
    static let outcome = "orderpipeline.outcome"
    static let messageID = "messaging.message.id"
    static let system = "messaging.system"
    static let operation = "messaging.operation.type"
    static let partition = "messaging.destination.partition.id"
    static let offset = "messaging.kafka.offset"
}

/// A relay's publisher with a producer span per row. Per row, not per batch with links: each row belongs to
/// another order's trace, and the span's context is what the message carries on (Kafka header `traceparent`,
/// Service Bus properties), so the next hop is its child in that order's trace. A batch span would sit in a trace
/// of its own and could not be the parent of a hundred traces. Spans cost nothing with the no-op tracer (skipped).
public struct TracedPublisher: OutboxPublishing {
    let publisher: any OutboxPublishing
    let outbox: OutboxKind
    let tracer: any Tracer

    public init(_ publisher: any OutboxPublishing, outbox: OutboxKind, tracer: any Tracer = InstrumentationSystem.tracer) {
        self.publisher = publisher
        self.outbox = outbox
        self.tracer = tracer
    }

    public func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        if tracer is NoOpTracer { return await publisher.publish(messages) }
        let (name, system) = outbox == .kafka ? ("send \(Channel.orders.rawValue)", "kafka") : ("send \(Channel.fulfilment.rawValue)", "servicebus")
        var sent = messages
        var spans: [any Span] = []
        for index in sent.indices {
            let event = sent[index].event
            let span = tracer.startSpan(name, context: TraceCarrier.context(continuing: event.traceParent, tracer: tracer), ofKind: .producer)
            span.attributes[SpanKey.system] = system
            span.attributes[SpanKey.operation] = "send"
            span.attributes[SpanKey.messageID] = event.id.description
            span.attributes[SpanKey.orderID] = event.orderID.description
            span.attributes[SpanKey.eventType] = event.type.rawValue
            span.attributes[SpanKey.outboxSequence] = Int(sent[index].sequence)
            span.attributes[SpanKey.outboxAttempt] = sent[index].attempts
            if let own = TraceCarrier.traceParent(of: span, tracer: tracer) { sent[index].event.traceParent = own }
            spans.append(span)
        }
        let outcomes = await publisher.publish(sent)
        for (index, span) in spans.enumerated() {
            switch index < outcomes.count ? outcomes[index] : .unknown("no outcome") {
            case .delivered:
                span.attributes[SpanKey.outcome] = "delivered"
            case .appended(let position):
                span.attributes[SpanKey.outcome] = "delivered"
                span.attributes[SpanKey.partition] = "\(position.partition)"
                span.attributes[SpanKey.offset] = Int(position.offset)
            case .failed(let retriable, let reason):
                span.attributes[SpanKey.outcome] = retriable ? "failed-retriable" : "failed"
                span.setStatus(SpanStatus(code: .error, message: reason))
            case .unknown(let reason):
                span.attributes[SpanKey.outcome] = "unknown"
                span.setStatus(SpanStatus(code: .error, message: reason))
            case .refused(let condition, _):
                span.attributes[SpanKey.outcome] = "refused"
                span.setStatus(SpanStatus(code: .error, message: condition))
            case .sessionUnusable(let reason):
                span.attributes[SpanKey.outcome] = "session-unusable"
                span.setStatus(SpanStatus(code: .error, message: reason))
            }
            span.end()
        }
        return outcomes
    }

    /// The relay's decision reaches the wrapped publisher (the Kafka producer recreates its session).
    public func reset() { publisher.reset() }
}

/// A store whose `.fulfil` (the consumer's transaction over a batch of records) runs with a consumer span per
/// record, child of that record's trace (per record, as the relay's spans are per row: each belongs to another
/// order's trace); the Service Bus outbox row a record writes carries its span's context. Other commands pass
/// straight through, and everything does with the no-op tracer.
public struct TracedFulfilmentStore: StorePerforming {
    let store: any StorePerforming
    let tracer: any Tracer

    public init(_ store: any StorePerforming, tracer: any Tracer = InstrumentationSystem.tracer) {
        self.store = store
        self.tracer = tracer
    }

    public func perform(_ command: StoreCommand) async -> StoreResult {
        guard case .fulfil(var batch) = command, !(tracer is NoOpTracer) else { return await store.perform(command) }
        var spans: [any Span] = []
        for index in batch.indices {
            let fulfilment = batch[index]
            let context = TraceCarrier.context(continuing: fulfilment.consumedTrace, tracer: tracer)
            let span = tracer.startSpan("process \(Channel.orders.rawValue)", context: context, ofKind: .consumer)
            span.attributes[SpanKey.system] = "kafka"
            span.attributes[SpanKey.operation] = "process"
            span.attributes[SpanKey.messageID] = fulfilment.envelope.id.description
            span.attributes[SpanKey.orderID] = fulfilment.envelope.orderID.description
            span.attributes[SpanKey.eventType] = fulfilment.envelope.type.rawValue
            if let position = fulfilment.consumedFrom {
                span.attributes[SpanKey.partition] = "\(position.partition)"
                span.attributes[SpanKey.offset] = Int(position.offset)
            }
            if let own = TraceCarrier.traceParent(of: span, tracer: tracer) { batch[index].fulfilmentEvent.traceParent = own }
            spans.append(span)
        }
        let result = await store.perform(.fulfil(batch))
        for (index, span) in spans.enumerated() {
            switch result {
            case .committed(.fulfilments(let outcomes)) where index < outcomes.count:
                span.attributes[SpanKey.outcome] = outcomes[index].summary
            case .committed(let reply):
                span.attributes[SpanKey.outcome] = reply.summary
            case .failed(let failure):
                span.attributes[SpanKey.outcome] = "failed"
                span.setStatus(SpanStatus(code: .error, message: failure.spanMessage))
            case .unknown:
                span.attributes[SpanKey.outcome] = "unknown"
                span.setStatus(SpanStatus(code: .error, message: "the commit's outcome is unknown"))
            }
            span.end()
        }
        return result
    }

    /// Straight through when no span is due; otherwise the spans' work runs in a task (`perform`).
    public func perform(_ command: StoreCommand, then completion: @escaping @Sendable (StoreResult) -> Void) {
        guard case .fulfil = command, !(tracer is NoOpTracer) else { return store.perform(command, then: completion) }
        Task { completion(await perform(command)) }
    }
}

extension StoreFailure {
    /// What a span says of a failed transaction: its kind, not the driver's text (which may name hosts or users).
    var spanMessage: String {
        switch self {
        case .unavailable: "database unavailable"
        case .timedOut: "timed out"
        case .conflict: "conflict"
        }
    }
}
