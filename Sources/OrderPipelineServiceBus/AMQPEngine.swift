import CQpidProton
import Foundation
import Logging
import OrderPipelineCore
import Synchronization

/// A message as the adapter sends and receives it (no proton types above this file).
public struct AMQPMessage: Hashable, Sendable {
    public var messageID: String?
    public var subject: String?
    public var contentType: String?
    public var applicationProperties: [String: String]
    public var body: [UInt8]
    /// An AMQP value section holding a string instead of a data section (CBS requests carry the token so).
    public var bodyText: String?
    public var correlationID: String?
    public var replyTo: String?
    public var to: String?

    public init(messageID: String?, subject: String?, contentType: String?, applicationProperties: [String: String] = [:], body: [UInt8]) {
        self.messageID = messageID
        self.subject = subject
        self.contentType = contentType
        self.applicationProperties = applicationProperties
        self.body = body
    }

    /// The AMQP 1.0 encoding (properties, application-properties, a data section).
    func encoded() -> [UInt8] {
        let message = pn_message()
        defer { pn_message_free(message) }
        if let messageID {
            messageID.withCString { pointer in _ = pn_data_put_string(pn_message_id(message), pn_bytes(strlen(pointer), pointer)) }
        }
        if let subject { pn_message_set_subject(message, subject) }
        if let contentType { pn_message_set_content_type(message, contentType) }
        if let replyTo { pn_message_set_reply_to(message, replyTo) }
        if let to { pn_message_set_address(message, to) }
        if let correlationID {
            correlationID.withCString { pointer in _ = pn_data_put_string(pn_message_correlation_id(message), pn_bytes(strlen(pointer), pointer)) }
        }
        if !applicationProperties.isEmpty {
            let properties = pn_message_properties(message)
            pn_data_put_map(properties)
            pn_data_enter(properties)
            for (key, value) in applicationProperties.sorted(by: { $0.key < $1.key }) {
                key.withCString { pointer in _ = pn_data_put_string(properties, pn_bytes(strlen(pointer), pointer)) }
                value.withCString { pointer in _ = pn_data_put_string(properties, pn_bytes(strlen(pointer), pointer)) }
            }
            pn_data_exit(properties)
        }
        if let bodyText {
            bodyText.withCString { pointer in _ = pn_data_put_string(pn_message_body(message), pn_bytes(strlen(pointer), pointer)) }
        } else {
            body.withUnsafeBytes { bytes in
                _ = pn_data_put_binary(pn_message_body(message), pn_bytes(bytes.count, bytes.baseAddress?.assumingMemoryBound(to: CChar.self)))
            }
        }
        var capacity = 512 + body.count * 2
        while true {
            var buffer = [UInt8](repeating: 0, count: capacity)
            var size = capacity
            let code = buffer.withUnsafeMutableBytes { raw in
                pn_message_encode(message, raw.baseAddress!.assumingMemoryBound(to: CChar.self), &size)
            }
            if code == PN_OVERFLOW {
                capacity *= 2
                continue
            }
            return Array(buffer.prefix(size))
        }
    }

