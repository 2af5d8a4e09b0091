import ArgumentParser
import Foundation
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime

/// `orderpipeline outbox status | dead-letters | replay ID` — operator views of both outboxes and the dead letters.
struct Outbox: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect the outboxes and the dead letters; replay a dead letter.",
        discussion: RuntimeConfiguration.environmentHelp,
        subcommands: [OutboxStatusCommand.self, DeadLettersCommand.self, ReplayCommand.self]
    )

    /// Runs `body` on one connection of its own (not a pool), then closes it.
    static func withConnection<T: Sendable>(
        _ name: String, _ body: @escaping @Sendable (PostgresConnection) throws(PostgresError) -> T
    ) async throws -> T {
        let configuration = try Bootstrap.configuration()
        let logger = Bootstrap.logger("orderpipeline.outbox", level: configuration.logLevel)
        var settings = configuration.pool.connection
        settings.applicationName = "orderpipeline-outbox-\(name)"
        let session = PostgresSession(settings: settings, logger: logger, name: "pg-outbox")
        defer { session.close() }
        let result: Result<T, PostgresError> = await session.withConnection { connection in
            Result { () throws(PostgresError) in try body(try connection.get()) }
        }
        switch result {
        case .success(let value): return value
        case .failure(let error):
            logger.error("Database error", metadata: ["db.error": "\(error)", "db.url": "\(configuration.redactedDatabaseURL)"])
            throw ExitCode.failure
        }
    }

    static func age(_ seconds: Double) -> String {
        if seconds < 1 { return String(format: "%.0f ms", seconds * 1000) }
        if seconds < 120 { return String(format: "%.1f s", seconds) }
        if seconds < 7200 { return String(format: "%.1f min", seconds / 60) }
        return String(format: "%.1f h", seconds / 3600)
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}

struct OutboxStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Pending rows and the oldest unpublished age of both outboxes, and the claims relays hold."
    )

    func run() async throws {
        let statuses = try await Outbox.withConnection("status") { c throws(PostgresError) in try OutboxAdmin.status(c) }
        print(Outbox.pad("outbox", 13) + Outbox.pad("pending", 9) + Outbox.pad("retrying", 10) + Outbox.pad("oldest pending", 16) + "dead-lettered")
        for status in statuses {
            print(
                Outbox.pad(status.outbox.rawValue, 13) + Outbox.pad("\(status.pending)", 9) + Outbox.pad("\(status.retrying)", 10)
                    + Outbox.pad(status.pending == 0 ? "-" : Outbox.age(status.oldestPendingAgeSeconds), 16) + "\(status.deadLettered)")
        }
        let claims = statuses.flatMap { status in status.claims.map { (status.outbox, $0) } }
        if claims.isEmpty {
            print("\nNo claimed rows.")
        } else {
            print("\nClaimed rows:")
            print(Outbox.pad("outbox", 13) + Outbox.pad("owner", 32) + Outbox.pad("rows", 6) + Outbox.pad("expired", 9) + "lease until")
            for (kind, claim) in claims {
                print(
                    Outbox.pad(kind.rawValue, 13) + Outbox.pad(claim.owner, 32) + Outbox.pad("\(claim.rows)", 6)
                        + Outbox.pad("\(claim.expired)", 9) + claim.leaseUntil)
            }
        }
    }
}

struct DeadLettersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead-letters",
        abstract: "List the dead letters (source, reason, time, payload size; never the payload), oldest first."
    )

    @Flag(name: .customLong("all"), help: "Include dead letters already replayed.")
    var includeReplayed = false

    @Option(help: "At most this many.")
    var limit = 100

    func run() async throws {
        let includeReplayed = self.includeReplayed
        let limit = max(1, limit)
        let letters = try await Outbox.withConnection("dead-letters") { c throws(PostgresError) in
            try OutboxAdmin.deadLetters(includeReplayed: includeReplayed, limit: limit, c)
        }
        guard !letters.isEmpty else {
            print(includeReplayed ? "No dead letters." : "No dead letters waiting (--all lists replayed ones too).")
            return
        }
        print(
            Outbox.pad("id", 8) + Outbox.pad("source", 28) + Outbox.pad("at", 31) + Outbox.pad("bytes", 8)
                + (includeReplayed ? Outbox.pad("replayed at", 31) : "") + "reason")
        for letter in letters {
            let reason = String(letter.reason.map { $0.isNewline ? " " : $0 }.prefix(200))
            print(
                Outbox.pad("\(letter.id)", 8) + Outbox.pad(letter.source, 28) + Outbox.pad(letter.at, 31) + Outbox.pad("\(letter.payloadBytes)", 8)
                    + (includeReplayed ? Outbox.pad(letter.replayedAt ?? "-", 31) : "") + reason)
        }
    }
}

struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay one dead letter (by the id `dead-letters` shows).",
        discussion: """
            An outbox row (source kafka-outbox/N or service-bus-outbox/N) becomes claimable again: no longer
            dead-lettered, attempts reset, due now; the relays are notified. A poison record (source
            topic/partition@offset) is decoded again; if it decodes now, its event is inserted into the Kafka
            outbox with the record's exact bytes (not again if that event is already there). Idempotent: replaying
            the same dead letter again changes nothing. Exit status 1 when nothing could be replayed.
            """
    )

    @Argument(help: "The dead letter's id.")
    var id: Int64

    func run() async throws {
        let id = self.id
        let result = try await Outbox.withConnection("replay") { c throws(PostgresError) in try OutboxAdmin.replay(id: id, c) }
        print("Dead letter \(id): \(result)")
        switch result {
        case .requeued, .reinserted, .alreadyInOutbox, .alreadyReplayed: return
        case .notFound, .outboxRowNotDeadLettered, .stillUndecodable: throw ExitCode.failure
        }
    }
}
