import Foundation
import OrderPipelineRuntime
import OrderPipelineServiceBus
import Testing

@Suite("Safe configuration: refusals, defaults, redaction")
struct SafeConfigurationTests {
    static let base = ["KAFKA_BROKERS": "127.0.0.1:59092"]

    func brokers(_ extra: [String: String], role: String = "relay") throws(RuntimeConfiguration.Problem) -> BrokerConfiguration {
        try BrokerConfiguration.fromEnvironment(Self.base.merging(extra) { $1 }, needsServiceBus: false, role: role)
    }

    @Test(
        "KAFKA_PROPERTIES may not override what the promise depends on, and names the property",
        arguments: [
            "acks=1", "request.required.acks=0", "enable.idempotence=false", "enable.auto.commit=true", "enable.auto.offset.store=true",
            "auto.offset.reset=latest", "partition.assignment.strategy=cooperative-sticky", "isolation.level=read_uncommitted",
            "security.protocol=SASL_SSL, Acks=all", "group.id=other",
        ])
    func protectedProperty(_ text: String) throws {
        let name = String(text.split(separator: ",").last!.split(separator: "=")[0]).trimmingCharacters(in: .whitespaces)
        #expect {
            _ = try brokers(["KAFKA_PROPERTIES": text])
        } throws: { error in
            let message = "\(error)"
            return message.contains("may not set \(name)") && !message.contains("=")
        }
    }

    @Test("a malformed KAFKA_PROPERTIES pair is reported by position, never echoed (it may hold a secret)")
    func malformedPair() throws {
        #expect {
            _ = try brokers(["KAFKA_PROPERTIES": "sasl.username=u,sasl.password=hunter2,hunter3"])
        } throws: { error in
            let message = "\(error)"
            return message.contains("pair 3") && !message.contains("hunter")
        }
        let fine = try brokers(["KAFKA_PROPERTIES": "security.protocol=SASL_SSL,sasl.password=a=b"])
        #expect(fine.kafka.extraProperties == ["security.protocol": "SASL_SSL", "sasl.password": "a=b"])
    }

    @Test("RELAY_ID defaults to gethostname() plus the role, not $HOSTNAME")
    func relayIDDefault() throws {
        var name = [CChar](repeating: 0, count: 256)
        #expect(gethostname(&name, 255) == 0)
        let host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #expect(try brokers(["HOSTNAME": "from-the-environment"]).relayID == "\(host)-relay")
        #expect(try brokers([:], role: "all").relayID == "\(host)-all")
        #expect(try brokers(["RELAY_ID": "relay-7"]).relayID == "relay-7")
    }

    @Test("RELAY_OUTBOXES picks the relay's outboxes; the default follows SERVICEBUS_CONNECTION_STRING; bad values are refused")
    func relayOutboxes() throws {
        let serviceBus = ["SERVICEBUS_CONNECTION_STRING": "amqp://guest:guest@127.0.0.1:55672"]
        #expect(try brokers([:]).relayOutboxes == [.kafka])
        #expect(try brokers(serviceBus).relayOutboxes == [.kafka, .serviceBus])
        #expect(try brokers(serviceBus.merging(["RELAY_OUTBOXES": "service-bus"]) { $1 }).relayOutboxes == [.serviceBus])
        #expect(try brokers(serviceBus.merging(["RELAY_OUTBOXES": "kafka"]) { $1 }).relayOutboxes == [.kafka])
        #expect(try brokers(serviceBus.merging(["RELAY_OUTBOXES": " service-bus , kafka"]) { $1 }).relayOutboxes == [.serviceBus, .kafka])
        let refusals: [([String: String], String, String)] = [
            (["RELAY_OUTBOXES": "service-bus"], "relay", "SERVICEBUS_CONNECTION_STRING is not set"),
            (["RELAY_OUTBOXES": "kafka,rabbit"], "relay", "rabbit is not an outbox (kafka, service-bus)"),
            (["RELAY_OUTBOXES": "kafka,kafka"], "relay", "names kafka twice"),
            (["RELAY_OUTBOXES": "kafka"], "all", "for `relay` only"),
        ]
        for (extra, role, message) in refusals {
            #expect {
                try brokers(extra, role: role)
            } throws: { error in
                (error as? RuntimeConfiguration.Problem)?.description.contains(message) == true
            }
        }
    }

    @Test("DB_QUEUE_LIMIT and DB_REQUEST_TIMEOUT_MS reach the pool; bad values are refused")
    func admissionSettings() throws {
        let url = ["DATABASE_URL": "postgres://u@h/db"]
        let defaults = try RuntimeConfiguration.fromEnvironment(url)
        #expect(defaults.pool.queueLimit == 256 && defaults.pool.requestTimeout == .seconds(3))
        let set = try RuntimeConfiguration.fromEnvironment(url.merging(["DB_QUEUE_LIMIT": "32", "DB_REQUEST_TIMEOUT_MS": "750"]) { $1 })
        #expect(set.pool.queueLimit == 32 && set.pool.requestTimeout == .milliseconds(750))
        for bad in [["DB_QUEUE_LIMIT": "0"], ["DB_QUEUE_LIMIT": "lots"], ["DB_REQUEST_TIMEOUT_MS": "-1"], ["DB_REQUEST_TIMEOUT_MS": ""]] {
            #expect(throws: RuntimeConfiguration.Problem.self) { try RuntimeConfiguration.fromEnvironment(url.merging(bad) { $1 }) }
        }
    }

    @Test("DB_CREATE_TRANSACTIONS and CREATE_BATCH_SIZE reach the intake (at most the pool's connections; waiting bounded by DB_QUEUE_LIMIT); bad values are refused")
    func groupCommitSettings() throws {
        let url = ["DATABASE_URL": "postgres://u@h/db"]
        let defaults = try RuntimeConfiguration.fromEnvironment(url).intake
        #expect(defaults.createsInFlight == 2 && defaults.maxCreateBatch == 64 && defaults.maxWaitingCreates == 256)
        let set = try RuntimeConfiguration.fromEnvironment(url.merging(["DB_CREATE_TRANSACTIONS": "4", "CREATE_BATCH_SIZE": "16", "DB_QUEUE_LIMIT": "40"]) { $1 }).intake
        #expect(set.createsInFlight == 4 && set.maxCreateBatch == 16 && set.maxWaitingCreates == 40)
        let small = try RuntimeConfiguration.fromEnvironment(url.merging(["DB_CREATE_TRANSACTIONS": "6", "DB_POOL_SIZE": "3"]) { $1 }).intake
        #expect(small.createsInFlight == 3, "never more create transactions than connections")
        for bad in [["DB_CREATE_TRANSACTIONS": "0"], ["DB_CREATE_TRANSACTIONS": "two"], ["CREATE_BATCH_SIZE": "0"], ["CREATE_BATCH_SIZE": "5000"]] {
            #expect(throws: RuntimeConfiguration.Problem.self) { try RuntimeConfiguration.fromEnvironment(url.merging(bad) { $1 }) }
        }
    }

    @Test(
        "passwords and keys are redacted in every connection-string form",
        arguments: [
            ("postgres://orders:s3cret@db.example:5432/orders", "postgres://orders:***@db.example:5432/orders"),
            ("postgresql://orders:s3cret@db.example/orders?sslmode=require&password=s3cret", "postgresql://orders:***@db.example/orders?sslmode=require&password=***"),
            ("host=db user=orders password=s3cret dbname=orders", "host=db user=orders password=*** dbname=orders"),
            ("host=db password='s3 cr\\'et' dbname=orders", "host=db password=*** dbname=orders"),
            ("amqp://guest:s3cret@127.0.0.1:5672", "amqp://guest:***@127.0.0.1:5672"),
            ("amqps://user:s3cret@broker.example", "amqps://user:***@broker.example"),
            (
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=s3cret+/==;EntityPath=q",
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=***;EntityPath=q"
            ),
            ("Endpoint=sb://ns/;SharedAccessSignature=SharedAccessSignature sr=x&sig=s3cret", "Endpoint=sb://ns/;SharedAccessSignature=***"),
            ("security.protocol=SASL_SSL,sasl.password=s3cret", "security.protocol=SASL_SSL,sasl.password=***"),
            ("postgres://orders@db/orders", "postgres://orders@db/orders"),
        ])
    func redaction(_ input: String, _ expected: String) {
        let redacted = Redaction.redact(input)
        #expect(redacted == expected)
        #expect(!redacted.contains("s3cret") && !redacted.contains("cr\\'et"))
    }

    @Test("SASL PLAIN without TLS only to this machine; amqps anywhere")
    func plainOnlyLocally() throws {
        #expect(throws: ServiceBusError.self) { try ServiceBusConfiguration.parse("amqp://user:pass@broker.example:5672") }
        #expect(throws: ServiceBusError.self) { try ServiceBusConfiguration.parse("amqp://user:pass@10.0.0.5") }
        for local in ["amqp://guest:guest@127.0.0.1:55672", "amqp://guest:guest@localhost", "amqp://guest:guest@[::1]:5672"] {
            #expect(try ServiceBusConfiguration.parse(local).isLoopback)
        }
        #expect(try ServiceBusConfiguration.parse("amqps://user:pass@broker.example").useTLS)
        // ANONYMOUS sends no secret: allowed anywhere.
        #expect(try !ServiceBusConfiguration.parse("amqp://broker.example").useTLS)
    }
}
