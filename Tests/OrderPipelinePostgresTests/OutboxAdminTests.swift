import Foundation
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineTestSupport
import Testing

/// `orderpipeline outbox status | dead-letters | replay` against PostgreSQL (a fresh schema per test).
/// Serialized, one pooled connection: the whole test run shares PostgreSQL's 100 connections.
@Suite("Outbox admin: status, dead letters, replay", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .serialized, .timeLimit(.minutes(5)))
struct OutboxAdminTests {
    final class Fixture: Sendable {
        let store: PostgresStore
        let session: PostgresSession
        let drop: @Sendable () async -> Void

        init() async throws {
            await ConnectionGate.wait()
            let (settings, drop) = try await TestDatabase.freshSchema()
            var configuration = PostgresPool.Configuration(url: settings.url)
            configuration.connection = settings
            configuration.size = 1
            store = PostgresStore(configuration: configuration, logger: TestDatabase.logger)
            session = PostgresSession(settings: settings, logger: TestDatabase.logger, name: "pg-admin-test")
            self.drop = drop
        }

        func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws(PostgresError) -> T) async throws -> T {
            let result: Result<T, PostgresError> = await session.withConnection { connection in
                Result { () throws(PostgresError) in try body(try connection.get()) }
            }
            return try result.get()
        }

        func status(_ kind: OutboxKind) async throws -> OutboxAdmin.OutboxStatus {
            try await run { c throws(PostgresError) in try OutboxAdmin.status(c) }.first { $0.outbox == kind }!
        }

        func letters(all: Bool = false) async throws -> [OutboxAdmin.DeadLetterEntry] {
            try await run { c throws(PostgresError) in try OutboxAdmin.deadLetters(includeReplayed: all, limit: 100, c) }
        }

        func replay(_ id: Int64) async throws -> OutboxAdmin.ReplayResult {
            try await run { c throws(PostgresError) in try OutboxAdmin.replay(id: id, c) }
        }

        func count(_ sql: String) async throws -> Int {
            try await run { c throws(PostgresError) in Int(try c.query(sql).int(0, 0) ?? -1) }
        }

