import CQpidProton
import OrderPipelineCore

/// The transfers of `AMQPEngine`, on its proactor thread: sending queued messages as credit allows, turning
/// dispositions into outcomes, receiving, and expiring sends past their deadline.
extension AMQPEngine {
    func sendQueued() {
        guard case .sender = role, let link, pn_link_state(link) & PN_REMOTE_ACTIVE != 0 else { return }
        let credit = Int(pn_link_credit(link))
        guard credit > 0 else { return }
        // As many as the credit allows, taken under one lock.
        let sendable = state.withLock { state -> ArraySlice<Pending> in
            let taken = state.queue.prefix(credit)
            state.queue.removeFirst(taken.count)
            for pending in taken { state.inflight[pending.token] = pending }
            return taken
        }
        for pending in sendable {
            var tag = pending.token.bigEndian
            let delivery = withUnsafeBytes(of: &tag) { raw in
                pn_delivery(link, pn_dtag(raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count))
            }
            pn_delivery_set_context(delivery, UnsafeMutableRawPointer(bitPattern: UInt(pending.token)))
            _ = pending.bytes.withUnsafeBytes { raw in pn_link_send(link, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) }
            pn_link_advance(link)
        }
    }

    func settled(_ delivery: OpaquePointer) {
        guard pn_delivery_updated(delivery) else { return }
        let remote = pn_delivery_remote_state(delivery)
        guard remote == UInt64(PN_ACCEPTED) || remote == UInt64(PN_REJECTED) || remote == UInt64(PN_RELEASED) || remote == UInt64(PN_MODIFIED) else { return }
        let token = UInt64(UInt(bitPattern: pn_delivery_get_context(delivery)))
        let outcome: PublishOutcome
        switch remote {
        case UInt64(PN_ACCEPTED):
            outcome = .delivered
        default:
            var condition = ""
            var description = ""
            if let error = pn_disposition_condition(pn_delivery_remote(delivery)), pn_condition_is_set(error) {
                condition = pn_condition_get_name(error).map { String(cString: $0) } ?? ""
                description = pn_condition_get_description(error).map { String(cString: $0) } ?? ""
            }
            if remote == UInt64(PN_REJECTED) {
                // The broker refused this message; the relay machine judges the condition (`Refusal`).
                outcome = .refused(condition: condition.isEmpty ? "amqp:rejected" : condition, description: description)
            } else {
                // Released / modified: "not taken, try again".
                outcome = .failed(retriable: true, reason: remote == UInt64(PN_RELEASED) ? "released" : "modified")
            }
        }
        pn_delivery_settle(delivery)
        let pending = state.withLock { $0.inflight.removeValue(forKey: token) }
        pending?.answer(outcome)
    }

    func received(_ delivery: OpaquePointer, _ handler: @Sendable (AMQPMessage) -> Void) {
        guard let link = pn_delivery_link(delivery), let bytes = Self.read(delivery, on: link) else { return }
        if let message = AMQPMessage.decode(bytes) { handler(message) }
        Self.acceptAndCredit(delivery, on: link)
    }

    /// The bytes of a complete incoming delivery (the link advances past it), or nil while it is partial.
    static func read(_ delivery: OpaquePointer, on link: OpaquePointer) -> [UInt8]? {
        guard pn_delivery_readable(delivery), !pn_delivery_partial(delivery) else { return nil }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { raw in pn_link_recv(link, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) }
            if count <= 0 { break }
            bytes += chunk.prefix(count)
        }
        pn_link_advance(link)
        return bytes
    }

    /// Accepts and settles an incoming delivery and gives the sender credit for one more.
    static func acceptAndCredit(_ delivery: OpaquePointer, on link: OpaquePointer) {
        pn_delivery_update(delivery, UInt64(PN_ACCEPTED))
        pn_delivery_settle(delivery)
        pn_link_flow(link, 1)
    }

    /// Sends that waited too long: never sent → retriable failure; sent without disposition → unknown.
    func expire() {
        let now = ContinuousClock.now
        let (unsent, unanswered, error) = state.withLock { state in
            let unsent = state.queue.filter { $0.deadline <= now }
            state.queue.removeAll { $0.deadline <= now }
            let unanswered = state.inflight.values.filter { $0.deadline <= now }
            for pending in unanswered { state.inflight[pending.token] = nil }
            return (unsent, unanswered, state.lastError)
        }
        for pending in unsent { pending.answer(.failed(retriable: true, reason: "not sent in time: \(error ?? "link not open")")) }
        for pending in unanswered { pending.answer(.unknown("no disposition in time")) }
    }
}

/// The messages of one `AMQPEngine.send`: its caller is resumed once, when every message has its outcome. After
/// `send` queued it, only the proactor thread touches it.
final class SendBatch: @unchecked Sendable {
    private var outcomes: [PublishOutcome?]
    private var unanswered: Int
    private let continuation: CheckedContinuation<[PublishOutcome], Never>

    init(count: Int, continuation: CheckedContinuation<[PublishOutcome], Never>) {
        outcomes = Array(repeating: nil, count: count)
        unanswered = count
        self.continuation = continuation
    }

    /// The first outcome of a message counts; the batch is answered when the last one arrives.
    func answer(_ index: Int, _ outcome: PublishOutcome) {
        guard outcomes[index] == nil else { return }
        outcomes[index] = outcome
        unanswered -= 1
        if unanswered == 0 { continuation.resume(returning: outcomes.map { $0 ?? .unknown("no outcome") }) }
    }
}
