import OrderPipelineCore
import OrderPipelineKafka
import OrderPipelineServiceBus

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Kafka and Service Bus settings of the `relay`, `consume` and `all` roles, from the environment.
public struct BrokerConfiguration: Sendable {
    /// `KAFKA_BROKERS`, `KAFKA_TOPIC` (default orders), `KAFKA_DEAD_LETTER_TOPIC` (default `<topic>.dead-letter`),
    /// `KAFKA_GROUP_ID` (default order-pipeline-consumer).
    public var kafka: KafkaConfiguration
    /// `SERVICEBUS_CONNECTION_STRING` and `SERVICEBUS_QUEUE` (default order-fulfilment).
    public var serviceBus: ServiceBusConfiguration?
    /// `RELAY_ID` — this process's relay identity (lease owner), stable across restarts; default
    /// `<gethostname()>-<role>` (not `$HOSTNAME`, which systemd and non-interactive shells do not export). Every
    /// relay process needs its own: a second live process with the same one is refused at start (`OwnerLock`).
    public var relayID: String
    /// `RELAY_OUTBOXES` (the `relay` role only) — the outboxes this process relays: `kafka`, `service-bus`, or both
    /// (the default: Kafka, and Service Bus when `SERVICEBUS_CONNECTION_STRING` is set). One process per outbox
    /// scales and fails apart from the other.
    public var relayOutboxes: [OutboxKind]

    public static let environmentHelp = """
        Kafka / Service Bus (relay, consume, all):
          KAFKA_BROKERS  host:port list (required), e.g. 127.0.0.1:59092
          KAFKA_TOPIC    order events topic (default orders)
          KAFKA_DEAD_LETTER_TOPIC
                         poison records (default <KAFKA_TOPIC>.dead-letter)
          KAFKA_GROUP_ID consumer group (default order-pipeline-consumer)
          KAFKA_PROPERTIES
                         extra librdkafka properties, name=value,name=value
                         (e.g. security.protocol=SASL_SSL,sasl.mechanism=PLAIN);
                         acks, enable.idempotence, enable.auto.commit,
                         enable.auto.offset.store, auto.offset.reset,
                         partition.assignment.strategy, isolation.level, … are
                         refused (the promise depends on them)
          SERVICEBUS_CONNECTION_STRING
                         amqp://user:pass@host:port, amqps://…, or an Azure
                         Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…
          SERVICEBUS_QUEUE
                         fulfilment queue (default order-fulfilment)
          RELAY_ID       lease owner of this relay process (default <hostname>-relay,
                         <hostname>-all); unique per live process: a second
                         process with the same RELAY_ID refuses to start
          RELAY_OUTBOXES outboxes `relay` relays: kafka, service-bus or
                         kafka,service-bus (default kafka, and service-bus when
                         SERVICEBUS_CONNECTION_STRING is set); `all` relays both
        """

    /// `role` names the subcommand (relay, all) in the default `RELAY_ID`.
    public static func fromEnvironment(
        _ environment: [String: String], needsServiceBus: Bool, role: String = "relay"
    ) throws(RuntimeConfiguration.Problem) -> BrokerConfiguration {
        guard let brokers = environment["KAFKA_BROKERS"], !brokers.isEmpty else {
            throw .init(description: "KAFKA_BROKERS is not set (e.g. 127.0.0.1:59092; `eval \"$(scripts/services up)\"` sets it)")
        }
        var kafka = KafkaConfiguration(brokers: brokers)
        if let topic = environment["KAFKA_TOPIC"], !topic.isEmpty {
            kafka.topic = topic
            kafka.deadLetterTopic = topic + ".dead-letter"
        }
        if let topic = environment["KAFKA_DEAD_LETTER_TOPIC"], !topic.isEmpty { kafka.deadLetterTopic = topic }
        if let group = environment["KAFKA_GROUP_ID"], !group.isEmpty { kafka.groupID = group }
        if let text = environment["KAFKA_PROPERTIES"], !text.isEmpty {
            do {
                kafka.extraProperties = try KafkaConfiguration.parseProperties(text)
            } catch {
                throw .init(description: error.message)
            }
        }
        var serviceBus: ServiceBusConfiguration?
        if let text = environment["SERVICEBUS_CONNECTION_STRING"], !text.isEmpty {
            do {
                var parsed = try ServiceBusConfiguration.parse(text)
                if let queue = environment["SERVICEBUS_QUEUE"], !queue.isEmpty { parsed.queue = queue }
                serviceBus = parsed
            } catch {
                throw .init(description: "SERVICEBUS_CONNECTION_STRING: \(error.message)")
            }
        } else if needsServiceBus {
            throw .init(description: "SERVICEBUS_CONNECTION_STRING is not set (e.g. amqp://guest:guest@127.0.0.1:55672)")
        }
        let relayID = environment["RELAY_ID"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(hostName())-\(role)"
        var outboxes: [OutboxKind] = serviceBus == nil ? [.kafka] : [.kafka, .serviceBus]
        if let text = environment["RELAY_OUTBOXES"], !text.isEmpty {
            guard role == "relay" else { throw .init(description: "RELAY_OUTBOXES is for `relay` only: `\(role)` relays both outboxes") }
            let names = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let known = OutboxKind.allCases.map(\.rawValue).joined(separator: ", ")
            outboxes = []
            for name in names {
                guard let kind = OutboxKind(rawValue: name) else { throw .init(description: "RELAY_OUTBOXES: \(name) is not an outbox (\(known))") }
                guard !outboxes.contains(kind) else { throw .init(description: "RELAY_OUTBOXES names \(name) twice") }
                outboxes.append(kind)
            }
            if outboxes.contains(.serviceBus), serviceBus == nil {
                throw .init(description: "RELAY_OUTBOXES includes service-bus but SERVICEBUS_CONNECTION_STRING is not set")
            }
        }
        return BrokerConfiguration(kafka: kafka, serviceBus: serviceBus, relayID: relayID, relayOutboxes: outboxes)
    }

    /// This machine's name from `gethostname()`.
    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}
