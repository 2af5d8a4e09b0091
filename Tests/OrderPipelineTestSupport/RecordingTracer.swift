import OrderPipelineCore
import Synchronization
import Tracing

/// A tracer for tests: keeps every span it starts, and propagates W3C `traceparent` as a real tracer's instrument
/// does (extract: the caller's span becomes the parent; inject: the span's own ids). Span ids count up from 1, so
/// they are distinct and readable; a new trace's id counts up too.
public final class RecordingTracer: Tracer {
    /// A span's place in its trace; what the context carries and `traceparent` spells.
    public struct SpanIDs: Hashable, Sendable {
        public var traceID: String
        public var spanID: String
        public var traceParent: String { "00-\(traceID)-\(spanID)-01" }
    }

    enum IDsKey: ServiceContextKey { typealias Value = SpanIDs }

    public final class RecordedSpan: Tracing.Span {
        public let context: ServiceContext
        public let kind: SpanKind
        /// The parent's span id (the caller's, extracted, or a local span's); nil for a new trace.
        public let parentID: String?
        public let ids: SpanIDs
        private struct State {
            var name: String
            var attributes: SpanAttributes = [:]
            var status: SpanStatus?
            var ended = false
        }
        private let state: Mutex<State>
        private let onEnd: @Sendable (RecordedSpan) -> Void

        init(name: String, context: ServiceContext, kind: SpanKind, parentID: String?, ids: SpanIDs, onEnd: @escaping @Sendable (RecordedSpan) -> Void) {
            self.context = context
            self.kind = kind
            self.parentID = parentID
            self.ids = ids
            self.state = Mutex(State(name: name))
            self.onEnd = onEnd
        }

        public var operationName: String {
            get { state.withLock { $0.name } }
            set { state.withLock { $0.name = newValue } }
        }
        public var attributes: SpanAttributes {
            get { state.withLock { $0.attributes } }
            set { state.withLock { $0.attributes = newValue } }
        }
        public var status: SpanStatus? { state.withLock { $0.status } }
        public var isRecording: Bool { !state.withLock { $0.ended } }

        /// A string attribute as text, an integer one as its decimal digits.
        public func attribute(_ key: String) -> String? {
            switch attributes[key]?.toSpanAttribute() {
            case .string(let text): text
            case .int64(let value): String(value)
            case .int32(let value): String(value)
            default: nil
            }
        }

        public func setStatus(_ status: SpanStatus) { state.withLock { $0.status = status } }
        public func addEvent(_ event: SpanEvent) {}
        public func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {
            setStatus(SpanStatus(code: .error, message: "\(error)"))
        }
        public func addLink(_ link: SpanLink) {}
        public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
            let first = state.withLock { state in
                defer { state.ended = true }
                return !state.ended
            }
            if first { onEnd(self) }
        }
    }

    /// Ended spans, in the order they ended.
    public var spans: [RecordedSpan] { ended.withLock { $0 } }
    private let ended = Mutex<[RecordedSpan]>([])
    private let lastID = Atomic<UInt64>(0)

    public init() {}

    public func span(named name: String) -> RecordedSpan? { spans.first { $0.operationName == name } }

    private func nextID() -> String {
        let digits = String(lastID.add(1, ordering: .relaxed).newValue, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    public func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind, at instant: @autoclosure () -> Instant,
        function: String, file fileID: String, line: UInt
    ) -> RecordedSpan {
        var context = context()
        let parent = context[IDsKey.self]
        let ids = SpanIDs(traceID: parent?.traceID ?? "7e57" + String(repeating: "0", count: 12) + nextID(), spanID: nextID())
        context[IDsKey.self] = ids
        return RecordedSpan(name: operationName, context: context, kind: kind, parentID: parent?.spanID, ids: ids) { [weak self] span in
            self?.ended.withLock { $0.append(span) }
        }
    }

    public func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract)
    where Extract.Carrier == Carrier {
        guard let text = extractor.extract(key: "traceparent", from: carrier), let trace = TraceParent(text) else { return }
        context[IDsKey.self] = SpanIDs(traceID: trace.traceID, spanID: trace.parentID)
    }

    public func inject<Carrier, Inject: Injector>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject)
    where Inject.Carrier == Carrier {
        guard let ids = context[IDsKey.self] else { return }
        injector.inject(ids.traceParent, forKey: "traceparent", into: &carrier)
    }

    public func forceFlush() {}
}