        func close() async {
            session.close()
            store.close()
            await drop()
        }
    }

    @Test("status counts pending rows, their age and the claims relays hold")
    func status() async throws {
        let f = try await Fixture()
        _ = await f.store.perform(.createOrders([newOrder(1)]))
        _ = await f.store.perform(.createOrders([newOrder(2)]))
        var kafka = try await f.status(.kafka)
        #expect(kafka.pending == 2)
        #expect(kafka.oldestPendingAgeSeconds >= 0)
        #expect(kafka.claims.isEmpty)
        #expect(try await f.status(.serviceBus).pending == 0)

        let held = await f.store.perform(claim(owner: "relay-a", limit: 1)).claimed  // lease until t0 + 31 s: in the future
        #expect(held.count == 1)
        kafka = try await f.status(.kafka)
        #expect(kafka.pending == 2)
        #expect(kafka.claims.map(\.owner) == ["relay-a"])
        #expect(kafka.claims.first?.rows == 1)
        #expect(kafka.claims.first?.expired == 0)
        await f.close()
    }

    @Test("a rejected outbox row is listed, replayed once (claimable again, due now), and listed again if rejected again")
    func replayOutboxRow() async throws {
        let f = try await Fixture()
        let x = newOrder(1)
        _ = await f.store.perform(.createOrders([x]))
        let head = await f.store.perform(claim(owner: "relay-a")).claimed
        let reject = OutboxSettlement(outbox: .kafka, owner: "relay-a", rejections: [.init(sequence: head[0].sequence, reason: "message too large")])
        #expect(await f.store.perform(.settleOutbox(reject)) == .committed(.settled(rows: 1)))

        #expect(try await f.status(.kafka).pending == 0)
        #expect(try await f.status(.kafka).deadLettered == 1)
        let letters = try await f.letters()
        #expect(letters.map(\.source) == ["kafka-outbox/\(head[0].sequence)"])
        #expect(letters.first?.reason == "message too large")
        #expect(letters.first?.payloadBytes == x.event.payload.count)
        #expect(letters.first?.replayedAt == nil)
        let id = letters[0].id

        #expect(try await f.replay(id) == .requeued(.kafka, sequence: head[0].sequence))
        #expect(try await f.status(.kafka).pending == 1)
        #expect(try await f.status(.kafka).deadLettered == 0)
        #expect(try await f.letters().isEmpty)
        #expect(try await f.letters(all: true).first?.replayedAt != nil)
        // Idempotent: a second replay changes nothing.
        guard case .alreadyReplayed = try await f.replay(id) else { Issue.record("second replay did something"); return }
        #expect(try await f.count("SELECT count(*) FROM kafka_outbox WHERE attempts = 0 AND dead_lettered_at IS NULL AND claimed_by IS NULL") == 1)

        // Claimable again (due now), with the same bytes; rejected again → listed again, replayable again.
        let again = await f.store.perform(claim(owner: "relay-b")).claimed
        #expect(again.map(\.sequence) == [head[0].sequence])
        #expect(again.first?.event.payload == x.event.payload)
        #expect(again.first?.attempts == 1)
        let reject2 = OutboxSettlement(outbox: .kafka, owner: "relay-b", rejections: [.init(sequence: head[0].sequence, reason: "still too large")])
        #expect(await f.store.perform(.settleOutbox(reject2)) == .committed(.settled(rows: 1)))
        let relisted = try await f.letters()
        #expect(relisted.map(\.id) == [id])
        #expect(relisted.first?.reason == "still too large")
        #expect(try await f.replay(id) == .requeued(.kafka, sequence: head[0].sequence))
        await f.close()
    }

    @Test("a rejected Service Bus outbox row is re-queued")
    func replayServiceBusRow() async throws {
        let f = try await Fixture()
        _ = await f.store.perform(.createOrders([newOrder(1)]))
        _ = await f.store.perform(.fulfil([created(1)]))
        let rows = await f.store.perform(claim(.serviceBus, owner: "relay-a")).claimed
        guard rows.count == 1 else { Issue.record("nothing claimed"); await f.close(); return }
        #expect(rows.map(\.event.type) == [.orderFulfilled])
        let reject = OutboxSettlement(outbox: .serviceBus, owner: "relay-a", rejections: [.init(sequence: rows[0].sequence, reason: "amqp:not-allowed")])
        #expect(await f.store.perform(.settleOutbox(reject)) == .committed(.settled(rows: 1)))
        #expect(try await f.status(.serviceBus).deadLettered == 1)
        let id = try await f.letters()[0].id
        #expect(try await f.replay(id) == .requeued(.serviceBus, sequence: rows[0].sequence))
        #expect(try await f.status(.serviceBus).pending == 1)
        await f.close()
    }

    @Test("poison records: still undecodable changes nothing; decodable is inserted into the Kafka outbox once, with its bytes")
    func replayPoison() async throws {
        let f = try await Fixture()
        let garbage = DeadLetter(source: "orders/2@117", reason: "payload is not a JSON object", payload: [0xFF, 0x00, 0x7B], at: at(1))
        let lost = newOrder(2).event  // decodes, not in the outbox
        let known = newOrder(3)  // decodes, its event is in the outbox already
        _ = await f.store.perform(.createOrders([known]))
        _ = await f.store.perform(.deadLetter(garbage))
        _ = await f.store.perform(.deadLetter(DeadLetter(source: "orders/0@5", reason: "consumer could not decode it then", payload: lost.payload, at: at(1))))
        _ = await f.store.perform(.deadLetter(DeadLetter(source: "orders/1@9", reason: "copy", payload: known.event.payload, at: at(1))))
        let letters = try await f.letters()
        #expect(letters.map(\.source) == ["orders/2@117", "orders/0@5", "orders/1@9"])
        #expect(letters.map(\.payloadBytes) == [3, lost.payload.count, known.event.payload.count])

        guard case .stillUndecodable = try await f.replay(letters[0].id) else { Issue.record("garbage replayed"); return }
        #expect(try await f.letters().count == 3)

        guard case .reinserted(let sequence, let event) = try await f.replay(letters[1].id) else { Issue.record("not reinserted"); return }
        #expect(event == lost.id)
        guard case .alreadyReplayed = try await f.replay(letters[1].id) else { Issue.record("replayed twice"); return }
        #expect(try await f.count("SELECT count(*) FROM kafka_outbox") == 2)
        let claimed = await f.store.perform(claim(owner: "relay-a")).claimed
        let reinserted = claimed.first { $0.sequence == sequence }
        #expect(reinserted?.event.payload == lost.payload)
        #expect(reinserted?.event.orderID == lost.orderID)
        #expect(reinserted?.event.type == .orderCreated)

        guard case .alreadyInOutbox(_, let knownEvent) = try await f.replay(letters[2].id) else { Issue.record("known event inserted"); return }
        #expect(knownEvent == known.event.id)
        #expect(try await f.count("SELECT count(*) FROM kafka_outbox") == 2)
        #expect(try await f.letters().map(\.source) == ["orders/2@117"])
        #expect(try await f.replay(999_999) == .notFound)
        await f.close()
    }
}
