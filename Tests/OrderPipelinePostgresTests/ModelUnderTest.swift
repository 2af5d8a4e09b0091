import OrderPipelineCore
import OrderPipelineSimulation

/// The simulator's PostgreSQL model under the same contract as PostgreSQL. The model performs every transaction
/// atomically at one instant, so it has no open transactions: behaviours about them (SKIP LOCKED between open
/// transactions, killed sessions) run against PostgreSQL only (`Implementation.transactional`).
actor ModelUnderTest: StoreUnderTest {
    private let model = PostgresModel()

    func perform(_ command: StoreCommand) async -> StoreResult { .committed(model.perform(command).reply) }

    nonisolated func openSession() async throws -> any SessionUnderTest {
        throw ModelHasNoSessions()
    }

    func transitions(of order: OrderID) async throws -> [StatusChange] {
        model.transitions.filter { $0.orderID == order }.map { StatusChange(from: $0.from, to: $0.to) }
    }

    func deadLetterSources() async throws -> [String] { model.deadLetters.map(\.source).sorted() }

    func advanceClock(by seconds: Double) async throws { model.now = model.now + .microseconds(Int64(seconds * 1_000_000)) }

    func tearDown() async {}
}

struct ModelHasNoSessions: Error, CustomStringConvertible {
    var description: String { "the model performs transactions atomically: it has no second session" }
}
