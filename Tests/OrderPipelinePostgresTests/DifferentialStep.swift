import OrderPipelineCore

/// One step of a differential sequence: a `StoreCommand` in a compact form that prints as Swift source, so a
/// shrunk failing sequence can be pasted into a test (`Step.swift`), and that maps to the command in one place
/// (`command`). If a `StoreCommand` field changes, only `command` (and the generator's choice of values) changes.
///
/// Times are microseconds after `t0`; orders are `orderID(n)` of the contract fixtures; bodies index `Step.bodies`.
/// `at` is the database's clock (`now()`) while the step runs, and also the time a step stamps itself (an event's or
/// a transition's); `release` reads no clock and runs at the previous step's. Durations are microseconds.
enum Step: Hashable, Sendable {
    case create(order: UInt64, key: String, body: Int, at: Int64)
    /// Creates committed as one transaction (the intake's group commit): `.create` steps with distinct keys.
    indirect case createBatch([Step])
    case transition(order: UInt64, to: OrderStatus, at: Int64, reason: String?)
    /// `takeOver`: the claim takes over expired leases first (`OutboxClaim.takeOverExpiredLeases`).
    case claim(OutboxKind, owner: String, limit: Int, at: Int64, lease: Int64, takeOver: Bool = false)
    case settle(OutboxKind, owner: String, at: Int64, published: [Int64], retries: [Retry], rejections: [Rejection])
    case release(OutboxKind, owner: String)
    /// Deliveries fulfilled as one batch, in order (the consumer's transaction over a fetched batch).
    case fulfil([Delivery], at: Int64)
    case deadLetter(source: String, reason: String, payload: [UInt8], at: Int64)
    /// The step with its own time `by` microseconds off the database's clock (the API's or consumer's host clock
    /// skewed): what it stamps (an event's time, a transition's, a dead letter's) moves, `now()` does not.
    indirect case skewed(Step, by: Int64)

    struct Retry: Hashable, Sendable {
        var sequence: Int64
        var delay: Int64
        var error: String
        init(_ sequence: Int64, delay: Int64, _ error: String) {
            self.sequence = sequence
            self.delay = delay
            self.error = error
        }
    }

    /// A delivery of the event `type` of order `order` (its id is the derived one, as every copy's is).
    struct Delivery: Hashable, Sendable {
        var order: UInt64
        var type: EventType
        init(_ order: UInt64, _ type: EventType) {
            self.order = order
            self.type = type
        }
    }

    struct Rejection: Hashable, Sendable {
        var sequence: Int64
        var reason: String
        init(_ sequence: Int64, _ reason: String) {
            self.sequence = sequence
            self.reason = reason
        }
    }

    static func instant(_ micros: Int64) -> Instant { Instant(microseconds: t0.microseconds + micros) }

    /// The database's clock while this step runs (nil: the step reads none).
    var time: Int64? {
        switch self {
        case .create(_, _, _, let at), .transition(_, _, let at, _), .claim(_, _, _, let at, _, _), .settle(_, _, let at, _, _, _),
            .fulfil(_, let at), .deadLetter(_, _, _, let at):
            at
        case .release:
            nil
        case .createBatch(let members):
            members.first?.time
        case .skewed(let step, _):
            step.time
        }
    }

    /// The step as the application stamps it: `at` moved by a skew.
    private func shifted(by skew: Int64) -> Step {
        switch self {
        case .create(let n, let key, let body, let at): .create(order: n, key: key, body: body, at: at + skew)
        case .createBatch(let members): .createBatch(members.map { $0.shifted(by: skew) })
        case .transition(let n, let to, let at, let reason): .transition(order: n, to: to, at: at + skew, reason: reason)
        case .fulfil(let deliveries, let at): .fulfil(deliveries, at: at + skew)
        case .deadLetter(let source, let reason, let payload, let at): .deadLetter(source: source, reason: reason, payload: payload, at: at + skew)
        case .claim, .settle, .release, .skewed: self
        }
    }

    /// Whether the step stamps a time of its own (one a skewed host clock moves).
    var stamps: Bool {
        switch self {
        case .create, .createBatch, .transition, .fulfil, .deadLetter: true
        case .claim, .settle, .release, .skewed: false
        }
    }

    /// The step without a skew.
    var unskewed: Step {
        if case .skewed(let step, _) = self { return step.unskewed }
        return self
    }

