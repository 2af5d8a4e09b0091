import OrderPipelineCore
import OrderPipelineTestSupport
import Testing

let t0 = Instant(microseconds: 1_767_225_600_000_000)
let orderA = OrderID("11111111-2222-4333-8444-555555555555")!
let orderB = OrderID("11111111-2222-4333-8444-666666666666")!
let seedBody = Array(ValidationTests.seedRequest.utf8)

func sampleOrder(_ id: OrderID = orderA, status: OrderStatus = .pending) -> Order { Sample.order(id, status: status, at: t0) }

func row(_ sequence: Int64, _ order: OrderID = orderA, attempts: Int = 1) -> OutboxMessage {
    Sample.row(sequence, order: order, at: t0, attempts: attempts)
}

func stores(_ effects: [Effect]) -> [(Ticket, StoreCommand)] {
    effects.compactMap { if case .store(let t, let c) = $0 { (t, c) } else { nil } }
}

func responses(_ effects: [Effect]) -> [IntakeResponse] {
    effects.compactMap { if case .respond(_, let r) = $0 { r } else { nil } }
}

@Suite struct OrderIntakeTests {
    @Test func aValidRequestWritesOrderAndOutboxInOneCommandAndAnswersCreated() throws {
        var intake = OrderIntake()
        let effects = intake.handle(.createOrder(7, body: seedBody, idempotencyKey: "k-1", newOrderID: orderA), now: t0)
        let (ticket, command) = try #require(stores(effects).first)
        guard case .createOrders(let batch) = command, let new = batch.first else { Issue.record("expected createOrder"); return }
        #expect(new.order.id == orderA && new.order.status == .pending && new.order.createdAt == t0)
        #expect(new.event.type == .orderCreated && new.event.id == EventID.derived(order: orderA, type: .orderCreated))
        #expect(new.idempotencyKey == "k-1")
        #expect(responses(effects).isEmpty)

        let done = intake.handle(.stored(ticket, .committed(.ordersCreated([.created(new.order)]))), now: t0)
        #expect(responses(done) == [.created(new.order)])
        #expect(done.contains(.note(.orderAccepted(orderA, replayed: false))))
        #expect(intake.inFlight == 0)
    }

    @Test func withoutAKeyTheOrderIdIsTheKey() throws {
        var intake = OrderIntake()
        let (_, command) = try #require(stores(intake.handle(.createOrder(1, body: seedBody, idempotencyKey: nil, newOrderID: orderA), now: t0)).first)
        guard case .createOrders(let batch) = command, let new = batch.first else { Issue.record("expected createOrder"); return }
        #expect(new.idempotencyKey == "order:\(orderA)")
    }

    @Test func invalidInputIsAnsweredWithoutTouchingTheStore() {
        var intake = OrderIntake()
        let malformed = intake.handle(.createOrder(1, body: Array("{".utf8), idempotencyKey: nil, newOrderID: orderA), now: t0)
        #expect(stores(malformed).isEmpty)
        guard case .rejected(.malformed) = responses(malformed).first else { Issue.record("expected malformed"); return }
        let badKey = intake.handle(.createOrder(2, body: seedBody, idempotencyKey: "has space", newOrderID: orderA), now: t0)
        #expect(stores(badKey).isEmpty)
        #expect(responses(badKey) == [.rejected(.invalid([FieldError(field: "Idempotency-Key", message: "must be printable ASCII without spaces")]))])
    }

    @Test func anUnknownCommitIsAskedAgainThenGivenUp() throws {
        var intake = OrderIntake()
        var (ticket, command) = try #require(stores(intake.handle(.createOrder(1, body: seedBody, idempotencyKey: "k", newOrderID: orderA), now: t0)).first)
        for _ in 1..<intake.configuration.maxUnknownAttempts {
            let again = intake.handle(.stored(ticket, .unknown), now: t0)
            let next = try #require(stores(again).first)
            #expect(next.1 == command, "the same command is re-issued, idempotent on its key")
            (ticket, command) = next
        }
        guard case .unavailable = responses(intake.handle(.stored(ticket, .unknown), now: t0)).first else { Issue.record("expected 503"); return }
    }

