/// Brings back orders the broker lost: every `interval` it asks the store to re-announce orders that were published
/// but are still Pending `overdueAfter` later (`StoreCommand.reannounceOverdue`). The event goes out again with its
/// derived id, so a copy the consumer already handled is removed by the inbox; one the broker lost after
/// acknowledging it (retention expired while the group was down, an unclean leader election, a memory-only broker
/// restarting) reaches the consumer at last. Without it such an order stays Pending forever and no lag shows it.
public struct Reconciler: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// How long after its publication a Pending order counts as lost; longer than the consumer's normal delay.
        public var overdueAfter: Duration = .seconds(300)
        public var interval: Duration = .seconds(30)
        public var limit = 500
        public init() {}
    }

    public let configuration: Configuration
    private var nextTicket: UInt64 = 0
    private var awaiting: Ticket?

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    public mutating func handle(_ input: Input, now: Instant) -> [Effect] {
        switch input {
        case .start:
            awaiting = nil
            return [.setTimer(.poll, at: now + configuration.interval)]
        case .timer(.poll):
            guard awaiting == nil else { return [] }
            nextTicket += 1
            awaiting = Ticket(nextTicket)
            return [.store(Ticket(nextTicket), .reannounceOverdue(overdueAfter: configuration.overdueAfter, limit: configuration.limit))]
        case let .stored(ticket, result):
            guard ticket == awaiting else { return [] }
            awaiting = nil
            var effects: [Effect] = [.setTimer(.poll, at: now + configuration.interval)]
            switch result {
            case .committed(.reannounced(let orders)) where !orders.isEmpty: effects.append(.note(.reannounced(orders)))
            case .committed(.reannounced): break
            case .committed(let reply): effects.append(.note(.unexpected("reannounceOverdue answered \(reply.summary)")))
            case .failed, .unknown: effects.append(.note(.storeRetry("reconciler")))  // idempotent: the next round asks again
            }
            return effects
        case .timer(.retry), .timer(.gather), .timer(.commit), .wake, .published, .fetched, .assigned, .offsetsCommitted, .createOrder, .changeStatus:
            return []
        }
    }
}