    /// Request bodies the generator picks from; the same body always has the same fingerprint. Names and products
    /// carry what JSON and SQL text must survive: quotes, backslashes, commas, braces, non-ASCII.
    static let bodies: [OrderRequest] = [
        request("John Smith", "john@example.com", [("Laptop", 1, "999.99"), ("Mouse \"pro\"", 2, "10.50")]),
        request("Zoë O'Brien", "zoe@example.org", [("Café crème, large", 3, "4.20")]),
        request(#"Back\slash {NULL}"#, "b@example.net", [("{\"a\",b}", 1, "0.00"), ("NULL", 10_000, "1000000.00")]),
        request("李小龍 🐉", "li@example.cn", [("茶", 7, "0.01")]),
        request("John Smith", "john@example.com", [("Laptop", 1, "999.99")]),
    ]

    private static func request(_ name: String, _ email: String, _ items: [(String, Int, String)]) -> OrderRequest {
        var json = JSONWriter()
        json.object { json in
            json.field("customerName", name)
            json.field("customerEmail", email)
            json.key("items")
            json.array { json in
                for (product, quantity, price) in items {
                    json.object { json in
                        json.field("productName", product)
                        json.field("quantity", quantity)
                        json.key("unitPrice"); json.number(text: price)
                    }
                }
            }
        }
        guard case .success(let request) = OrderRequest.parse(json.bytes) else { fatalError("fixture body does not parse: \(name)") }
        return request
    }

    /// The store command this step stands for.
    var command: StoreCommand {
        switch self {
        case .skewed(let step, let skew):
            return step.shifted(by: skew).command
        case .create(let n, let key, let body, let at):
            let request = Step.bodies[body]
            let order = Order(
                id: orderID(n), customerName: request.customerName, customerEmail: request.customerEmail,
                items: request.items, totalAmount: request.totalAmount, createdAt: Step.instant(at))
            let event = PipelineEvent(type: .orderCreated, order: order, at: Step.instant(at), includeOrder: true)
            return .createOrders([NewOrder(order: order, event: event, idempotencyKey: key, fingerprint: request.fingerprint)])
        case .createBatch(let members):
            let orders = members.flatMap { member -> [NewOrder] in
                guard case .createOrders(let one) = member.command else { return [] }
                return one
            }
            return .createOrders(orders)
        case .transition(let n, let to, let at, let reason):
            return .transition(OrderTransition(orderID: orderID(n), to: to, at: Step.instant(at), reason: reason))
        case .claim(let outbox, let owner, let limit, _, let lease, let takeOver):
            return .claimOutbox(OutboxClaim(outbox: outbox, owner: owner, limit: limit, lease: .microseconds(lease), takeOverExpiredLeases: takeOver))
        case .settle(let outbox, let owner, _, let published, let retries, let rejections):
            var settlement = OutboxSettlement(
                outbox: outbox, owner: owner, published: published,
                retries: retries.map { .init(sequence: $0.sequence, delay: .microseconds($0.delay), error: $0.error) },
                rejections: rejections.map { .init(sequence: $0.sequence, reason: $0.reason) })
            // Kafka reports a position for most deliveries (a function of the sequence: replay files stay as they are).
            if outbox == .kafka {
                for sequence in published where sequence % 4 != 0 {
                    settlement.positions[sequence] = RecordPosition(partition: Int32(sequence % 3), offset: sequence * 7)
                }
            }
            return .settleOutbox(settlement)
        case .release(let outbox, let owner):
            return .releaseClaims(outbox: outbox, owner: owner)
        case .fulfil(let deliveries, let at):
            return .fulfil(
                deliveries.map { delivery in
                    let id = orderID(delivery.order)
                    let envelope = EventEnvelope(id: .derived(order: id, type: delivery.type), type: delivery.type, orderID: id)
                    return Fulfilment(envelope: envelope, at: Step.instant(at))
                })
        case .deadLetter(let source, let reason, let payload, let at):
            return .deadLetter(DeadLetter(source: source, reason: reason, payload: payload, at: Step.instant(at)))
        }
    }
}

extension Step: CustomStringConvertible {
    /// Swift source for this step (paste a sequence into `[ … ]`).
    var description: String {
        func text(_ s: String) -> String { String(reflecting: s) }
        switch self {
        case .skewed(let step, let skew):
            return ".skewed(\(step), by: \(skew))"
        case .create(let n, let key, let body, let at):
            return ".create(order: \(n), key: \(text(key)), body: \(body), at: \(at))"
        case .createBatch(let members):
            return ".createBatch([\(members.map(\.description).joined(separator: ", "))])"
        case .transition(let n, let to, let at, let reason):
            return ".transition(order: \(n), to: .\(to), at: \(at), reason: \(reason.map(text) ?? "nil"))"
        case .claim(let outbox, let owner, let limit, let at, let lease, let takeOver):
            return ".claim(.\(outbox), owner: \(text(owner)), limit: \(limit), at: \(at), lease: \(lease)\(takeOver ? ", takeOver: true" : ""))"
        case .settle(let outbox, let owner, let at, let published, let retries, let rejections):
            let r = retries.map { ".init(\($0.sequence), delay: \($0.delay), \(text($0.error)))" }
            let j = rejections.map { ".init(\($0.sequence), \(text($0.reason)))" }
            return ".settle(.\(outbox), owner: \(text(owner)), at: \(at), published: \(published), "
                + "retries: [\(r.joined(separator: ", "))], rejections: [\(j.joined(separator: ", "))])"
        case .release(let outbox, let owner):
            return ".release(.\(outbox), owner: \(text(owner)))"
        case .fulfil(let deliveries, let at):
            return ".fulfil([\(deliveries.map { ".init(\($0.order), .\($0.type))" }.joined(separator: ", "))], at: \(at))"
        case .deadLetter(let source, let reason, let payload, let at):
            let bytes = payload.map { "0x" + String($0, radix: 16, uppercase: true) }
            return ".deadLetter(source: \(text(source)), reason: \(text(reason)), payload: [\(bytes.joined(separator: ", "))], at: \(at))"
        }
    }

    /// A whole sequence as a Swift array literal, one step a line.
    static func source(_ steps: [Step]) -> String {
        "[\n" + steps.map { "    \($0),\n" }.joined() + "]"
    }
}
