import CRdKafka
import Foundation

/// How the adapter reaches Kafka. Defaults suit the local Tansu broker (`scripts/services`) and a real cluster.
public struct KafkaConfiguration: Sendable, Hashable {
    /// `KAFKA_BROKERS` — `host:port[,host:port…]`.
    public var brokers: String
    /// `KAFKA_TOPIC` — the order events (key = order id).
    public var topic = "orders"
    /// `KAFKA_DEAD_LETTER_TOPIC` — poison records, copied as they were.
    public var deadLetterTopic = "orders.dead-letter"
    /// `KAFKA_GROUP_ID` — the fulfilment consumers' group.
    public var groupID = "order-pipeline-consumer"
    /// `client.id` prefix; the adapter appends the role.
    public var clientID = "orderpipeline"
    /// Producer: a message not acknowledged within this time is reported as an unknown outcome.
    public var messageTimeout: Duration = .seconds(10)
    /// `linger.ms` of the producer that sends batches of one message: nothing else is coming, so it goes at once.
    public var lingerMilliseconds = 0.0
    /// `linger.ms` of a second producer that sends batches of several messages (0: one producer sends everything).
    /// A batch is handed over message by message, and with no linger librdkafka's broker thread sent a partition's
    /// first messages before the rest had arrived: 5.3 produce requests per 10-message batch on 3 partitions,
    /// against 2.9 (one per partition) with 0.5 ms, whose batches were also acknowledged sooner (p50 2.7 against
    /// 3.2 ms). A lone message would wait out the linger (about 1 ms: librdkafka's timers count whole
    /// milliseconds), hence the two producers (docs/BROKERS.md).
    public var batchLingerMilliseconds = 0.5
    /// Consumer group timings. Tansu holds a join for about the rebalance timeout: these make it ~3 s instead of 23 s.
    /// The adapter polls on its own thread at least every 100 ms whatever the fulfilment machine does, so a short
    /// `max.poll.interval.ms` does not depend on how fast that works.
    public var sessionTimeoutMilliseconds = 6_000
    public var heartbeatIntervalMilliseconds = 1_000
    public var maxPollIntervalMilliseconds = 7_000
    /// `fetch.wait.max.ms`: Tansu answers a fetch only when this expires (not when data arrives), so it bounds
    /// the consumer's latency there (500, librdkafka's default, gave a create→fulfilled p50 of 186 ms; 5 gave
    /// 16 ms). A real Kafka broker answers as soon as data arrives; a low value only costs idle fetch requests.
    public var fetchWaitMaxMilliseconds = 10
    /// How long a `.fetch` waits for records before answering with an empty batch.
    public var fetchWait: Duration = .milliseconds(500)
    /// `queued.max.messages.kbytes` of the consumer: librdkafka's prefetch, per assigned partition (each has a
    /// queue of its own). 4 MB is thousands of records, more than a drain takes between two fetches, and bounds
    /// memory when the machine falls behind.
    public var consumerPrefetchKilobytes = 4_096
    /// Further librdkafka properties, applied last (e.g. `security.protocol`, `sasl.*`); never one of
    /// `protectedProperties` (`parseProperties` refuses them).
    public var extraProperties: [String: String] = [:]

    /// - Parameter brokers: `bootstrap.servers`, e.g. `127.0.0.1:9092`; every other setting has its default.
    public init(brokers: String) {
        self.brokers = brokers
    }

    /// The librdkafka version loaded at run time (2.16 from `$RDKAFKA_LIB_DIR` for Tansu; Debian's 2.0.2 cannot talk to it).
    public static var librdkafkaVersion: String { String(cString: rd_kafka_version_str()) }
}

extension KafkaConfiguration {
    /// The librdkafka properties the promise depends on (aliases included), and why; `KAFKA_PROPERTIES` may not
    /// set them.
    public static let protectedProperties: [String: String] = {
        let acks = "the relay marks a row published only once every in-sync replica has it (acks all)"
        let commit = "offsets are committed by the consumer only after the fulfilment transaction"
        let assignment = "the consumer is written for eager rebalancing with the range assignor"
        return [
            "acks": acks, "request.required.acks": acks,
            "enable.idempotence": "producer retries must neither duplicate nor reorder an order's events",
            "enable.auto.commit": commit, "auto.commit.enable": commit, "enable.auto.offset.store": commit,
            "auto.offset.reset": "a new consumer group must start from the earliest record, or orders are skipped",
            "partition.assignment.strategy": assignment, "group.protocol": assignment, "group.remote.assignor": assignment,
            "isolation.level": "the consumer reads with librdkafka's default isolation",
            "transactional.id": "the producer is idempotent, not transactional",
            "group.id": "set KAFKA_GROUP_ID instead",
            "bootstrap.servers": "set KAFKA_BROKERS instead", "metadata.broker.list": "set KAFKA_BROKERS instead",
        ]
    }()

