import OrderPipelineCore
import OrderPipelineTestSupport
import Testing

/// The implementations the contract suite runs against. The simulator's PostgreSQL model joins as another case.
enum Implementation: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case postgres
    case model

    var testDescription: String { rawValue }

    /// PostgreSQL runs only when DATABASE_URL is set (see `postgresIsConfigured` for the visible skip).
    static var available: [Implementation] {
        allCases.filter { $0 != .postgres || TestDatabase.isConfigured }
    }

    /// Behaviours of transactions held open across sessions: PostgreSQL only (the model has no open transactions).
    static var transactional: [Implementation] { available.filter { $0 == .postgres } }

    func make() async throws -> any StoreUnderTest {
        switch self {
        case .postgres: try await PostgresUnderTest()
        case .model: ModelUnderTest()
        }
    }
}

/// Runs `body` on a fresh store and always tears it down.
func withStore(_ implementation: Implementation, _ body: (any StoreUnderTest) async throws -> Void) async throws {
    try await withTearDown(try await implementation.make(), tearDown: { await $0.tearDown() }, body)
}

// MARK: fixtures

let t0 = Instant(microseconds: 1_800_000_000_000_000)

func at(_ seconds: Double) -> Instant { Instant(microseconds: t0.microseconds + Int64(seconds * 1_000_000)) }

func orderID(_ n: UInt64) -> OrderID { Sample.orderID(n) }

func newOrder(_ n: UInt64, key: String? = nil, name: String = "John Smith", created: Instant = t0) -> NewOrder {
    let body =
        #"{"customerName":"\#(name)","customerEmail":"john@example.com","items":[{"productName":"Laptop","quantity":1,"unitPrice":999.99},{"productName":"Mouse \"pro\"","quantity":2,"unitPrice":10.50}]}"#
    guard case .success(let request) = OrderRequest.parse(Array(body.utf8)) else { fatalError("fixture does not parse") }
    let order = Order(
        id: orderID(n), customerName: request.customerName, customerEmail: request.customerEmail,
        items: request.items, totalAmount: request.totalAmount, createdAt: created)
    let event = PipelineEvent(type: .orderCreated, order: order, at: created, includeOrder: true)
    return NewOrder(order: order, event: event, idempotencyKey: key ?? "order:\(order.id)", fingerprint: request.fingerprint)
}

/// A claim; leases and due times are the database's clock (`StoreUnderTest.advanceClock` moves it).
func claim(_ outbox: OutboxKind = .kafka, owner: String = "relay-1", limit: Int = 100, lease: Double = 30, takeOver: Bool = false) -> StoreCommand {
    .claimOutbox(OutboxClaim(outbox: outbox, owner: owner, limit: limit, lease: .microseconds(Int64(lease * 1_000_000)), takeOverExpiredLeases: takeOver))
}

func created(_ n: UInt64) -> Fulfilment {
    let order = newOrder(n)
    return Fulfilment(envelope: envelope(order.event), at: at(2))
}

func envelope(_ event: PipelineEvent) -> EventEnvelope {
    guard case .success(let envelope) = EventEnvelope.decode(event.payload) else { fatalError("event does not decode") }
    return envelope
}

extension StoreUnderTest {
    func history(of order: OrderID) async -> [StatusChange] {
        do { return try await transitions(of: order) } catch { Issue.record(error); return [] }
    }

    func deadLetters() async -> [String] {
        do { return try await deadLetterSources() } catch { Issue.record(error); return [] }
    }
}

extension StoreResult {
    var claimed: [OutboxMessage] {
        if case .committed(.claimed(let rows, _)) = self { return rows }
        Issue.record("expected a claim, got \(self)")
        return []
    }
}

