import OrderPipelineCore
import OrderPipelineRuntime
import Synchronization

/// A store that answers the relay's recipes from memory, with a delay drawn per call so that results complete out
/// of order, as the pool's do. Hands each row out once.
public final class FakeOutboxStore: StorePerforming {
    public struct State: Sendable {
        public var unpublished: [OutboxMessage]
        public var published: [Int64] = []
        public var retried: [Int64] = []
        public var rejected: [Int64] = []
        public var claims = 0
    }
    public let state: Mutex<State>

    public init(rows: [OutboxMessage]) { state = Mutex(State(unpublished: rows)) }

    public func perform(_ command: StoreCommand) async -> StoreResult {
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...3)))
        return state.withLock { state in
            switch command {
            case .releaseClaims: return .committed(.released(rows: 0))
            case .claimOutbox(let claim):
                state.claims += 1
                let batch = Array(state.unpublished.prefix(claim.limit))
                state.unpublished.removeFirst(batch.count)
                return .committed(.claimed(batch))
            case .settleOutbox(let settlement):
                state.published += settlement.published
                state.retried += settlement.retries.map(\.sequence)
                state.rejected += settlement.rejections.map(\.sequence)
                return .committed(.settled(rows: settlement.published.count + settlement.retries.count + settlement.rejections.count))
            default:
                return .failed(.unavailable("not a relay recipe"))
            }
        }
    }
}

/// A broker that delivers everything, or refuses the first `refusals` messages with `com.microsoft:server-busy`.
public final class FakePublisher: OutboxPublishing {
    /// The sequences delivered, in the order they were.
    public let sent = Mutex<[Int64]>([])
    let refusals: Mutex<Int>
    public init(refusals: Int = 0) { self.refusals = Mutex(refusals) }

    public func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome] {
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...3)))
        return messages.map { message in
            if refusals.withLock({ left in
                defer { left = max(0, left - 1) }; return left > 0
            }) {
                return .refused(condition: "com.microsoft:server-busy", description: "The server is busy.")
            }
            sent.withLock { $0.append(message.sequence) }
            return .delivered
        }
    }

    /// Never asked for: this broker never reports an unusable session.
    public func reset() {}
}

/// Sample data the suites share.
public enum Sample {
    /// The `n`-th sample order id: distinct for every `n`, recognisable in a database (it starts with 1111).
    public static func orderID(_ n: UInt64) -> OrderID {
        OrderID(UUID128(high: 0x1111_0000_0000_4000 | n << 16, low: 0x8000_0000_0000_0000 | n))
    }

    /// The seed's example order: John Smith buys a laptop.
    public static func order(_ id: OrderID, status: OrderStatus = .pending, at createdAt: Instant) -> Order {
        Order(
            id: id, customerName: "John Smith", customerEmail: "john@example.com",
            items: [OrderItem(productName: "Laptop", quantity: 1, unitPrice: Money(cents: 99_999))], totalAmount: Money(cents: 99_999),
            status: status, createdAt: createdAt)
    }

    /// An outbox row carrying the creation event of `Sample.order(order)`.
    public static func row(_ sequence: Int64, order: OrderID, at: Instant, attempts: Int = 1) -> OutboxMessage {
        OutboxMessage(
            sequence: sequence, event: PipelineEvent(type: .orderCreated, order: Sample.order(order, at: at), at: at, includeOrder: true),
            attempts: attempts)
    }
}
