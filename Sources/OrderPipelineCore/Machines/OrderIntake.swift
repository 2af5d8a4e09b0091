/// The API's decisions: validate a request, write the order and its outbox row in one transaction, answer.
///
/// Idempotency: every create carries a key (the client's Idempotency-Key, or `order:<id>`), so re-issuing the same
/// command after an unknown commit outcome is safe: if the first attempt committed, the store replays that order.
///
/// Group commit: at most `createsInFlight` create transactions run at once. A create that arrives while they are
/// all busy waits, and the next transaction takes everything that waited (up to `maxCreateBatch` orders), so under
/// load one commit serves many orders, while at low load nothing waits at all. Each order still gets its own
/// answer, only after the transaction that wrote it committed.
public struct OrderIntake: Sendable {
    public struct Configuration: Sendable, Hashable {
        public var limits = OrderLimits()
        /// Attempts of one transaction whose outcome stayed unknown before answering "unavailable".
        public var maxUnknownAttempts = 3
        public var maxIdempotencyKeyLength = 255
        public var maxReasonLength = 500
        /// Create transactions in flight at once; further creates wait for the next one.
        public var createsInFlight = 2
        /// Orders in one create transaction at most.
        public var maxCreateBatch = 64
        /// Creates that may wait for a create transaction; more are answered "unavailable" at once, so an overloaded
        /// or frozen database sheds load instead of piling up requests.
        public var maxWaitingCreates = 256
        public init() {}
    }

    /// A valid create request, waiting for or in a create transaction. What the transaction writes is made as it
    /// goes into one: a create answered while it waits (the database failed those ahead of it) never needs it.
    private struct Create: Sendable {
        var requestID: RequestID
        var request: OrderRequest
        var id: OrderID
        var idempotencyKey: String
        var trace: TraceParent?
        var receivedAt: Instant
        var attempts = 1

        /// The order, its `OrderCreated` event and the request's fingerprint: the same for every attempt.
        var order: NewOrder {
            let order = Order(
                id: id, customerName: request.customerName, customerEmail: request.customerEmail,
                items: request.items, totalAmount: request.totalAmount, createdAt: receivedAt)
            var event = PipelineEvent(type: .orderCreated, order: order, at: receivedAt, includeOrder: true)
            event.traceParent = trace
            return NewOrder(order: order, event: event, idempotencyKey: idempotencyKey, fingerprint: request.fingerprint)
        }
    }

    /// What an in-flight transaction serves: a batch of creates, or one status change.
    private enum Work: Sendable {
        case creates([Create])
        case change(RequestID, StoreCommand, attempts: Int)
    }

    public let configuration: Configuration
    private var nextTicket: UInt64 = 0
    /// In-flight transactions by ticket (looked up, never iterated).
    private var pending: [Ticket: Work] = [:]
    /// Creates waiting for a create transaction, oldest first.
    private var waiting: [Create] = []
    private var createsRunning = 0

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// Requests not answered yet: in a transaction or waiting for one.
    public var inFlight: Int {
        waiting.count
            + pending.values.reduce(0) { count, work in
                if case .creates(let batch) = work { count + batch.count } else { count + 1 }
            }
    }

