import OrderPipelineCore
import OrderPipelineTestSupport
import Testing

/// The intake's group commit: creates beyond the transactions in flight wait and share the next transaction, and
/// every request still gets exactly one answer, after the commit that wrote its order.
@Suite struct IntakeGroupCommitTests {
    func intake(inFlight: Int, waiting: Int = 256, unknownAttempts: Int = 3) -> OrderIntake {
        var configuration = OrderIntake.Configuration()
        configuration.createsInFlight = inFlight
        configuration.maxWaitingCreates = waiting
        configuration.maxUnknownAttempts = unknownAttempts
        return OrderIntake(configuration: configuration)
    }

    func create(_ n: UInt64, key: String? = nil) -> Input {
        .createOrder(RequestID(n), body: seedBody, idempotencyKey: key ?? "key-\(n)", newOrderID: Sample.orderID(n))
    }

    /// The orders of each create transaction the effects start, by order number.
    func batches(_ effects: [Effect]) -> [(Ticket, [NewOrder])] {
        stores(effects).compactMap { ticket, command in
            if case .createOrders(let batch) = command { (ticket, batch) } else { nil }
        }
    }

    func numbers(_ batch: [NewOrder]) -> [UInt64] { batch.map { new in (1...99).first { Sample.orderID($0) == new.order.id } ?? 0 } }

    func answered(_ effects: [Effect]) -> [RequestID] {
        effects.compactMap { if case .respond(let request, _) = $0 { request } else { nil } }
    }

    func created(_ batch: [NewOrder]) -> StoreResult { .committed(.ordersCreated(batch.map { .created($0.order) })) }

    @Test func createsBeyondTheTransactionsInFlightWaitAndShareTheNextOne() throws {
        var intake = intake(inFlight: 2)
        let (first, one) = try #require(batches(intake.handle(create(1), now: t0)).first)
        let (second, two) = try #require(batches(intake.handle(create(2), now: t0)).first)
        #expect(numbers(one) == [1] && numbers(two) == [2], "at low load a create waits for nothing")
        for n: UInt64 in 3...5 { #expect(intake.handle(create(n), now: t0).isEmpty, "both transactions are busy: \(n) waits") }
        #expect(intake.inFlight == 5)

        let done = intake.handle(.stored(first, created(one)), now: t0)
        #expect(answered(done) == [1])
        let (third, shared) = try #require(batches(done).first)
        #expect(numbers(shared) == [3, 4, 5], "the next transaction takes every create that waited, oldest first")
        #expect(batches(intake.handle(.stored(second, created(two)), now: t0)).isEmpty)
        let last = intake.handle(.stored(third, created(shared)), now: t0)
        #expect(answered(last) == [3, 4, 5])
        #expect(responses(last) == shared.map { .created($0.order) })
        #expect(intake.inFlight == 0)
    }

    @Test func twoCreatesWithOneKeyNeverShareATransaction() throws {
        var intake = intake(inFlight: 1)
        let (ticket, first) = try #require(batches(intake.handle(create(1), now: t0)).first)
        _ = intake.handle(create(2, key: "same"), now: t0)
        _ = intake.handle(create(3, key: "same"), now: t0)
        _ = intake.handle(create(4), now: t0)
        let (next, batch) = try #require(batches(intake.handle(.stored(ticket, created(first)), now: t0)).first)
        #expect(numbers(batch) == [2, 4])
        let (_, after) = try #require(batches(intake.handle(.stored(next, created(batch)), now: t0)).first)
        #expect(numbers(after) == [3], "the second request with the key goes next, where it finds the first one's order")
    }

    @Test func anUnknownOutcomePutsTheBatchFirstInLineUntilItsAttemptsAreUsed() throws {
        var intake = intake(inFlight: 1, unknownAttempts: 2)
        let (ticket, first) = try #require(batches(intake.handle(create(1), now: t0)).first)
        _ = intake.handle(create(2), now: t0)
        let again = intake.handle(.stored(ticket, .unknown), now: t0)
        #expect(again.contains(.note(.unknownOutcome("intake"))))
        let (retry, batch) = try #require(batches(again).first)
        #expect(numbers(batch) == [1, 2], "the re-issued create first, the one that waited with it")
        #expect(batch.first == first.first, "the same order, idempotent on its key")
        let given = intake.handle(.stored(retry, .unknown), now: t0)
        #expect(answered(given) == [1], "order 1 has used its attempts")
        #expect(responses(given) == [.unavailable(OrderIntake.unconfirmed)])
        #expect(batches(given).map { numbers($0.1) } == [[2]], "order 2 has one attempt left")
    }

    @Test func aFailedTransactionAnswersEveryRequestOfItsBatch() throws {
        var intake = intake(inFlight: 1)
        let (ticket, first) = try #require(batches(intake.handle(create(1), now: t0)).first)
        _ = intake.handle(create(2), now: t0)
        _ = intake.handle(create(3), now: t0)
        let (next, batch) = try #require(batches(intake.handle(.stored(ticket, created(first)), now: t0)).first)
        let failed = intake.handle(.stored(next, .failed(.timedOut)), now: t0)
        #expect(answered(failed) == [2, 3])
        #expect(responses(failed) == Array(repeating: .unavailable("the database did not answer in time"), count: batch.count))
        #expect(intake.inFlight == 0)
    }

    @Test func aTimedOutTransactionAnswersTheCreatesWaitingBehindItAtOnce() throws {
        var intake = intake(inFlight: 1)
        let (ticket, _) = try #require(batches(intake.handle(create(1), now: t0)).first)
        _ = intake.handle(create(2), now: t0)
        _ = intake.handle(create(3), now: t0)
        let failed = intake.handle(.stored(ticket, .failed(.timedOut)), now: t0)
        #expect(answered(failed) == [1, 2, 3], "the waiting creates are not sent into a database that did not answer")
        #expect(batches(failed).isEmpty)
        #expect(intake.inFlight == 0)
    }

    @Test func aConflictLeavesTheWaitingCreatesForTheNextTransaction() throws {
        var intake = intake(inFlight: 1)
        let (ticket, _) = try #require(batches(intake.handle(create(1), now: t0)).first)
        _ = intake.handle(create(2), now: t0)
        let conflicted = intake.handle(.stored(ticket, .failed(.conflict("deadlock detected"))), now: t0)
        #expect(answered(conflicted) == [1])
        #expect(batches(conflicted).map { numbers($0.1) } == [[2]])
    }

    @Test func beyondTheWaitingBoundACreateIsShedAtOnceAndWritesNothing() throws {
        var intake = intake(inFlight: 1, waiting: 1)
        #expect(batches(intake.handle(create(1), now: t0)).count == 1)
        #expect(intake.handle(create(2), now: t0).isEmpty)
        let shed = intake.handle(create(3), now: t0)
        #expect(stores(shed).isEmpty)
        #expect(responses(shed) == [.unavailable(OrderIntake.tooMany)])
        #expect(shed.contains(.note(.requestShed("intake"))))
    }

    @Test func aRestartForgetsTheWaitingCreates() throws {
        var intake = intake(inFlight: 1)
        _ = intake.handle(create(1), now: t0)
        _ = intake.handle(create(2), now: t0)
        _ = intake.handle(.start, now: t0)
        #expect(intake.inFlight == 0)
        #expect(batches(intake.handle(create(3), now: t0)).map { numbers($0.1) } == [[3]])
    }
}
