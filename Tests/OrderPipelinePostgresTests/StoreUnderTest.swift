import OrderPipelineCore

/// What the store contract suite needs from an implementation: the real PostgreSQL adapter, and the simulator's
/// PostgreSQL model. Each instance is a fresh, empty database of its own.
protocol StoreUnderTest: Sendable {
    /// Performs one command as one transaction on the store's own session.
    func perform(_ command: StoreCommand) async -> StoreResult
    /// A second, independent session (connection) on the same database.
    func openSession() async throws -> any SessionUnderTest
    /// Every status transition recorded for the order, oldest first; creation is `(nil, .pending)`.
    func transitions(of order: OrderID) async throws -> [StatusChange]
    /// The `source` of every dead-letter row, sorted.
    func deadLetterSources() async throws -> [String]
    /// Moves the database's clock forward by `seconds`: leases expire and retries come due as if that much time had
    /// passed (PostgreSQL: every stored due time, lease and publication time moves back by as much; the model: its clock
    /// moves on).
    func advanceClock(by seconds: Double) async throws
    /// Frees what the instance holds (connections, a test schema).
    func tearDown() async
}

protocol SessionUnderTest: Sendable {
    func perform(_ command: StoreCommand) async -> StoreResult
    /// Runs the command's transaction up to, not including, COMMIT and leaves it open, holding its row locks;
    /// answers what it would answer. Nothing of it is visible to other sessions.
    func performHoldingOpen(_ command: StoreCommand) async -> StoreResult
    /// The session dies as if its process crashed: an open transaction rolls back, its locks are released.
    func kill() async
}

struct StatusChange: Hashable, Sendable, CustomStringConvertible {
    var from: OrderStatus?
    var to: OrderStatus
    var description: String { "\(from?.rawValue ?? "∅")→\(to.rawValue)" }
}