    static func decode(_ bytes: [UInt8]) -> AMQPMessage? {
        let message = pn_message()
        defer { pn_message_free(message) }
        let code = bytes.withUnsafeBytes { raw in pn_message_decode(message, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count) }
        guard code == 0 else { return nil }
        var result = AMQPMessage(messageID: nil, subject: nil, contentType: nil, body: [])
        let id = pn_message_get_id(message)
        if id.type == PN_STRING || id.type == PN_SYMBOL { result.messageID = string(id.u.as_bytes) }
        let correlation = pn_message_get_correlation_id(message)
        if correlation.type == PN_STRING || correlation.type == PN_SYMBOL { result.correlationID = string(correlation.u.as_bytes) }
        result.replyTo = pn_message_get_reply_to(message).map { String(cString: $0) }
        result.to = pn_message_get_address(message).map { String(cString: $0) }
        result.subject = pn_message_get_subject(message).map { String(cString: $0) }
        result.contentType = pn_message_get_content_type(message).map { String(cString: $0) }
        if let properties = pn_message_properties(message) {
            pn_data_rewind(properties)
            if pn_data_next(properties), pn_data_type(properties) == PN_MAP {
                pn_data_enter(properties)
                while pn_data_next(properties) {
                    let key = pn_data_type(properties) == PN_STRING ? string(pn_data_get_string(properties)) : nil
                    guard pn_data_next(properties) else { break }
                    guard let key else { continue }
                    switch pn_data_type(properties) {
                    case PN_STRING: result.applicationProperties[key] = string(pn_data_get_string(properties))
                    case PN_INT: result.applicationProperties[key] = String(pn_data_get_int(properties))
                    case PN_LONG: result.applicationProperties[key] = String(pn_data_get_long(properties))
                    case PN_UINT: result.applicationProperties[key] = String(pn_data_get_uint(properties))
                    default: break
                    }
                }
                pn_data_exit(properties)
            }
        }
        if let body = pn_message_body(message) {
            pn_data_rewind(body)
            if pn_data_next(body) {
                switch pn_data_type(body) {
                case PN_BINARY: result.body = bytesOf(pn_data_get_binary(body))
                case PN_STRING:
                    result.body = bytesOf(pn_data_get_string(body))
                    result.bodyText = string(pn_data_get_string(body))
                default: break
                }
            }
        }
        return result
    }

    private static func bytesOf(_ bytes: pn_bytes_t) -> [UInt8] {
        guard let start = bytes.start, bytes.size > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: start, count: bytes.size))
    }

    private static func string(_ bytes: pn_bytes_t) -> String { String(decoding: bytesOf(bytes), as: UTF8.self) }
}

