import CQpidProton
import Foundation
import Logging
import OrderPipelineCore
import Synchronization

/// One AMQP 1.0 connection with one session and one link (a sender or a receiver), run by a qpid-proton proactor
/// on its own thread. Other threads only enqueue work and interrupt the proactor; every proton object is touched
/// on that thread alone. Reconnects after a lost connection (sends in flight then have an unknown outcome).
/// The message codec is `AMQPMessage`, the `$cbs` token exchange `ClaimsBasedSecurity`, TLS `TLSSetup`; the
/// transfers (sending, settling, receiving, deadlines) are in `AMQPEngine+Transfers.swift`.
/// `package`: the tests' receiver (OrderPipelineTestSupport) runs one as a receiver; the pipeline only sends.
package final class AMQPEngine: @unchecked Sendable {
    package enum Role {
        case sender
        /// `credit` messages may be outstanding; each received message is accepted after `handler` ran.
        case receiver(credit: Int32, handler: @Sendable (AMQPMessage) -> Void)
    }

    /// One message of a `send`, answered through its batch.
    struct Pending {
        var token: UInt64
        var bytes: [UInt8]
        var deadline: ContinuousClock.Instant
        var batch: SendBatch
        var index: Int

        func answer(_ outcome: PublishOutcome) { batch.answer(index, outcome) }
    }

    struct State {
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
    let role: Role
    let logger: Logger
    let state = Mutex(State())
    private let proactor: OpaquePointer
    private let tls: TLSSetup
    /// The TLS settings of every connection (amqps), made once: without them the engine does not exist.
    private let tlsDomain: OpaquePointer?
    // Thread-confined (proactor thread):
    private var connection: OpaquePointer?
    private var session: OpaquePointer?
    var link: OpaquePointer?
    private var nextAttempt = ContinuousClock.now
    /// Shutting down: when a connection that has not closed by then is cut (`pn_proactor_disconnect`).
    private var closeBy: ContinuousClock.Instant?
    /// How long a shutdown waits for the peer to close; a peer that accepted TCP but never answers (a black-holed
    /// broker, a TLS handshake with no reply) would otherwise hold the shutdown forever.
    static let closeGrace: Duration = .seconds(2)
    private let containerID: String
    /// Azure (a SAS key): the `$cbs` links; the main link attaches once the token is accepted.
    private var cbs: ClaimsBasedSecurity?

    package convenience init(configuration: ServiceBusConfiguration, address: String, role: Role, logger: Logger) throws(ServiceBusError) {
        try self.init(configuration: configuration, address: address, role: role, logger: logger, tls: .standard)
    }

    /// `tls`: how TLS is set up (tests make it fail, to see that nothing goes out in plaintext).
    init(configuration: ServiceBusConfiguration, address: String, role: Role, logger: Logger, tls: TLSSetup) throws(ServiceBusError) {
        self.configuration = configuration
        self.address = address
        self.role = role
        self.logger = logger
        self.tls = tls
        try configuration.checkTransportSecurity()
        tlsDomain = configuration.useTLS ? try tls.makeDomain() : nil
        guard let proactor = pn_proactor() else {
            if let tlsDomain { pn_ssl_domain_free(tlsDomain) }
            throw ServiceBusError(code: .connection, message: "pn_proactor failed")
        }
        self.proactor = proactor
        self.containerID = "orderpipeline-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        if case .sharedAccessKey(let keyName, let key) = configuration.authentication {
            cbs = ClaimsBasedSecurity(keyName: keyName, key: key, audience: audience, containerID: containerID)
        }
        DedicatedThread.start("amqp-\(address)") { [self] in self.run() }
    }

    deinit {
        pn_proactor_free(proactor)
        if let tlsDomain { pn_ssl_domain_free(tlsDomain) }
    }

    /// The audience of the token: the entity this link uses.
    var audience: String { "sb://\(configuration.host)/\(address)" }

    // MARK: - Called from any thread

    /// Sends the messages in order and answers with one outcome each, once all are known. The whole batch is
    /// queued at once, wakes the proactor thread once and resumes its caller once: per-message tasks and
    /// continuations cost a 2-thread cooperative pool hundreds of turns per batch: on a saturated machine (the
    /// latency benchmark at 1,000 orders/s) a publish of 100 took up to 770 ms (p90 120-440 ms) while the
    /// engine had every disposition within a few ms (docs/BROKERS.md).
    func send(_ messages: [[UInt8]]) async -> [PublishOutcome] {
        guard !messages.isEmpty else { return [] }
        return await withCheckedContinuation { continuation in
            let batch = SendBatch(count: messages.count, continuation: continuation)
            let accepted = state.withLock { state -> Bool in
                guard !state.stopping else { return false }
                let deadline = ContinuousClock.now + configuration.sendTimeout
                for (index, bytes) in messages.enumerated() {
                    state.nextToken += 1
                    state.queue.append(Pending(token: state.nextToken, bytes: bytes, deadline: deadline, batch: batch, index: index))
                }
                return true
            }
            if accepted {
                pn_proactor_interrupt(proactor)
            } else {
                continuation.resume(returning: Array(repeating: .failed(retriable: true, reason: "sender is shut down"), count: messages.count))
            }
        }
    }

    func send(_ bytes: [UInt8]) async -> PublishOutcome {
        await send([bytes]).first ?? .unknown("no outcome")
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
        for pending in queued { pending.answer(.failed(retriable: true, reason: "sender stopped before sending")) }
        for pending in inflight { pending.answer(.unknown("sender stopped before the disposition arrived")) }
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
            guard let transport, tls.secure(transport, tlsDomain, configuration.host) else {
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

    /// One proactor event; returns true when the thread should finish.
    private func handle(_ event: OpaquePointer) -> Bool {
        let type = pn_event_type(event)
        switch type {
        case PN_CONNECTION_INIT:
            if let connection = pn_event_connection(event) { opened(connection) }
        case PN_LINK_REMOTE_OPEN:
            linkOpened(pn_event_link(event))
        case PN_LINK_FLOW:
            if let flowing = pn_event_link(event), flowing == cbs?.sender { putToken() } else { sendQueued() }
        case PN_DELIVERY:
            if let delivery = pn_event_delivery(event) { delivered(delivery) }
        case PN_CONNECTION_REMOTE_CLOSE, PN_SESSION_REMOTE_CLOSE, PN_LINK_REMOTE_CLOSE:
            remoteClosed(event, type)
        case PN_TRANSPORT_ERROR:
            note(pn_transport_condition(pn_event_transport(event)), "transport error")
        case PN_TRANSPORT_CLOSED:
            return transportClosed()
        case PN_PROACTOR_INTERRUPT, PN_PROACTOR_TIMEOUT:
            return tick(timedOut: type == PN_PROACTOR_TIMEOUT)
        case PN_CONNECTION_WAKE:
            woken()
        case PN_PROACTOR_INACTIVE:
            return state.withLock { $0.stopping }
        default:
            break
        }
        return false
    }

    /// Opens the connection and its session, then the main link (or, for Azure, the `$cbs` links first).
    private func opened(_ connection: OpaquePointer) {
        pn_connection_open(connection)
        let session = pn_session(connection)
        pn_session_open(session)
        self.session = session
        if cbs != nil { cbs?.open(on: session) } else { attachMain() }
    }

    private func linkOpened(_ opened: OpaquePointer?) {
        guard let opened, opened == link else {
            putToken()
            return
        }
        state.withLock {
            $0.ready = true; $0.lastError = nil
        }
        if case .receiver(let credit, _) = role { pn_link_flow(opened, credit) }
        logger.debug("AMQP link open", metadata: ["amqp.address": "\(address)", "amqp.host": "\(configuration.host):\(configuration.port)"])
        sendQueued()
    }

    private func delivered(_ delivery: OpaquePointer) {
        if let owner = pn_delivery_link(delivery), cbs?.owns(owner) == true {
            cbsDelivery(delivery, on: owner)
            return
        }
        switch role {
        case .sender: settled(delivery)
        case .receiver(_, let handler): received(delivery, handler)
        }
    }

    private func remoteClosed(_ event: OpaquePointer, _ type: pn_event_type_t) {
        let condition: OpaquePointer? =
            type == PN_LINK_REMOTE_CLOSE
            ? pn_link_remote_condition(pn_event_link(event))
            : type == PN_SESSION_REMOTE_CLOSE
                ? pn_session_remote_condition(pn_event_session(event))
                : pn_connection_remote_condition(pn_event_connection(event))
        let closedByUs = connection.map { pn_connection_state($0) & PN_LOCAL_CLOSED != 0 } ?? false
        if state.withLock({ $0.stopping }) || closedByUs {
            // Our own close (shutdown, refused token) coming back: keep the reason we closed for.
            logger.debug("AMQP connection closed", metadata: ["amqp.address": "\(address)"])
        } else {
            note(condition, "peer closed")
        }
        if let connection { pn_connection_close(connection) }
    }

    /// The connection is gone: sends in flight have an unknown outcome; reconnect after the delay (or finish).
    private func transportClosed() -> Bool {
        connection = nil
        link = nil
        session = nil
        cbs?.reset()
        let (inflight, stopping, error) = state.withLock { state in
            state.ready = false
            defer { state.inflight = [:] }
            return (Array(state.inflight.values), state.stopping, state.lastError)
        }
        for pending in inflight { pending.answer(.unknown("connection lost before the disposition: \(error ?? "closed")")) }
        if stopping { return true }
        nextAttempt = .now + configuration.reconnectDelay
        logger.warning(
            "AMQP connection closed; reconnecting",
            metadata: [
                "amqp.host": "\(configuration.host):\(configuration.port)", "amqp.error": "\(error ?? "none")",
            ])
        return false
    }

    /// A proactor batch must not touch the connection (its output would not be flushed): wake the connection and
    /// do the work in its own batch (`woken`). Expires late sends; reconnects when it is time.
    private func tick(timedOut: Bool) -> Bool {
        if timedOut { pn_proactor_set_timeout(proactor, 100) }
        if state.withLock({ $0.stopping }) {
            guard let connection else { return true }
            let now = ContinuousClock.now
            if closeBy == nil { closeBy = now + Self.closeGrace }
            if let closeBy, now >= closeBy { pn_proactor_disconnect(proactor, nil) } else { pn_connection_wake(connection) }
            return false
        }
        expire()
        if let connection {
            pn_connection_wake(connection)
        } else if ContinuousClock.now >= nextAttempt {
            connect()
        }
        return false
    }

    private func woken() {
        if state.withLock({ $0.stopping }) {
            // RabbitMQ 3.10 does not echo a closing detach: close the connection, not the link.
            if let connection { pn_connection_close(connection) }
            return
        }
        if cbs?.renewIfDue() == true { logger.debug("CBS put-token sent", metadata: ["amqp.audience": "\(audience)"]) }
        sendQueued()
    }

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

    private func putToken() {
        if cbs?.putToken() == true { logger.debug("CBS put-token sent", metadata: ["amqp.audience": "\(audience)"]) }
    }

    /// A `$cbs` delivery: an accepted token attaches the main link; a refused one closes the connection.
    private func cbsDelivery(_ delivery: OpaquePointer, on owner: OpaquePointer) {
        switch cbs?.delivery(delivery, on: owner) {
        case .accepted(let status)?:
            logger.debug("CBS token accepted", metadata: ["amqp.audience": "\(audience)", "amqp.status": "\(status)"])
            attachMain()
        case let .refused(status, description)?:
            state.withLock { $0.lastError = "CBS put-token refused: \(status) \(description)" }
            logger.error("CBS put-token refused", metadata: ["amqp.audience": "\(audience)", "amqp.status": "\(status)", "amqp.description": "\(description)"])
            if let connection { pn_connection_close(connection) }
        case nil:
            break
        }
    }

    func note(_ condition: OpaquePointer?, _ fallback: String) {
        var text = fallback
        if let condition, pn_condition_is_set(condition) {
            let name = pn_condition_get_name(condition).map { String(cString: $0) } ?? ""
            let description = pn_condition_get_description(condition).map { String(cString: $0) } ?? ""
            text = "\(name): \(description)"
        }
        state.withLock { $0.lastError = text }
        logger.warning("AMQP \(fallback)", metadata: ["amqp.condition": "\(text)", "amqp.address": "\(address)"])
    }
}
