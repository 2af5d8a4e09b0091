#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import OrderPipelineCore
import OrderPipelinePostgres
import Synchronization

/// Anything that performs store commands: the PostgreSQL adapter in production, fakes in tests.
public protocol StorePerforming: Sendable {
    func perform(_ command: StoreCommand) async -> StoreResult
}

extension PostgresStore: StorePerforming {}

/// The wall clock as the machines see it: microseconds since the Unix epoch.
public enum WallClock {
    public static func now() -> Instant {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Instant(microseconds: Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1_000)
    }
}

/// The production shell of `OrderIntake`: feeds it requests with a fresh order id and the wall clock, performs
/// its `.store` effects on the store, feeds the results back and returns its `.respond`. The machine makes every
/// decision (validation, idempotency, retry of unknown outcomes); the shell only does I/O.
///
/// One machine serves every request: it is guarded by a mutex and only touched between awaits, so requests run
/// concurrently while each request's effects are performed in order.
public final class IntakeShell: Sendable {
    private let machine: Mutex<OrderIntake>
    private let nextRequest = Atomic<UInt64>(0)
    private let store: any StorePerforming
    private let logger: Logger
    private let metrics: PipelineMetrics?
    private let clock: @Sendable () -> Instant

    public init(
        store: any StorePerforming, configuration: OrderIntake.Configuration = .init(), logger: Logger,
        metrics: PipelineMetrics? = nil, clock: @escaping @Sendable () -> Instant = WallClock.now
    ) {
        self.machine = Mutex(OrderIntake(configuration: configuration))
        self.store = store
        self.logger = logger
        self.metrics = metrics
        self.clock = clock
        _ = machine.withLock { $0.handle(.start, now: clock()) }
    }

    /// `POST /api/orders`.
    public func createOrder(body: [UInt8], idempotencyKey: String?) async -> IntakeResponse {
        let request = nextRequest.add(1, ordering: .relaxed).newValue
        var random = SystemRandomNumberGenerator()
        let id = OrderID(UUID128.random(using: &random))
        return await drive(request, .createOrder(request, body: body, idempotencyKey: idempotencyKey, newOrderID: id))
    }

    /// `PATCH /api/orders/{id}/status`.
    public func changeStatus(_ id: OrderID, to status: OrderStatus, reason: String?) async -> IntakeResponse {
        let request = nextRequest.add(1, ordering: .relaxed).newValue
        return await drive(request, .changeStatus(request, id, to: status, reason: reason))
    }

    private func drive(_ request: RequestID, _ input: Input) async -> IntakeResponse {
        var effects = machine.withLock { $0.handle(input, now: clock()) }
        var response: IntakeResponse?
        var index = 0
        while index < effects.count {
            let effect = effects[index]
            index += 1
            switch effect {
            case let .store(ticket, command):
                let result = await store.perform(command)
                effects += machine.withLock { $0.handle(.stored(ticket, result), now: clock()) }
            case let .respond(id, answer) where id == request:
                response = answer
            case .note(let note):
                observe(note)
            case .respond, .publish, .forwardDeadLetter, .fetch, .commitOffsets, .setTimer, .cancelTimer:
                // The intake machine never asks for these; nothing to do.
                break
            }
        }
        return response ?? .unavailable("the request was not answered")
    }

    private func observe(_ note: Note) {
        switch note {
        case .orderAccepted(let id, let replayed):
            if replayed {
                logger.info("Order \(id) replayed for a retried request", metadata: ["order.id": "\(id)"])
                metrics?.ordersReplayed.increment()
            } else {
                logger.info("Order \(id) created and outbox message queued", metadata: ["order.id": "\(id)"])
                metrics?.ordersCreated.increment()
            }
        case .unknownOutcome(let what):
            logger.warning("Transaction outcome unknown; retrying with the same idempotency key", metadata: ["store.command": "\(what)"])
            metrics?.unknownOutcomes.increment()
        default:
            logger.debug("note", metadata: ["note": "\(note)"])
        }
    }
}