/// One AMQP 1.0 connection with one session and one link (a sender or a receiver), run by a qpid-proton proactor
/// on its own thread. Other threads only enqueue work and interrupt the proactor; every proton object is touched
/// on that thread alone. Reconnects after a lost connection (sends in flight then have an unknown outcome).
/// `package`: the tests' receiver (OrderPipelineTestSupport) runs one as a receiver; the pipeline only sends.
package final class AMQPEngine: @unchecked Sendable {
    package enum Role {
        case sender
        /// `credit` messages may be outstanding; each received message is accepted after `handler` ran.
        case receiver(credit: Int32, handler: @Sendable (AMQPMessage) -> Void)
    }

    private struct Pending {
        var token: UInt64
        var bytes: [UInt8]
        var deadline: ContinuousClock.Instant
        var continuation: CheckedContinuation<PublishOutcome, Never>
    }

    private struct State {
        var queue: [Pending] = []
        var inflight: [UInt64: Pending] = [:]
        var nextToken: UInt64 = 0
        var stopping = false
        var finished = false
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
        var lastError: String?
        var ready = false
    }

    let configuration: ServiceBusConfiguration
    let address: String
    private let role: Role
    private let logger: Logger
    private let state = Mutex(State())
    private let proactor: OpaquePointer
    /// The TLS settings of every connection (amqps), made once: without them the engine does not exist.
    private let tlsDomain: OpaquePointer?
    // Thread-confined (proactor thread):
    private var connection: OpaquePointer?
    private var link: OpaquePointer?
    private var nextAttempt = ContinuousClock.now
    private let containerID: String
    // CBS (Azure): a sender to `$cbs` and a receiver of its replies; the main link opens once the token is accepted.
    private var session: OpaquePointer?
    private var cbsSender: OpaquePointer?
    private var cbsReceiver: OpaquePointer?
    private var cbsNeedsToken = false
    private var cbsPendingID: String?
    private var cbsRefreshAt: ContinuousClock.Instant?
    private var cbsCounter = 0
    private var usesCBS: Bool { if case .sharedAccessKey = configuration.authentication { true } else { false } }
    /// The SAS token's lifetime; it is renewed after three quarters of it.
    static let tokenLifetime: Int64 = 3_600

    package init(configuration: ServiceBusConfiguration, address: String, role: Role, logger: Logger) throws(ServiceBusError) {
        self.configuration = configuration
        self.address = address
        self.role = role
        self.logger = logger
        try configuration.checkTransportSecurity()
        tlsDomain = configuration.useTLS ? try Self.makeTLSDomain() : nil
        guard let proactor = pn_proactor() else {
            if let tlsDomain { pn_ssl_domain_free(tlsDomain) }
            throw ServiceBusError(code: .connection, message: "pn_proactor failed")
        }
        self.proactor = proactor
        self.containerID = "orderpipeline-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let thread = Thread { [self] in self.run() }
        thread.name = "amqp-\(address)"
        thread.start()
    }

    deinit {
        pn_proactor_free(proactor)
        if let tlsDomain { pn_ssl_domain_free(tlsDomain) }
    }

    /// A client TLS domain that verifies the server's certificate and name. Fails closed: no domain, no amqps.
    private static func makeTLSDomain() throws(ServiceBusError) -> OpaquePointer {
        guard pn_ssl_present(), let domain = pn_ssl_domain(PN_SSL_MODE_CLIENT) else {
            throw ServiceBusError(code: .unsupported, message: "TLS is not available in this qpid-proton build; amqps refuses to connect in plaintext")
        }
        guard pn_ssl_domain_set_peer_authentication(domain, PN_SSL_VERIFY_PEER_NAME, nil) == 0 else {
            pn_ssl_domain_free(domain)
            throw ServiceBusError(code: .unsupported, message: "TLS peer verification could not be set up; amqps refuses to connect")
        }
        return domain
    }

    // MARK: - Called from any thread

    func send(_ bytes: [UInt8]) async -> PublishOutcome {
        await withCheckedContinuation { continuation in
            let accepted = state.withLock { state -> Bool in
                guard !state.stopping else { return false }
                state.nextToken += 1
                state.queue.append(Pending(token: state.nextToken, bytes: bytes, deadline: .now + configuration.sendTimeout, continuation: continuation))
                return true
            }
            if accepted { pn_proactor_interrupt(proactor) } else { continuation.resume(returning: .failed(retriable: true, reason: "sender is shut down")) }
        }
    }

    package var isReady: Bool { state.withLock { $0.ready } }

    package func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                state.stopping = true
                if state.finished { return true }
                state.stopWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() } else { pn_proactor_interrupt(proactor) }
        }
    }

    // MARK: - The proactor thread

    private func run() {
        connect()
        pn_proactor_set_timeout(proactor, 100)
        var finished = false
        while !finished {
            guard let batch = pn_proactor_wait(proactor) else { break }
            while let event = pn_event_batch_next(batch) {
                if handle(event) { finished = true }
            }
            pn_proactor_done(proactor, batch)
        }
        let (queued, inflight, waiters) = state.withLock { state in
            state.finished = true
            defer { state.queue = []; state.inflight = [:]; state.stopWaiters = [] }
            return (state.queue, Array(state.inflight.values), state.stopWaiters)
        }
        for pending in queued { pending.continuation.resume(returning: .failed(retriable: true, reason: "sender stopped before sending")) }
        for pending in inflight { pending.continuation.resume(returning: .unknown("sender stopped before the disposition arrived")) }
        for waiter in waiters { waiter.resume() }
    }

    private func connect() {
        guard connection == nil else { return }
        let connection = pn_connection()
        pn_connection_set_container(connection, containerID)
        pn_connection_set_hostname(connection, configuration.host)
        let transport = pn_transport()
        let sasl = pn_sasl(transport)
        switch configuration.authentication {
        case .plain(let user, let password):
            pn_connection_set_user(connection, user)
            pn_connection_set_password(connection, password)
            pn_sasl_allowed_mechs(sasl, "PLAIN")
        case .anonymous, .sharedAccessKey:
            pn_sasl_allowed_mechs(sasl, "ANONYMOUS")
        }
        // PLAIN sends the password as it is: only inside TLS, or to a broker on this machine (checked at init).
        pn_sasl_set_allow_insecure_mechs(sasl, !configuration.useTLS && configuration.isLoopback)
        if let tlsDomain {
            let ssl = pn_ssl(transport)
            guard let ssl, pn_ssl_init(ssl, tlsDomain, nil) == 0, pn_ssl_set_peer_hostname(ssl, configuration.host) == 0 else {
                // Never fall back to plaintext: no connection, try again later.
                pn_transport_free(transport)
                pn_connection_free(connection)
                state.withLock { $0.lastError = "TLS setup failed" }
                logger.error("AMQP TLS setup failed; not connecting", metadata: ["amqp.host": "\(configuration.host):\(configuration.port)"])
                nextAttempt = .now + configuration.reconnectDelay
                return
            }
        }
        var addr = [CChar](repeating: 0, count: 512)
        pn_proactor_addr(&addr, addr.count, configuration.host, String(configuration.port))
        self.connection = connection
        pn_proactor_connect2(proactor, connection, transport, addr)
    }

    /// Returns true when the thread should finish.
    private func handle(_ event: OpaquePointer) -> Bool {
        let type = pn_event_type(event)
        switch type {
        case PN_CONNECTION_INIT:
            guard let connection = pn_event_connection(event) else { break }
            pn_connection_open(connection)
            let session = pn_session(connection)
            pn_session_open(session)
            self.session = session
            if usesCBS {
                let sender = pn_sender(session, "\(containerID)-cbs-sender")
                pn_terminus_set_address(pn_link_target(sender), "$cbs")
                pn_link_open(sender)
                let receiver = pn_receiver(session, "\(containerID)-cbs-receiver")
                pn_terminus_set_address(pn_link_source(receiver), "$cbs")
                pn_terminus_set_address(pn_link_target(receiver), cbsReplyTo)
                pn_link_open(receiver)
                pn_link_flow(receiver, 10)
                cbsSender = sender
                cbsReceiver = receiver
                cbsNeedsToken = true
            } else {
                attachMain()
            }
        case PN_LINK_REMOTE_OPEN:
            guard let opened = pn_event_link(event), opened == link else {
                putToken()
                break
            }
            state.withLock { $0.ready = true; $0.lastError = nil }
            if case .receiver(let credit, _) = role, let link { pn_link_flow(link, credit) }
            logger.debug("AMQP link open", metadata: ["amqp.address": "\(address)", "amqp.host": "\(configuration.host):\(configuration.port)"])
            sendQueued()
        case PN_LINK_FLOW:
            if let flowing = pn_event_link(event), flowing == cbsSender { putToken() } else { sendQueued() }
        case PN_DELIVERY:
            guard let delivery = pn_event_delivery(event) else { break }
            if let owner = pn_delivery_link(delivery), owner == cbsSender || owner == cbsReceiver {
                cbsDelivery(delivery, on: owner)
                break
            }
            switch role {
            case .sender: settled(delivery)
            case .receiver(_, let handler): received(delivery, handler)
            }
        case PN_CONNECTION_REMOTE_CLOSE, PN_SESSION_REMOTE_CLOSE, PN_LINK_REMOTE_CLOSE:
            let condition: OpaquePointer? =
                type == PN_LINK_REMOTE_CLOSE ? pn_link_remote_condition(pn_event_link(event))
                : type == PN_SESSION_REMOTE_CLOSE ? pn_session_remote_condition(pn_event_session(event))
                : pn_connection_remote_condition(pn_event_connection(event))
            let closedByUs = connection.map { pn_connection_state($0) & PN_LOCAL_CLOSED != 0 } ?? false
            if state.withLock({ $0.stopping }) || closedByUs {
                // Our own close (shutdown, refused token) coming back: keep the reason we closed for.
                logger.debug("AMQP connection closed", metadata: ["amqp.address": "\(address)"])
            } else {
                note(condition, "peer closed")
            }
            if let connection { pn_connection_close(connection) }
        case PN_TRANSPORT_ERROR:
            note(pn_transport_condition(pn_event_transport(event)), "transport error")
        case PN_TRANSPORT_CLOSED:
            connection = nil
            link = nil
            session = nil
            cbsSender = nil
            cbsReceiver = nil
            cbsPendingID = nil
            cbsRefreshAt = nil
            let (inflight, stopping, error) = state.withLock { state in
                state.ready = false
                defer { state.inflight = [:] }
                return (Array(state.inflight.values), state.stopping, state.lastError)
            }
            for pending in inflight { pending.continuation.resume(returning: .unknown("connection lost before the disposition: \(error ?? "closed")")) }
            if stopping { return true }
            nextAttempt = .now + configuration.reconnectDelay
            logger.warning("AMQP connection closed; reconnecting", metadata: [
                "amqp.host": "\(configuration.host):\(configuration.port)", "amqp.error": "\(error ?? "none")",
            ])
        case PN_PROACTOR_INTERRUPT, PN_PROACTOR_TIMEOUT:
            // A proactor batch must not touch the connection (its output would not be flushed): wake the
            // connection and do the work in its own batch (PN_CONNECTION_WAKE).
            if type == PN_PROACTOR_TIMEOUT { pn_proactor_set_timeout(proactor, 100) }
            let stopping = state.withLock { $0.stopping }
            if stopping {
                guard let connection else { return true }
                pn_connection_wake(connection)
                break
            }
            expire()
            if let connection {
                pn_connection_wake(connection)
            } else if ContinuousClock.now >= nextAttempt {
                connect()
            }
        case PN_CONNECTION_WAKE:
            if state.withLock({ $0.stopping }) {
                // RabbitMQ 3.10 does not echo a closing detach: close the connection, not the link.
                if let connection { pn_connection_close(connection) }
            } else {
                if let refresh = cbsRefreshAt, ContinuousClock.now >= refresh {
                    cbsRefreshAt = nil
                    cbsNeedsToken = true
                    putToken()
                }
                sendQueued()
            }
        case PN_PROACTOR_INACTIVE:
            if state.withLock({ $0.stopping }) { return true }
        default:
            break
        }
        return false
    }

    private var cbsReplyTo: String { "\(containerID)-cbs-reply" }

    /// The audience of the token: the entity this link uses.
    var audience: String { "sb://\(configuration.host)/\(address)" }

    private func attachMain() {
        guard let session, link == nil else { return }
        let name = "\(containerID)-\(address)"
        switch role {
        case .sender:
            let link = pn_sender(session, name)
            pn_terminus_set_address(pn_link_target(link), address)
            pn_link_set_snd_settle_mode(link, PN_SND_UNSETTLED)
            pn_link_open(link)
            self.link = link
        case .receiver:
            let link = pn_receiver(session, name)
            pn_terminus_set_address(pn_link_source(link), address)
            pn_link_open(link)
            self.link = link
        }
    }

    /// Sends the CBS put-token request when one is due and the `$cbs` link has credit.
    private func putToken() {
        guard cbsNeedsToken, let sender = cbsSender, pn_link_credit(sender) > 0,
            case .sharedAccessKey(let keyName, let key) = configuration.authentication
        else { return }
        cbsNeedsToken = false
        cbsCounter += 1
        let id = "\(containerID)-put-token-\(cbsCounter)"
        cbsPendingID = id
        let expiry = Int64(Date().timeIntervalSince1970) + Self.tokenLifetime
        var request = AMQPMessage(messageID: id, subject: nil, contentType: nil, applicationProperties: [
            "operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": audience,
        ], body: [])
        request.bodyText = SharedAccessSignature.token(resource: audience, keyName: keyName, key: key, expiry: expiry)
        request.replyTo = cbsReplyTo
        request.to = "$cbs"
        let bytes = request.encoded()
        var tag = UInt64(cbsCounter).bigEndian
        _ = withUnsafeBytes(of: &tag) { raw in pn_delivery(sender, pn_dtag(raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)) }
        _ = bytes.withUnsafeBytes { raw in pn_link_send(sender, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) }
        pn_link_advance(sender)
        logger.debug("CBS put-token sent", metadata: ["amqp.audience": "\(audience)"])
    }

    /// The `$cbs` links: settle our request's disposition; read the reply and act on its status code.
    private func cbsDelivery(_ delivery: OpaquePointer, on owner: OpaquePointer) {
        if owner == cbsSender {
            if pn_delivery_updated(delivery) { pn_delivery_settle(delivery) }
            return
        }
        guard pn_delivery_readable(delivery), !pn_delivery_partial(delivery) else { return }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { raw in pn_link_recv(owner, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) }
            if count <= 0 { break }
            bytes += chunk.prefix(count)
        }
        pn_link_advance(owner)
        pn_delivery_update(delivery, UInt64(PN_ACCEPTED))
        pn_delivery_settle(delivery)
        pn_link_flow(owner, 1)
        guard let reply = AMQPMessage.decode(bytes), let pending = cbsPendingID, reply.correlationID == pending else { return }
        cbsPendingID = nil
        let status = reply.applicationProperties["status-code"].flatMap { Int($0) } ?? 0
        if status == 200 || status == 202 {
            cbsRefreshAt = .now + .seconds(Self.tokenLifetime * 3 / 4)
            logger.debug("CBS token accepted", metadata: ["amqp.audience": "\(audience)", "amqp.status": "\(status)"])
            attachMain()
        } else {
            let description = reply.applicationProperties["status-description"] ?? ""
            state.withLock { $0.lastError = "CBS put-token refused: \(status) \(description)" }
            logger.error("CBS put-token refused", metadata: ["amqp.audience": "\(audience)", "amqp.status": "\(status)", "amqp.description": "\(description)"])
            if let connection { pn_connection_close(connection) }
        }
    }

    private func note(_ condition: OpaquePointer?, _ fallback: String) {
        var text = fallback
        if let condition, pn_condition_is_set(condition) {
            let name = pn_condition_get_name(condition).map { String(cString: $0) } ?? ""
            let description = pn_condition_get_description(condition).map { String(cString: $0) } ?? ""
            text = "\(name): \(description)"
        }
        state.withLock { $0.lastError = text }
        logger.warning("AMQP \(fallback)", metadata: ["amqp.condition": "\(text)", "amqp.address": "\(address)"])
    }

    private func sendQueued() {
        guard case .sender = role, let link, pn_link_state(link) & PN_REMOTE_ACTIVE != 0 else { return }
        while pn_link_credit(link) > 0 {
            let next = state.withLock { state -> Pending? in
                guard !state.queue.isEmpty else { return nil }
                let pending = state.queue.removeFirst()
                state.inflight[pending.token] = pending
                return pending
            }
            guard let pending = next else { return }
            var tag = pending.token.bigEndian
            let delivery = withUnsafeBytes(of: &tag) { raw in
                pn_delivery(link, pn_dtag(raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count))
            }
            pn_delivery_set_context(delivery, UnsafeMutableRawPointer(bitPattern: UInt(pending.token)))
            _ = pending.bytes.withUnsafeBytes { raw in pn_link_send(link, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) }
            pn_link_advance(link)
        }
    }

    private func settled(_ delivery: OpaquePointer) {
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
        pending?.continuation.resume(returning: outcome)
    }

    private func received(_ delivery: OpaquePointer, _ handler: @Sendable (AMQPMessage) -> Void) {
        guard pn_delivery_readable(delivery), !pn_delivery_partial(delivery), let link = pn_delivery_link(delivery) else { return }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { raw in pn_link_recv(link, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) }
            if count <= 0 { break }
            bytes += chunk.prefix(count)
        }
        pn_link_advance(link)
        if let message = AMQPMessage.decode(bytes) { handler(message) }
        pn_delivery_update(delivery, UInt64(PN_ACCEPTED))
        pn_delivery_settle(delivery)
        pn_link_flow(link, 1)
    }

    /// Sends that waited too long: never sent → retriable failure; sent without disposition → unknown.
    private func expire() {
        let now = ContinuousClock.now
        let (unsent, unanswered, error) = state.withLock { state in
            let unsent = state.queue.filter { $0.deadline <= now }
            state.queue.removeAll { $0.deadline <= now }
            let unanswered = state.inflight.values.filter { $0.deadline <= now }
            for pending in unanswered { state.inflight[pending.token] = nil }
            return (unsent, unanswered, state.lastError)
        }
        for pending in unsent { pending.continuation.resume(returning: .failed(retriable: true, reason: "not sent in time: \(error ?? "link not open")")) }
        for pending in unanswered { pending.continuation.resume(returning: .unknown("no disposition in time")) }
    }
}
