import Logging
import OrderPipelineCore
import OrderPipelineServiceBus

/// Receives messages from a queue and accepts them: what the tests read downstream with (the pipeline itself only
/// sends, so this is not in the production library).
public final class ServiceBusReceiver: Sendable {
    private let engine: AMQPEngine

    /// Opens a receiver link on `queue` (the configuration's queue by default) and calls `handler` with every message,
    /// on the engine's thread, before accepting it; at most `credit` messages are outstanding.
    public init(
        configuration: ServiceBusConfiguration, queue: String? = nil, credit: Int32 = 100, logger: Logger,
        handler: @escaping @Sendable (AMQPMessage) -> Void
    ) throws(ServiceBusError) {
        self.engine = try AMQPEngine(
            configuration: configuration, address: queue ?? configuration.queue, role: .receiver(credit: credit, handler: handler),
            logger: logger)
    }

    /// Whether the link is open.
    public var isReady: Bool { engine.isReady }

    public func shutdown() async { await engine.shutdown() }
}
