import CQpidProton
import Foundation

/// Claims-based security (Azure Service Bus): before the engine attaches its link, it puts a SAS token for the
/// link's entity on `$cbs` — a sender link to `$cbs` and a receiver of its replies, correlated by message id — and
/// puts a fresh one after three quarters of the token's lifetime. Like every proton object, confined to the
/// engine's proactor thread.
struct ClaimsBasedSecurity {
    /// What a reply to our put-token said.
    enum Reply: Equatable {
        case accepted(status: Int)
        case refused(status: Int, description: String)
    }

    let keyName: String
    let key: String
    /// The entity the token grants: `sb://<host>/<address>`.
    let audience: String
    let containerID: String
    private(set) var sender: OpaquePointer?
    private(set) var receiver: OpaquePointer?
    private var needsToken = false
    private var pendingID: String?
    private var refreshAt: ContinuousClock.Instant?
    private var counter = 0
    /// The SAS token's lifetime; it is renewed after three quarters of it.
    static let tokenLifetime: Int64 = 3_600

    init(keyName: String, key: String, audience: String, containerID: String) {
        self.keyName = keyName
        self.key = key
        self.audience = audience
        self.containerID = containerID
    }

    var replyTo: String { "\(containerID)-cbs-reply" }

    func owns(_ link: OpaquePointer) -> Bool { link == sender || link == receiver }

    /// Opens the `$cbs` links on a new session; the token goes as soon as the sender has credit.
    mutating func open(on session: OpaquePointer?) {
        let sender = pn_sender(session, "\(containerID)-cbs-sender")
        pn_terminus_set_address(pn_link_target(sender), "$cbs")
        pn_link_open(sender)
        let receiver = pn_receiver(session, "\(containerID)-cbs-receiver")
        pn_terminus_set_address(pn_link_source(receiver), "$cbs")
        pn_terminus_set_address(pn_link_target(receiver), replyTo)
        pn_link_open(receiver)
        pn_link_flow(receiver, 10)
        self.sender = sender
        self.receiver = receiver
        needsToken = true
    }

    /// The connection is gone, and its links with it.
    mutating func reset() {
        sender = nil
        receiver = nil
        pendingID = nil
        refreshAt = nil
    }

    /// A token due for renewal is put again (on the connection's wake-ups).
    mutating func renewIfDue() -> Bool {
        guard let refresh = refreshAt, ContinuousClock.now >= refresh else { return false }
        refreshAt = nil
        needsToken = true
        return putToken()
    }

    /// Sends the put-token request when one is due and the `$cbs` link has credit; true when it went.
    @discardableResult
    mutating func putToken() -> Bool {
        guard needsToken, let sender, pn_link_credit(sender) > 0 else { return false }
        needsToken = false
        counter += 1
        let id = "\(containerID)-put-token-\(counter)"
        pendingID = id
        let expiry = Int64(Date().timeIntervalSince1970) + Self.tokenLifetime
        var request = AMQPMessage(
            messageID: id, subject: nil, contentType: nil,
            applicationProperties: [
                "operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": audience,
            ], body: [])
        request.bodyText = SharedAccessSignature.token(resource: audience, keyName: keyName, key: key, expiry: expiry)
        request.replyTo = replyTo
        request.to = "$cbs"
        let bytes = request.encoded()
        var tag = UInt64(counter).bigEndian
        _ = withUnsafeBytes(of: &tag) { raw in pn_delivery(sender, pn_dtag(raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)) }
        _ = bytes.withUnsafeBytes { raw in pn_link_send(sender, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count) }
        pn_link_advance(sender)
        return true
    }

    /// A delivery on a `$cbs` link: our request's disposition is settled; a reply is accepted, read and judged.
    /// Nil unless it is the reply to the pending request.
    mutating func delivery(_ delivery: OpaquePointer, on owner: OpaquePointer) -> Reply? {
        if owner == sender {
            if pn_delivery_updated(delivery) { pn_delivery_settle(delivery) }
            return nil
        }
        guard let bytes = AMQPEngine.read(delivery, on: owner) else { return nil }
        AMQPEngine.acceptAndCredit(delivery, on: owner)
        guard let reply = AMQPMessage.decode(bytes), let pending = pendingID, reply.correlationID == pending else { return nil }
        pendingID = nil
        let status = reply.applicationProperties["status-code"].flatMap { Int($0) } ?? 0
        guard status == 200 || status == 202 else {
            return .refused(status: status, description: reply.applicationProperties["status-description"] ?? "")
        }
        refreshAt = .now + .seconds(Self.tokenLifetime * 3 / 4)
        return .accepted(status: status)
    }
}
