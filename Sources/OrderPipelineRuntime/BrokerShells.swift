import Logging
import OrderPipelineCore
import OrderPipelineKafka
import OrderPipelineServiceBus

/// Kafka and Service Bus settings of the `relay`, `consume` and `all` roles, from the environment.
public struct BrokerConfiguration: Sendable {
    /// `KAFKA_BROKERS`, `KAFKA_TOPIC` (default orders), `KAFKA_DEAD_LETTER_TOPIC` (default `<topic>.dead-letter`),
    /// `KAFKA_GROUP_ID` (default order-pipeline-consumer).
    public var kafka: KafkaConfiguration
    /// `SERVICEBUS_CONNECTION_STRING` and `SERVICEBUS_QUEUE` (default order-fulfilment).
    public var serviceBus: ServiceBusConfiguration?
    /// `RELAY_ID` — this process's relay identity (lease owner), stable across restarts; default `relay-<host>`.
    /// Every relay process needs its own.
    public var relayID: String

    public static let environmentHelp = """
        Kafka / Service Bus (relay, consume, all):
          KAFKA_BROKERS  host:port list (required), e.g. 127.0.0.1:59092
          KAFKA_TOPIC    order events topic (default orders)
          KAFKA_DEAD_LETTER_TOPIC
                         poison records (default <KAFKA_TOPIC>.dead-letter)
          KAFKA_GROUP_ID consumer group (default order-pipeline-consumer)
          KAFKA_PROPERTIES
                         extra librdkafka properties, name=value,name=value
                         (e.g. security.protocol=SASL_SSL,sasl.mechanism=PLAIN)
          SERVICEBUS_CONNECTION_STRING
                         amqp://user:pass@host:port, amqps://…, or an Azure
                         Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…
          SERVICEBUS_QUEUE
                         fulfilment queue (default order-fulfilment)
          RELAY_ID       lease owner of this relay process (default relay-<host>)
        """

    public static func fromEnvironment(_ environment: [String: String], needsServiceBus: Bool) throws(RuntimeConfiguration.Problem) -> BrokerConfiguration {
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
            for pair in text.split(separator: ",") {
                guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                    throw .init(description: "KAFKA_PROPERTIES must be name=value pairs separated by commas, not \(pair)")
                }
                kafka.extraProperties[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
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
        let host = environment["HOSTNAME"].flatMap { $0.isEmpty ? nil : $0 } ?? "local"
        let relayID = environment["RELAY_ID"].flatMap { $0.isEmpty ? nil : $0 } ?? "relay-\(host)"
        return BrokerConfiguration(kafka: kafka, serviceBus: serviceBus, relayID: relayID)
    }
}
