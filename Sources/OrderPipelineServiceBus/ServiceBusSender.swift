import Logging
import OrderPipelineCore

/// The Service Bus relay's broker side: performs `.publish(_, .fulfilment, rows)` over AMQP 1.0.
///
/// Each row becomes one message: `message-id` = the event id (the derived MessageId that duplicate detection keys
/// on), `subject` = the event type, `content-type` = `application/json`, application properties `orderId` and
/// `eventType` (and, when the row has a trace, `traceparent` and `Diagnostic-Id`, both the W3C value, as Azure SDKs
/// send them), the event JSON as the body. Outcomes come from the dispositions: accepted → `.delivered`;
/// rejected → `.refused` with its condition, which the relay machine judges (`Refusal`: server-busy, quota, an
/// expired token are retried; message too large, entity missing are dead-lettered); released / modified → a
/// retriable failure; no disposition
/// in time (or the connection lost meanwhile) → `.unknown`. The messages of a batch are handed to the engine at once
/// and answered together when the last disposition is in (`AMQPEngine.send`).
public final class ServiceBusSender: Sendable {
    public let configuration: ServiceBusConfiguration
    private let engine: AMQPEngine
    private let logger: Logger

    /// Starts the connection (on its own thread; it connects and reconnects in the background).
    /// - Throws: `ServiceBusError` when the configuration is unsafe (`checkTransportSecurity`) or TLS cannot be set up.
    public convenience init(configuration: ServiceBusConfiguration, logger: Logger) throws(ServiceBusError) {
        try self.init(configuration: configuration, logger: logger, tls: .standard)
    }

    /// `tls`: how TLS is set up (tests make it fail, to see that nothing goes out in plaintext).
    init(configuration: ServiceBusConfiguration, logger: Logger, tls: TLSSetup) throws(ServiceBusError) {
        self.configuration = configuration
        self.logger = logger
        self.engine = try AMQPEngine(configuration: configuration, address: configuration.queue, role: .sender, logger: logger, tls: tls)
        logger.info(
            "Service Bus sender started",
            metadata: [
                "servicebus.endpoint": "\(configuration.redactedDescription)", "servicebus.queue": "\(configuration.queue)",
            ])
    }

    /// The AMQP message for an outbox row.
    public static func message(for event: PipelineEvent) -> AMQPMessage {
        var properties = ["orderId": event.orderID.description, "eventType": event.type.rawValue]
        if let trace = event.traceParent {
            properties["traceparent"] = trace.description
            properties["Diagnostic-Id"] = trace.description
        }
        return AMQPMessage(
            messageID: event.id.description,
            subject: event.type.rawValue,
            contentType: "application/json",
            applicationProperties: properties,
            body: event.payload
        )
    }

    /// One outcome per message, in order.
    public func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        let outcomes = await engine.send(messages.map { Self.message(for: $0.event).encoded() })
        for (message, outcome) in zip(messages, outcomes) {
            let event = message.event
            if outcome == .delivered {
                logger.debug(
                    "Fulfilment event published to Service Bus",
                    metadata: [
                        "order.id": "\(event.orderID)", "servicebus.message_id": "\(event.id)", "servicebus.queue": "\(configuration.queue)",
                    ])
            } else {
                logger.warning(
                    "Service Bus send did not succeed",
                    metadata: [
                        "order.id": "\(event.orderID)", "servicebus.message_id": "\(event.id)", "servicebus.outcome": "\(outcome)",
                    ])
            }
        }
        return outcomes
    }

    /// Sends raw messages (tests, tools).
    public func send(_ message: AMQPMessage) async -> PublishOutcome {
        await engine.send(message.encoded())
    }

    /// Closes the connection; sends still in flight end as unknown outcomes.
    public func shutdown() async { await engine.shutdown() }
}
