import Logging
import OrderPipelineCore
import Synchronization
import Tracing

/// The production shell of `OrderIntake`: one `MachineRunner` serves every request. A request's input goes in
/// with a fresh order id and the wall clock, and the request waits for its answer. Each store effect's result is
/// fed back from the thread that finished it (PostgreSQL: the connection's, so a request crosses threads twice:
/// event loop → connection → event loop); the answers it leads to wake the requests they are for (one create
/// transaction answers every request of its batch). The machine makes every decision (validation,
/// idempotency, batching, retry of unknown outcomes); the shell only does I/O.
///
/// The runner and the waiting requests are guarded by one mutex, touched only between awaits.
public final class IntakeShell: Sendable {
    private struct State: ~Copyable {
        var runner: MachineRunner<OrderIntake>
        var waiting: [RequestID: CheckedContinuation<IntakeResponse, Never>] = [:]
    }

    private let state: Mutex<State>
    private let nextRequest = Atomic<UInt64>(0)
    private let store: any StorePerforming
    private let observer: NoteObserver
    private let clock: @Sendable () -> Instant
    private let tracer: any Tracer

    public init(
        store: any StorePerforming, configuration: OrderIntake.Configuration = .init(), logger: Logger,
        metrics: PipelineMetrics = PipelineMetrics(), clock: @escaping @Sendable () -> Instant = WallClock.now,
        tracer: any Tracer = InstrumentationSystem.tracer
    ) {
        self.store = store
        self.tracer = tracer
        self.observer = NoteObserver(logger: logger, metrics: metrics)
        self.clock = clock
        var runner = MachineRunner(OrderIntake(configuration: configuration))
        var performers = RequestPerformers(observer: observer)
        runner.handle(.start, now: clock(), performers: &performers)
        self.state = Mutex(State(runner: runner))
    }

    /// Requests not answered yet: in a create or status transaction, or waiting for a create transaction.
    public var requestsInFlight: Int { state.withLock { $0.runner.machine.inFlight } }

    /// `POST /api/orders`: the raw body, as the client sent it, and the caller's `traceparent` if it sent a valid
    /// one (the request's trace continues it, or starts a new one).
    public func createOrder(body: [UInt8], idempotencyKey: String?, traceParent: TraceParent? = nil) async -> IntakeResponse {
        await serve("POST", "/api/orders", caller: traceParent) { request, trace, random in
            let id = OrderID(UUID128.random(using: &random))
            return .createOrder(request, body: body, idempotencyKey: idempotencyKey, newOrderID: id, trace: trace)
        }
    }

    /// `PATCH /api/orders/{id}/status`: the raw body, as the client sent it, and the caller's `traceparent`.
    public func changeStatus(_ id: OrderID, body: [UInt8], traceParent: TraceParent? = nil) async -> IntakeResponse {
        await serve("PATCH", "/api/orders/{id}/status", caller: traceParent) { request, trace, _ in
            .changeStatus(request, id, body: body, trace: trace)
        }
    }

    /// One request in its server span, a child of the caller's. The trace the request writes is the span's own
    /// context when the tracer propagates W3C; otherwise (the no-op tracer) our own: `TraceParent.forRequest`.
    private func serve(
        _ method: String, _ route: String, caller: TraceParent?,
        _ input: (RequestID, TraceParent, inout SystemRandomNumberGenerator) -> Input
    ) async -> IntakeResponse {
        let context = TraceCarrier.context(continuing: caller, tracer: tracer, base: .current ?? .topLevel)
        return await tracer.withSpan("\(method) \(route)", context: context, ofKind: .server) { span in
            span.attributes["http.request.method"] = method
            span.attributes["http.route"] = route
            let request = nextRequest.add(1, ordering: .relaxed).newValue
            var random = SystemRandomNumberGenerator()
            let trace = TraceCarrier.traceParent(of: span, tracer: tracer) ?? TraceParent.forRequest(caller, using: &random)
            let response = await drive(request, input(request, trace, &random))
            switch response {
            case .created(let order), .replayed(let order), .statusChanged(let order):
                span.attributes[SpanKey.orderID] = order.id.description
            case .notFound(let id), .illegalTransition(let id, _, _):
                span.attributes[SpanKey.orderID] = id.description
            case .unavailable:
                span.setStatus(SpanStatus(code: .error, message: "database unavailable"))  // the reason is logged, not traced
            case .rejected, .idempotencyKeyReused:
                break  // the client's mistake: not a server error
            }
            span.attributes[SpanKey.outcome] = response.outcome
            return response
        }
    }

    private func drive(_ request: RequestID, _ input: Input) async -> IntakeResponse {
        await withCheckedContinuation { answer in feed(input, waiting: (request, answer)) }
    }

    /// Hands an input to the machine (registering the request that waits, if any), wakes the requests it answered
    /// and starts its store effects.
    private func feed(_ input: Input, waiting request: (RequestID, CheckedContinuation<IntakeResponse, Never>)? = nil) {
        var performers = RequestPerformers(observer: observer)
        let answered = state.withLock { state in
            if let (id, answer) = request { state.waiting[id] = answer }
            state.runner.handle(input, now: clock(), performers: &performers)
            return performers.responses.map { (state.waiting.removeValue(forKey: $0.request), $0) }
        }
        for (waiter, response) in answered {
            guard let waiter else {
                observer.observe(.unexpected("request \(response.request) was answered twice"))
                continue
            }
            waiter.resume(returning: response.response)
        }
        for (ticket, command) in performers.stores {
            store.perform(command) { self.feed(.stored(ticket, $0)) }
        }
    }
}

/// What one input made the intake machine do: store effects to perform, answers to hand over.
struct RequestPerformers: EffectPerformers {
    let observer: NoteObserver
    var stores: [(Ticket, StoreCommand)] = []
    var responses: [(request: RequestID, response: IntakeResponse)] = []

    mutating func store(_ command: StoreCommand, ticket: Ticket) { stores.append((ticket, command)) }
    mutating func respond(_ response: IntakeResponse, to request: RequestID) { responses.append((request, response)) }
    mutating func observe(_ note: Note) { observer.observe(note) }
}

extension IntakeResponse {
    /// The answer's kind, for the request's span.
    var outcome: String {
        switch self {
        case .created: "created"
        case .replayed: "replayed"
        case .statusChanged: "status-changed"
        case .rejected: "rejected"
        case .idempotencyKeyReused: "idempotency-key-reused"
        case .notFound: "not-found"
        case .illegalTransition: "illegal-transition"
        case .unavailable: "unavailable"
        }
    }
}
