/// The API's decisions: validate a request, write the order and its outbox row in one transaction, answer.
///
/// Idempotency: every create carries a key (the client's Idempotency-Key, or `order:<id>`), so re-issuing the same
/// command after an unknown commit outcome is safe: if the first attempt committed, the store replays that order.
public struct OrderIntake: Sendable {
    public struct Configuration: Sendable, Hashable {
        public var limits = OrderLimits()
        /// Attempts of one transaction whose outcome stayed unknown before answering "unavailable".
        public var maxUnknownAttempts = 3
        public var maxIdempotencyKeyLength = 255
        public var maxReasonLength = 500
        public init() {}
    }

    private struct Pending: Sendable {
        var requestID: RequestID
        var command: StoreCommand
        var attempts: Int
    }

    public let configuration: Configuration
    private var nextTicket: UInt64 = 0
    /// In-flight transactions by ticket (looked up, never iterated).
    private var pending: [Ticket: Pending] = [:]

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    public var inFlight: Int { pending.count }

    public mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        switch input {
        case .start:
            pending = [:]
            return []
        case let .createOrder(requestID, body, idempotencyKey, newOrderID, trace):
            return create(requestID, body: body, key: idempotencyKey, id: newOrderID, trace: trace, now: now)
        case let .changeStatus(requestID, orderID, body, trace):
            switch StatusChangeRequest.parse(body, maxReasonLength: configuration.maxReasonLength) {
            case .failure(let error):
                return [.respond(requestID, .rejected(error))]
            case .success(let change):
                let transition = OrderTransition(orderID: orderID, to: change.status, at: now, reason: change.reason, traceParent: trace)
                return issue(requestID, .transition(transition), attempts: 1)
            }
        case let .stored(ticket, result):
            guard let request = pending.removeValue(forKey: ticket) else { return [] }
            return complete(request, result)
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
            let order = Order(
                id: id, customerName: request.customerName, customerEmail: request.customerEmail,
                items: request.items, totalAmount: request.totalAmount, createdAt: now)
            var event = PipelineEvent(type: .orderCreated, order: order, at: now, includeOrder: true)
            event.traceParent = trace
            let command = NewOrder(order: order, event: event, idempotencyKey: key ?? "order:\(id)", fingerprint: request.fingerprint)
            return issue(requestID, .createOrder(command), attempts: 1)
        }
    }

    private func keyProblem(_ key: String) -> String? {
        if key.isEmpty { return "must not be empty" }
        if key.utf8.count > configuration.maxIdempotencyKeyLength { return "must be at most \(configuration.maxIdempotencyKeyLength) bytes" }
        if !key.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) { return "must be printable ASCII without spaces" }
        return nil
    }

    private mutating func issue(_ requestID: RequestID, _ command: StoreCommand, attempts: Int) -> [Effect] {
        nextTicket += 1
        let ticket = Ticket(nextTicket)
        pending[ticket] = Pending(requestID: requestID, command: command, attempts: attempts)
        return [.store(ticket, command)]
    }

    private mutating func complete(_ request: Pending, _ result: StoreResult) -> [Effect] {
        switch result {
        case .unknown where request.attempts < configuration.maxUnknownAttempts:
            // Maybe committed: asking again is safe (idempotent on the key) and tells us which.
            return [.note(.unknownOutcome("intake"))] + issue(request.requestID, request.command, attempts: request.attempts + 1)
        case .unknown:
            return [.respond(request.requestID, .unavailable("the database did not confirm the transaction; retry with the same Idempotency-Key"))]
        case .failed(let failure):
            return [.respond(request.requestID, .unavailable(Self.describe(failure)))]
        case .committed(let reply):
            return [.respond(request.requestID, response(to: reply, of: request.command))] + notes(for: reply)
        }
    }

    private func response(to reply: StoreReply, of command: StoreCommand) -> IntakeResponse {
        switch (reply, command) {
        case (.orderCreated(let order), _): .created(order)
        case (.orderReplayed(let order), _): .replayed(order)
        case (.idempotencyKeyReused, _): .idempotencyKeyReused
        case (.transitioned(let order), _): .statusChanged(order)
        case (.orderNotFound, .transition(let t)): .notFound(t.orderID)
        case (.illegalTransition(let from), .transition(let t)): .illegalTransition(t.orderID, from: from, to: t.to)
        default: .unavailable("the store answered \(reply) to \(command)")
        }
    }

    private func notes(for reply: StoreReply) -> [Effect] {
        switch reply {
        case .orderCreated(let order): [.note(.orderAccepted(order.id, replayed: false))]
        case .orderReplayed(let order): [.note(.orderAccepted(order.id, replayed: true))]
        default: []
        }
    }

    static func describe(_ failure: StoreFailure) -> String {
        switch failure {
        case .unavailable(let reason): "the database is unavailable: \(reason)"
        case .timedOut: "the database did not answer in time"
        case .conflict(let reason): "the transaction conflicted with another: \(reason)"
        }
    }
}