    public mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        switch input {
        case .start:
            pending = [:]
            waiting = []
            createsRunning = 0
            return []
        case let .createOrder(requestID, body, idempotencyKey, newOrderID, trace):
            return create(requestID, body: body, key: idempotencyKey, id: newOrderID, trace: trace, now: now)
        case let .changeStatus(requestID, orderID, body, trace):
            switch StatusChangeRequest.parse(body, maxReasonLength: configuration.maxReasonLength) {
            case .failure(let error):
                return [.respond(requestID, .rejected(error))]
            case .success(let change):
                let transition = OrderTransition(orderID: orderID, to: change.status, at: now, reason: change.reason, traceParent: trace)
                return issue(.change(requestID, .transition(transition), attempts: 1))
            }
        case let .stored(ticket, result):
            guard let work = pending.removeValue(forKey: ticket) else { return [] }
            switch work {
            case .creates(let batch):
                createsRunning -= 1
                return complete(batch, result) + failWaiting(after: result) + issueCreates()
            case let .change(requestID, command, attempts):
                return complete(requestID, command, attempts: attempts, result)
            }
        case .timer, .wake, .published, .fetched, .assigned, .offsetsCommitted:
            return []
        }
    }

    private mutating func create(_ requestID: RequestID, body: [UInt8], key: String?, id: OrderID, trace: TraceParent?, now: Instant) -> [Effect] {
        if let key, let problem = keyProblem(key) {
            return [.respond(requestID, .rejected(.invalid([FieldError(field: "Idempotency-Key", message: problem)])))]
        }
        switch OrderRequest.parse(body, limits: configuration.limits) {
        case .failure(let error):
            return [.respond(requestID, .rejected(error))]
        case .success(let request):
            guard waiting.count < configuration.maxWaitingCreates else {
                return [.respond(requestID, .unavailable(Self.tooMany)), .note(.requestShed("intake"))]
            }
            waiting.append(Create(requestID: requestID, request: request, id: id, idempotencyKey: key ?? "order:\(id)", trace: trace, receivedAt: now))
            return issueCreates()
        }
    }

    /// Starts create transactions while there is room, each with the oldest waiting creates. Two creates with one
    /// key never share a transaction: the later one waits for the next, where it finds the first one's order.
    private mutating func issueCreates() -> [Effect] {
        var effects: [Effect] = []
        while createsRunning < configuration.createsInFlight, !waiting.isEmpty {
            // The scan stops at a full batch; the creates it passed over go back in front of those it never reached.
            var batch: [Create] = []
            var passed: [Create] = []
            var scanned = 0
            while scanned < waiting.count, batch.count < configuration.maxCreateBatch {
                let create = waiting[scanned]
                scanned += 1
                if batch.contains(where: { $0.idempotencyKey == create.idempotencyKey }) {
                    passed.append(create)
                } else {
                    batch.append(create)
                }
            }
            waiting.replaceSubrange(0..<scanned, with: passed)
            createsRunning += 1
            effects += issue(.creates(batch))
        }
        return effects
    }

    private func keyProblem(_ key: String) -> String? {
        if key.isEmpty { return "must not be empty" }
        if key.utf8.count > configuration.maxIdempotencyKeyLength { return "must be at most \(configuration.maxIdempotencyKeyLength) bytes" }
        if !key.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) { return "must be printable ASCII without spaces" }
        return nil
    }

    private mutating func issue(_ work: Work) -> [Effect] {
        nextTicket += 1
        let ticket = Ticket(nextTicket)
        pending[ticket] = work
        switch work {
        case .creates(let batch): return [.store(ticket, .createOrders(batch.map(\.order)))]
        case .change(_, let command, _): return [.store(ticket, command)]
        }
    }

    /// Answers a create transaction's requests; after an unknown outcome its creates wait again, first in line.
    private mutating func complete(_ batch: [Create], _ result: StoreResult) -> [Effect] {
        switch result {
        case .unknown:
            // Maybe committed: asking again is safe (idempotent on the key) and tells us which.
            var effects: [Effect] = [.note(.unknownOutcome("intake"))]
            var again: [Create] = []
            for create in batch {
                if create.attempts < configuration.maxUnknownAttempts {
                    var create = create
                    create.attempts += 1
                    again.append(create)
                } else {
                    effects.append(.respond(create.requestID, .unavailable(Self.unconfirmed)))
                }
            }
            waiting = again + waiting
            return effects
        case .failed(let failure):
            return batch.map { .respond($0.requestID, .unavailable(Self.describe(failure))) }
        case .committed(.ordersCreated(let outcomes)) where outcomes.count == batch.count:
            var effects: [Effect] = []
            for (create, outcome) in zip(batch, outcomes) {
                switch outcome {
                case .created(let order):
                    effects += [.respond(create.requestID, .created(order)), .note(.orderAccepted(order.id, replayed: false))]
                case .replayed(let order):
                    effects += [.respond(create.requestID, .replayed(order)), .note(.orderAccepted(order.id, replayed: true))]
                case .keyReused:
                    effects.append(.respond(create.requestID, .idempotencyKeyReused))
                }
            }
            return effects
        case .committed(let reply):
            return batch.map { .respond($0.requestID, .unavailable("the store answered \(reply.summary) to \(batch.count) creates")) }
        }
    }

    /// After a create transaction timed out or found the database unavailable, the creates waiting behind it are
    /// answered at once, as the pool answers its queue then: sent on, each would wait out a deadline of its own.
    private mutating func failWaiting(after result: StoreResult) -> [Effect] {
        guard case .failed(let failure) = result else { return [] }
        if case .conflict = failure { return [] }  // a lost race, not a sick database: the next one may well pass
        let failed = waiting
        waiting = []
        return failed.map { .respond($0.requestID, .unavailable(Self.describe(failure))) }
    }

    /// Answers a status change.
    private mutating func complete(_ requestID: RequestID, _ command: StoreCommand, attempts: Int, _ result: StoreResult) -> [Effect] {
        switch result {
        case .unknown where attempts < configuration.maxUnknownAttempts:
            return [.note(.unknownOutcome("intake"))] + issue(.change(requestID, command, attempts: attempts + 1))
        case .unknown:
            return [.respond(requestID, .unavailable(Self.unconfirmed))]
        case .failed(let failure):
            return [.respond(requestID, .unavailable(Self.describe(failure)))]
        case .committed(let reply):
            return [.respond(requestID, response(to: reply, of: command))]
        }
    }

    private func response(to reply: StoreReply, of command: StoreCommand) -> IntakeResponse {
        switch (reply, command) {
        case (.transitioned(let order), _): .statusChanged(order)
        case (.orderNotFound, .transition(let t)): .notFound(t.orderID)
        case (.illegalTransition(let from), .transition(let t)): .illegalTransition(t.orderID, from: from, to: t.to)
        default: .unavailable("the store answered \(reply.summary) to \(command.name)")
        }
    }

    public static let tooMany = "too many orders are waiting for the database; retry with the same Idempotency-Key"
    public static let unconfirmed = "the database did not confirm the transaction; retry with the same Idempotency-Key"

    static func describe(_ failure: StoreFailure) -> String {
        switch failure {
        case .unavailable(let reason): "the database is unavailable: \(reason)"
        case .timedOut: "the database did not answer in time"
        case .conflict(let reason): "the transaction conflicted with another: \(reason)"
        }
    }
}