@Suite("PostgreSQL visibility", .timeLimit(.minutes(5)))
struct PostgresConfiguration {
    @Test("PostgreSQL contract and integration tests are enabled (DATABASE_URL)", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set: PostgreSQL tests are skipped"))
    func postgresIsConfigured() async throws {
        let store = try await PostgresUnderTest()
        await store.tearDown()
    }
}

@Suite("Store contract", .timeLimit(.minutes(5)))
struct StoreContractTests {
    @Test("an order, its items, its creation transition and its outbox row commit together", arguments: Implementation.available)
    func orderAndOutboxAtomic(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let new = newOrder(1)
            #expect(await store.perform(.createOrders([new])) == .committed(.ordersCreated([.created(new.order)])))
            let rows = await store.perform(claim()).claimed
            #expect(rows.map(\.event) == [new.event])
            #expect(rows.first?.attempts == 1)
            #expect(await store.history(of: new.order.id) == [StatusChange(from: nil, to: .pending)])

            // A create that dies before COMMIT leaves nothing: no order, no outbox row, and the key is free.
            guard implementation == .postgres else { return }  // the model has no open transactions
            let session = try await store.openSession()
            let lost = newOrder(2)
            #expect(await session.performHoldingOpen(.createOrders([lost])) == .committed(.ordersCreated([.created(lost.order)])))
            await session.kill()
            #expect(await store.perform(claim(owner: "relay-2")).claimed.isEmpty)
            #expect(await store.history(of: lost.order.id).isEmpty)
            #expect(await store.perform(.createOrders([lost])) == .committed(.ordersCreated([.created(lost.order)])))
        }
    }