    @Test func storeAnswersMapToResponses() throws {
        var intake = OrderIntake()
        func answer(_ reply: StoreResult, for input: Input) throws -> IntakeResponse? {
            let (ticket, _) = try #require(stores(intake.handle(input, now: t0)).first)
            return responses(intake.handle(.stored(ticket, reply), now: t0)).first
        }
        let create = Input.createOrder(1, body: seedBody, idempotencyKey: "k", newOrderID: orderA, trace: nil)
        #expect(try answer(.committed(.ordersCreated([.replayed(sampleOrder())])), for: create) == .replayed(sampleOrder()))
        #expect(try answer(.committed(.ordersCreated([.keyReused])), for: create) == .idempotencyKeyReused)
        #expect(try answer(.failed(.timedOut), for: create) == .unavailable("the database did not answer in time"))
        let change = Input.changeStatus(2, orderA, body: Array(#"{"status":"Fulfilled"}"#.utf8), trace: nil)
        #expect(try answer(.committed(.orderNotFound), for: change) == .notFound(orderA))
        #expect(try answer(.committed(.illegalTransition(from: .pending)), for: change) == .illegalTransition(orderA, from: .pending, to: .fulfilled))
        #expect(try answer(.committed(.transitioned(sampleOrder(status: .failed))), for: change) == .statusChanged(sampleOrder(status: .failed)))
    }

    @Test func statusChangeBodiesAreParsedByTheMachine() {
        var intake = OrderIntake()
        func answer(_ body: String) -> [Effect] { intake.handle(.changeStatus(3, orderA, body: Array(body.utf8), trace: nil), now: t0) }
        #expect(answer("not json") == [.respond(3, .rejected(.malformed("the body is not valid JSON")))])
        #expect(answer("[1]") == [.respond(3, .rejected(.malformed("the body must be a JSON object")))])
        #expect(answer(#"{"status":7}"#) == [.respond(3, .rejected(.invalid([FieldError(field: "status", message: "must be a string")])))])
        #expect(answer(#"{"status":"Shipped"}"#).count == 1)
        #expect(answer("{}") == [.respond(3, .rejected(.invalid([FieldError(field: "status", message: "is required")])))])
        let store = answer(#"{"status":"Failed","reason":"changed my mind"}"#)
        guard case .store(_, .transition(let t))? = store.first else { Issue.record("no transition: \(store)"); return }
        #expect(t.to == .failed && t.reason == "changed my mind" && t.orderID == orderA)
    }

    @Test func resultsForUnknownTicketsAreIgnored() {
        var intake = OrderIntake()
        #expect(intake.handle(.stored(Ticket(99), .committed(.fulfilments([.fulfilled]))), now: t0).isEmpty)
        #expect(intake.handle(.wake, now: t0).isEmpty)
    }
}

@Suite struct OutboxRelayTests {
    func relay(_ kind: OutboxKind = .kafka) -> OutboxRelay {
        OutboxRelay(configuration: .init(outbox: kind, owner: "relay-1"), seed: 1)
    }

    /// Drives a fresh relay through start → released → claim, returning the claim ticket.
    func started(_ relay: inout OutboxRelay) throws -> Ticket {
        let (release, command) = try #require(stores(relay.handle(.start, now: t0)).first)
        #expect(command == .releaseClaims(outbox: .kafka, owner: "relay-1"))
        let (claim, claimCommand) = try #require(stores(relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0)).first)
        guard case .claimOutbox(let c) = claimCommand else { Issue.record("expected a claim"); return claim }
        #expect(c.owner == "relay-1" && c.lease == relay.configuration.lease && c.limit == relay.configuration.batchSize)
        return claim
    }

    @Test func anEmptyClaimWaitsForThePollOrANotify() throws {
        var relay = relay()
        let claim = try started(&relay)
        let idle = relay.handle(.stored(claim, .committed(.claimed([]))), now: t0)
        #expect(idle == [.setTimer(.poll, at: t0 + relay.configuration.pollInterval)])
        let woken = relay.handle(.wake, now: t0)
        #expect(woken.first == .cancelTimer(.poll))
        #expect(stores(woken).count == 1)
        #expect(relay.handle(.wake, now: t0).isEmpty, "a NOTIFY while busy changes nothing")
    }

    @Test func rowsAreMarkedPublishedOnlyAfterTheAckAndFailuresAreRetriedOrDeadLettered() throws {
        var relay = relay()
        let claim = try started(&relay)
        let rows = [row(1), row(2, OrderID("21111111-2222-4333-8444-555555555555")!, attempts: 4), row(3, OrderID("31111111-2222-4333-8444-555555555555")!)]
        let publish = relay.handle(.stored(claim, .committed(.claimed(rows))), now: t0)
        guard case .publish(let ticket, .orders, let sent)? = publish.first else { Issue.record("expected a publish"); return }
        #expect(sent == rows)
        #expect(stores(publish).isEmpty, "nothing is marked before the broker answers")

        let later = t0 + .milliseconds(5)
        let settle = relay.handle(.published(ticket, [.delivered, .unknown("timed out"), .failed(retriable: false, reason: "too large")]), now: later)
        let (_, command) = try #require(stores(settle).first)
        guard case .settleOutbox(let s) = command else { Issue.record("expected a settlement"); return }
        #expect(s.published == [1])
        #expect(s.retries.map(\.sequence) == [2])
        #expect(s.retries[0].delay > .zero)
        #expect(s.rejections == [.init(sequence: 3, reason: "too large")])
    }

    @Test func retriableFailuresNeverGiveUp() throws {
        var relay = relay()
        var claim = try started(&relay)
        for attempt in 1...50 {
            let publish = relay.handle(.stored(claim, .committed(.claimed([row(1, attempts: attempt)]))), now: t0)
            guard case .publish(let ticket, _, _)? = publish.first else { Issue.record("expected a publish"); return }
            let (settleTicket, command) = try #require(stores(relay.handle(.published(ticket, [.failed(retriable: true, reason: "down")]), now: t0)).first)
            guard case .settleOutbox(let s) = command else { Issue.record("expected a settlement"); return }
            #expect(s.rejections.isEmpty && s.retries.count == 1, "attempt \(attempt)")
            #expect(s.retries[0].delay <= .seconds(10), "backoff is capped")
            // Nothing got through: the relay backs off before its next claim (the broker may be unreachable).
            #expect(stores(relay.handle(.stored(settleTicket, .committed(.settled(rows: 1))), now: t0)).isEmpty)
            claim = try #require(stores(relay.handle(.timer(.retry), now: t0)).first).0
        }
    }

    @Test func aFencedSettlementIsNotedAndTheRelayCarriesOn() throws {
        var relay = relay()
        let claim = try started(&relay)
        guard case .publish(let ticket, _, _)? = relay.handle(.stored(claim, .committed(.claimed([row(1)]))), now: t0).first else { return }
        let (settle, _) = try #require(stores(relay.handle(.published(ticket, [.delivered]), now: t0)).first)
        let next = relay.handle(.stored(settle, .committed(.settled(rows: 0))), now: t0)
        #expect(next.contains(.note(.leaseLost(.kafka, rows: 1))))
        #expect(next.contains(.setTimer(.poll, at: t0 + relay.configuration.pollInterval)), "carries on: idle, as nothing is waiting")
    }

    @Test func storeFailuresBackOffAndRetryTheSameStep() throws {
        var relay = relay()
        let claim = try started(&relay)
        let failed = relay.handle(.stored(claim, .failed(.unavailable("down"))), now: t0)
        guard case .setTimer(.retry, let at)? = failed.last else { Issue.record("expected a retry timer"); return }
        #expect(at > t0)
        #expect(relay.handle(.timer(.poll), now: at).isEmpty, "the poll timer does not interrupt a backoff")
        let retried = stores(relay.handle(.timer(.retry), now: at))
        guard case .claimOutbox? = retried.first?.1 else { Issue.record("expected the claim again"); return }
    }

    @Test func aRelayCutFromItsBrokerBacksOffBeforeClaimingAgain() throws {
        var relay = relay()
        var claim = try started(&relay)
        var now = t0
        for round in 1...3 {
            guard case .publish(let ticket, _, _)? = relay.handle(.stored(claim, .committed(.claimed([row(1)]))), now: now).first else {
                Issue.record("round \(round): expected a publish"); return
            }
            let (settle, _) = try #require(stores(relay.handle(.published(ticket, [.unknown("broker unreachable")]), now: now)).first)
            let after = relay.handle(.stored(settle, .committed(.settled(rows: 1))), now: now)
            #expect(stores(after).isEmpty, "round \(round): no claim while nothing gets through")
            guard case .setTimer(.retry, let at)? = after.last else { Issue.record("round \(round): expected a backoff"); return }
            #expect(at > now)
            #expect(relay.handle(.wake, now: now).isEmpty, "a NOTIFY does not cut the backoff short")
            now = at
            claim = try #require(stores(relay.handle(.timer(.retry), now: at)).first).0
        }
        // One delivery ends the backoff: the next claim follows at once.
        guard case .publish(let ticket, _, _)? = relay.handle(.stored(claim, .committed(.claimed([row(1)]))), now: now).first else { return }
        let (settle, _) = try #require(stores(relay.handle(.published(ticket, [.delivered]), now: now)).first)
        guard case .claimOutbox? = stores(relay.handle(.stored(settle, .committed(.settled(rows: 1))), now: now)).first?.1 else {
            Issue.record("expected an immediate claim after a delivery"); return
        }
    }

    @Test func refusalsAreJudgedByTheirCondition() throws {
        var relay = relay()
        let claim = try started(&relay)
        let batch = (1...5).map { row(Int64($0)) }
        guard case .publish(let ticket, _, _)? = relay.handle(.stored(claim, .committed(.claimed(batch))), now: t0).first else {
            Issue.record("expected a publish"); return
        }
        let outcomes: [PublishOutcome] = [
            .refused(condition: "com.microsoft:server-busy", description: "busy"),
            .refused(condition: "amqp:link:message-size-exceeded", description: "too large"),
            .refused(condition: "kafka:NOT_ENOUGH_REPLICAS", description: "replicas"),
            .refused(condition: "kafka:MSG_SIZE_TOO_LARGE", description: "too large"),
            .refused(condition: "some:new-condition", description: "unknown conditions are retried"),
        ]
        let (_, command) = try #require(stores(relay.handle(.published(ticket, outcomes), now: t0)).first)
        guard case .settleOutbox(let s) = command else { Issue.record("expected a settlement"); return }
        #expect(s.retries.map(\.sequence) == [1, 3, 5])
        #expect(s.rejections.map(\.sequence) == [2, 4])
        #expect(s.retries.allSatisfy { $0.delay > .zero }, "something else was rejected: the broker answers, so the rows keep their backoff")
    }

    @Test func lateAndForeignResultsAreIgnored() throws {
        var relay = relay()
        let claim = try started(&relay)
        #expect(relay.handle(.stored(Ticket(claim.raw + 7), .committed(.claimed([row(1)]))), now: t0).isEmpty)
        #expect(relay.handle(.published(claim, [.delivered]), now: t0).isEmpty)
        #expect(relay.handle(.fetched(claim, []), now: t0).isEmpty)
    }

    @Test func theServiceBusRelayPublishesToTheFulfilmentChannel() throws {
        var relay = OutboxRelay(configuration: .init(outbox: .serviceBus, owner: "sb-1"), seed: 1)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let (claim, _) = try #require(stores(relay.handle(.stored(release, .committed(.released(rows: 2))), now: t0)).first)
        guard case .publish(_, .fulfilment, _)? = relay.handle(.stored(claim, .committed(.claimed([row(1)]))), now: t0).first else {
            Issue.record("expected a publish to the fulfilment channel")
            return
        }
    }
}