    /// `name=value,name=value` (`KAFKA_PROPERTIES`). A malformed pair is named by its position only and a refused
    /// property by its name only: values may be secrets (`sasl.password`).
    public static func parseProperties(_ text: String) throws(KafkaError) -> [String: String] {
        var properties: [String: String] = [:]
        for (index, pair) in text.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
            let trimmed = pair.trimmingCharacters(in: .whitespaces)
            guard let equals = trimmed.firstIndex(of: "="), equals != trimmed.startIndex else {
                throw KafkaError(code: .configuration, message: "KAFKA_PROPERTIES must be name=value pairs separated by commas; pair \(index + 1) is not")
            }
            let name = trimmed[..<equals].trimmingCharacters(in: .whitespaces)
            if let reason = protectedProperties[name.lowercased()] {
                throw KafkaError(code: .configuration, message: "KAFKA_PROPERTIES may not set \(name): \(reason)")
            }
            properties[name] = String(trimmed[trimmed.index(after: equals)...])
        }
        return properties
    }
}

/// An adapter error: what kind, and what happened (never a C type). The same shape as `PostgresError` and
/// `ServiceBusError`.
public struct KafkaError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure.
    /// Opaque, as swift-service-lifecycle's and postgres-nio's error codes: a kind can be added without breaking a
    /// caller's `switch` (compare with `==` or match `case .unavailable:` with a `default`).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: String, Hashable, Sendable { case configuration, client }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// A setting librdkafka or this adapter refuses (`KAFKA_PROPERTIES`, a property librdkafka does not know).
        public static let configuration = Code(.configuration)
        /// librdkafka could not create the client, or the consumer could not subscribe.
        public static let client = Code(.client)

        public var description: String { kind.rawValue }
    }

    public var code: Code
    /// librdkafka's error code (`rd_kafka_resp_err_t`), when it gave one.
    public var librdkafkaCode: Int32?
    /// What happened, for logs and operators.
    public var message: String

    /// - Parameters:
    ///   - code: What kind of failure.
    ///   - librdkafkaCode: librdkafka's error code, when it gave one.
    ///   - message: What happened.
    public init(code: Code, librdkafkaCode: Int32? = nil, message: String) {
        self.code = code
        self.librdkafkaCode = librdkafkaCode
        self.message = message
    }

    public var description: String { "Kafka \(code) error: \(message)" }
}

/// Owns a `rd_kafka_conf_t` until it is handed to `rd_kafka_new` (which takes ownership on success).
final class KafkaConf {
    private(set) var handle: OpaquePointer?

    init() { handle = rd_kafka_conf_new() }

    deinit {
        if let handle { rd_kafka_conf_destroy(handle) }
    }

    func set(_ name: String, _ value: String) throws(KafkaError) {
        var error = [CChar](repeating: 0, count: 512)
        let result = rd_kafka_conf_set(handle, name, value, &error, error.count)
        guard result == RD_KAFKA_CONF_OK else {
            throw KafkaError(code: .configuration, message: "\(name): \(errorText(error))")
        }
    }

    /// Sets a property an older librdkafka may not know (then it keeps its behaviour); other refusals throw.
    func setIfKnown(_ name: String, _ value: String) throws(KafkaError) {
        var error = [CChar](repeating: 0, count: 512)
        let result = rd_kafka_conf_set(handle, name, value, &error, error.count)
        guard result == RD_KAFKA_CONF_OK || result == RD_KAFKA_CONF_UNKNOWN else {
            throw KafkaError(code: .configuration, message: "\(name): \(errorText(error))")
        }
    }

    /// Gives up ownership (after a successful `rd_kafka_new`).
    func release() -> OpaquePointer? {
        defer { handle = nil }
        return handle
    }
}

func errorText(_ code: rd_kafka_resp_err_t) -> String { String(cString: rd_kafka_err2str(code)) }

/// The text librdkafka wrote into an error buffer (NUL-terminated).
func errorText(_ buffer: [CChar]) -> String { String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