    @Test("an idempotency key replays its order; reused with another body it is refused and writes nothing", arguments: Implementation.available)
    func idempotencyKey(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let first = newOrder(1, key: "client-key-1")
            #expect(await store.perform(.createOrders([first])) == .committed(.ordersCreated([.created(first.order)])))
            // A retry with the same key and body (and a fresh id the shell drew) returns the first order.
            let retry = newOrder(2, key: "client-key-1")
            #expect(await store.perform(.createOrders([retry])) == .committed(.ordersCreated([.replayed(first.order)])))
            let other = newOrder(3, key: "client-key-1", name: "Jane Doe")
            #expect(await store.perform(.createOrders([other])) == .committed(.ordersCreated([.keyReused])))
            #expect(await store.perform(claim()).claimed.map(\.event.orderID) == [first.order.id])
            #expect(await store.history(of: retry.order.id).isEmpty)
            #expect(await store.history(of: other.order.id).isEmpty)
        }
    }

    @Test("claims skip rows another session has locked, and a killed session releases them", arguments: Implementation.transactional)
    func skipLockedAndKill(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            for n in UInt64(1)...3 { _ = await store.perform(.createOrders([newOrder(n)])) }
            let a = try await store.openSession()
            let held = await a.performHoldingOpen(claim(owner: "relay-a")).claimed
            #expect(held.count == 3)
            // Not blocked, not the same rows: SKIP LOCKED.
            #expect(await store.perform(claim(owner: "relay-b")).claimed.isEmpty)
            await a.kill()
            let taken = await store.perform(claim(owner: "relay-b")).claimed
            #expect(taken.map(\.sequence) == held.map(\.sequence))
            // The dead session's claim never committed: this is the first attempt.
            #expect(taken.allSatisfy { $0.attempts == 1 })
        }
    }

    @Test("concurrent relays never claim a row twice", arguments: Implementation.transactional)
    func noRowClaimedTwice(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            for n in UInt64(1)...40 { _ = await store.perform(.createOrders([newOrder(n)])) }
            var sessions: [any SessionUnderTest] = []
            for _ in 0..<4 { sessions.append(try await store.openSession()) }
            let claimed = await withTaskGroup(of: [Int64].self) { group in
                for (index, session) in sessions.enumerated() {
                    group.addTask {
                        // 40 claims at most (14 of 3 take every row): a store that hands rows out again and again
                        // fails the count below instead of claiming for ever.
                        var mine: [Int64] = []
                        for _ in 0..<40 {
                            let rows = await session.perform(claim(owner: "relay-\(index)", limit: 3)).claimed
                            if rows.isEmpty { return mine }
                            mine += rows.map(\.sequence)
                        }
                        return mine
                    }
                }
                var all: [Int64] = []
                for await rows in group { all += rows }
                return all
            }
            #expect(claimed.count == 40)
            #expect(Set(claimed).count == 40)
            for session in sessions { await session.kill() }
        }
    }

    @Test("only the head row of each order is claimable", arguments: Implementation.available)
    func headOfLine(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let x = newOrder(1), y = newOrder(2)
            _ = await store.perform(.createOrders([x]))
            // A second event of order x: Pending → Failed announces OrderFailed.
            let failed = await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .failed, at: at(0.5), reason: "out of stock")))
            guard case .committed(.transitioned(let order)) = failed else { Issue.record("\(failed)"); return }
            #expect(order.status == .failed && order.failureReason == "out of stock")
            _ = await store.perform(.createOrders([y]))

            let first = await store.perform(claim(owner: "relay-1")).claimed
            #expect(first.map(\.event.id) == [x.event.id, y.event.id])
            // x's second row waits while its head is claimed by another relay.
            #expect(await store.perform(claim(owner: "relay-2")).claimed.isEmpty)
            let settled = await store.perform(.settleOutbox(OutboxSettlement(outbox: .kafka, owner: "relay-1", published: first.map(\.sequence))))
            #expect(settled == .committed(.settled(rows: 2)))
            let second = await store.perform(claim(owner: "relay-2")).claimed
            #expect(second.map(\.event.type) == [.orderFailed])
            #expect(second.map(\.event.orderID) == [x.order.id])
        }
    }

    @Test("a lease expires; a settlement by the overtaken owner changes nothing", arguments: Implementation.available)
    func leaseAndFencing(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            _ = await store.perform(.createOrders([newOrder(1)]))
            let a = await store.perform(claim(owner: "relay-a", lease: 30)).claimed
            #expect(a.count == 1)
            #expect(await store.perform(claim(owner: "relay-b")).claimed.isEmpty)
            // Not even its own owner takes a row again while the lease holds (the recipe: "nobody claims it").
            #expect(await store.perform(claim(owner: "relay-a")).claimed.isEmpty)
            try await store.advanceClock(by: 31)
            // An expired lease is taken over only by a claim that asks for it (relays do, about once a second).
            #expect(await store.perform(claim(owner: "relay-b")).claimed.isEmpty)
            let b = await store.perform(claim(owner: "relay-b", takeOver: true)).claimed
            #expect(b.map(\.sequence) == a.map(\.sequence))
            #expect(b.first?.attempts == 2)
            let late = OutboxSettlement(outbox: .kafka, owner: "relay-a", published: a.map(\.sequence))
            #expect(await store.perform(.settleOutbox(late)) == .committed(.settled(rows: 0)))
            let owner = OutboxSettlement(outbox: .kafka, owner: "relay-b", published: b.map(\.sequence))
            #expect(await store.perform(.settleOutbox(owner)) == .committed(.settled(rows: 1)))
            #expect(await store.perform(.settleOutbox(owner)) == .committed(.settled(rows: 0)))
            try await store.advanceClock(by: 100)
            #expect(await store.perform(claim(owner: "relay-c", takeOver: true)).claimed.isEmpty)
        }
    }

    @Test("a retried row waits for its next attempt; released claims are free at once", arguments: Implementation.available)
    func retryAndRelease(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            _ = await store.perform(.createOrders([newOrder(1)]))
            let rows = await store.perform(claim(owner: "relay-a")).claimed
            let retry = OutboxSettlement(
                outbox: .kafka, owner: "relay-a",
                retries: [.init(sequence: rows[0].sequence, delay: .seconds(60), error: "broker down")])
            #expect(await store.perform(.settleOutbox(retry)) == .committed(.settled(rows: 1)))
            // Half the delay: PostgreSQL's clock also runs on in real time, so the margin is wide (a loaded machine
            // once took over a second between these two statements).
            try await store.advanceClock(by: 30)
            #expect(await store.perform(claim(owner: "relay-a")).claimed.isEmpty)
            try await store.advanceClock(by: 30)
            let again = await store.perform(claim(owner: "relay-a")).claimed
            #expect(again.map(\.attempts) == [2])

            #expect(await store.perform(.releaseClaims(outbox: .kafka, owner: "relay-a")) == .committed(.released(rows: 1)))
            #expect(await store.perform(.releaseClaims(outbox: .kafka, owner: "relay-a")) == .committed(.released(rows: 0)))
            #expect(await store.perform(claim(owner: "relay-b")).claimed.map(\.attempts) == [3])
        }
    }

    @Test("a rejected row is dead-lettered and unblocks its order's next row", arguments: Implementation.available)
    func rejection(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let x = newOrder(1)
            _ = await store.perform(.createOrders([x]))
            _ = await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .failed, at: at(0.5), reason: nil)))
            let head = await store.perform(claim(owner: "relay-a")).claimed
            let reject = OutboxSettlement(
                outbox: .kafka, owner: "relay-a",
                rejections: [.init(sequence: head[0].sequence, reason: "message too large")])
            #expect(await store.perform(.settleOutbox(reject)) == .committed(.settled(rows: 1)))
            #expect(await store.perform(claim(owner: "relay-a")).claimed.map(\.event.type) == [.orderFailed])
            #expect(await store.deadLetters() == ["kafka-outbox/\(head[0].sequence)"])
        }
    }

    @Test(
        "fulfilment: inbox first, Pending → Processing → Fulfilled and the Service Bus row in one transaction; a redelivery writes nothing",
        arguments: Implementation.available)
    func fulfilAndDedup(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let x = newOrder(1)
            _ = await store.perform(.createOrders([x]))
            let fulfilment = created(1)
            #expect(await store.perform(.fulfil([fulfilment])) == .committed(.fulfilments([.fulfilled])))
            #expect(
                await store.history(of: x.order.id) == [
                    StatusChange(from: nil, to: .pending), StatusChange(from: .pending, to: .processing),
                    StatusChange(from: .processing, to: .fulfilled),
                ])
            let sb = await store.perform(claim(.serviceBus, owner: "sb-1")).claimed
            #expect(sb.map(\.event) == [fulfilment.fulfilmentEvent])

            // Redelivered: the inbox row is found, nothing else happens.
            #expect(await store.perform(.fulfil([Fulfilment(envelope: fulfilment.envelope, at: at(5))])) == .committed(.fulfilments([.duplicate])))
            #expect(await store.history(of: x.order.id).filter { $0.to == .fulfilled }.count == 1)
            // Within sb-1's lease, and no second row was written.
            #expect(await store.perform(claim(.serviceBus, owner: "sb-2")).claimed.isEmpty)

            // Other shapes of the recipe.
            #expect(await store.perform(.fulfil([created(9)])) == .committed(.fulfilments([.orderMissing])))
            let y = newOrder(2)
            _ = await store.perform(.createOrders([y]))
            _ = await store.perform(.transition(OrderTransition(orderID: y.order.id, to: .failed, at: at(1))))
            #expect(await store.perform(.fulfil([created(2)])) == .committed(.fulfilments([.skipped(.failed)])))
            let failedEvent = envelope(PipelineEvent(type: .orderFailed, orderID: y.order.id, at: at(1), status: .failed))
            #expect(await store.perform(.fulfil([Fulfilment(envelope: failedEvent, at: at(2))])) == .committed(.fulfilments([.recorded])))
        }
    }

    @Test("a session killed inside its fulfilment transaction releases the inbox row it held", arguments: Implementation.transactional)
    func killedFulfilment(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            _ = await store.perform(.createOrders([newOrder(1)]))
            let a = try await store.openSession()
            #expect(await a.performHoldingOpen(.fulfil([created(1)])) == .committed(.fulfilments([.fulfilled])))
            // A second consumer's transaction waits on the held inbox row until the first session dies.
            async let second = store.perform(.fulfil([created(1)]))
            try await Task.sleep(for: .milliseconds(200))
            await a.kill()
            #expect(await second == .committed(.fulfilments([.fulfilled])))
            #expect(await store.history(of: orderID(1)).filter { $0.to == .fulfilled }.count == 1)
        }
    }

    @Test("status changes: legal moves write their events, illegal ones and unknown orders write nothing", arguments: Implementation.available)
    func transitions(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let x = newOrder(1)
            _ = await store.perform(.createOrders([x]))
            #expect(await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .fulfilled, at: at(1)))) == .committed(.illegalTransition(from: .pending)))
            #expect(await store.perform(.transition(OrderTransition(orderID: orderID(77), to: .failed, at: at(1)))) == .committed(.orderNotFound))
            guard case .committed(.transitioned(let processing)) = await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .processing, at: at(2)))) else {
                Issue.record("Pending → Processing refused"); return
            }
            #expect(processing.status == .processing && processing.processedAt == at(2) && processing.items == x.order.items)
            guard case .committed(.transitioned(let fulfilled)) = await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .fulfilled, at: at(3)))) else {
                Issue.record("Processing → Fulfilled refused"); return
            }
            #expect(fulfilled.status == .fulfilled)
            #expect(await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .failed, at: at(4)))) == .committed(.illegalTransition(from: .fulfilled)))
            #expect(await store.history(of: x.order.id).map(\.to) == [.pending, .processing, .fulfilled])
            // Kafka: OrderCreated then (after it settles) OrderFulfilled; Service Bus: the fulfilment event.
            let kafka = await store.perform(claim()).claimed
            #expect(kafka.map(\.event.type) == [.orderCreated])
            _ = await store.perform(.settleOutbox(OutboxSettlement(outbox: .kafka, owner: "relay-1", published: kafka.map(\.sequence))))
            #expect(await store.perform(claim()).claimed.map(\.event.type) == [.orderFulfilled])
            #expect(await store.perform(claim(.serviceBus)).claimed.map(\.event.id) == [EventID.derived(order: x.order.id, type: .orderFulfilled)])
            // Failed without a reason still says why.
            let z = newOrder(3)
            _ = await store.perform(.createOrders([z]))
            guard case .committed(.transitioned(let unexplained)) = await store.perform(.transition(OrderTransition(orderID: z.order.id, to: .failed, at: at(7)))) else {
                Issue.record("Pending → Failed refused"); return
            }
            #expect(unexplained.failureReason == "failed by request")
            // The same change again (a PATCH re-issued after an unknown COMMIT) answers success and writes nothing.
            #expect(await store.perform(.transition(OrderTransition(orderID: z.order.id, to: .failed, at: at(8)))) == .committed(.transitioned(unexplained)))
            #expect(await store.history(of: z.order.id).map(\.to) == [.pending, .failed])
            #expect(await store.perform(.transition(OrderTransition(orderID: x.order.id, to: .fulfilled, at: at(9)))) == .committed(.transitioned(fulfilled)))
        }
    }

    @Test("the reconciler re-announces orders published but still Pending after the bound, once, and nothing else", arguments: Implementation.available)
    func reannounceOverdue(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let lost = newOrder(1)
            let done = newOrder(2)
            let waiting = newOrder(3)
            for new in [lost, done, waiting] { _ = await store.perform(.createOrders([new])) }
            let rows = await store.perform(claim(limit: 2)).claimed
            #expect(rows.map(\.event.orderID) == [lost.order.id, done.order.id])
            _ = await store.perform(.settleOutbox(OutboxSettlement(outbox: .kafka, owner: "relay-1", published: rows.map(\.sequence))))
            _ = await store.perform(.fulfil([Fulfilment(envelope: envelope(done.event), at: at(2))]))
            let reannounce = StoreCommand.reannounceOverdue(overdueAfter: .seconds(60), limit: 10)
            #expect(await store.perform(reannounce) == .committed(.reannounced([])), "not overdue yet")
            try await store.advanceClock(by: 61)
            // `lost` is published and still Pending; `done` is Fulfilled; `waiting` was never published.
            #expect(await store.perform(reannounce) == .committed(.reannounced([lost.order.id])))
            #expect(await store.perform(reannounce) == .committed(.reannounced([])), "its row is unsettled again: once")
            let again = await store.perform(claim(owner: "relay-2")).claimed
            #expect(again.map(\.event.id).contains(lost.event.id))
            #expect(again.first { $0.event.id == lost.event.id }?.event.payload == lost.event.payload)
        }
    }

    @Test("dead letters are idempotent on their source", arguments: Implementation.available)
    func deadLetters(_ implementation: Implementation) async throws {
        try await withStore(implementation) { store in
            let letter = DeadLetter(source: "orders/2@117", reason: "payload is not a JSON object", payload: [0xFF, 0x00, 0x7B], at: at(1))
            #expect(await store.perform(.deadLetter(letter)) == .committed(.deadLettered))
            #expect(await store.perform(.deadLetter(letter)) == .committed(.deadLettered))
            #expect(await store.deadLetters() == ["orders/2@117"])
        }
    }
}
