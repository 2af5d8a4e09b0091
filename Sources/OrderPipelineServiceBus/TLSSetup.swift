import CQpidProton

/// How an engine sets up TLS for `amqps`. Both steps fail closed: without a domain there is no engine (a clear
/// error at start), and a connection whose SSL setup fails is never made — nothing goes out in plaintext.
/// `TransportSecurityTests` replaces a step with a failing one to prove it.
struct TLSSetup: Sendable {
    /// The client TLS domain every connection of an engine uses.
    var makeDomain: @Sendable () throws(ServiceBusError) -> OpaquePointer
    /// SSL on one transport, verifying the peer's certificate and `host`; false when any step fails.
    var secure: @Sendable (_ transport: OpaquePointer, _ domain: OpaquePointer, _ host: String) -> Bool

    static let standard = TLSSetup(makeDomain: clientDomain, secure: secureTransport)

    /// A client domain that verifies the server's certificate and name.
    static func clientDomain() throws(ServiceBusError) -> OpaquePointer {
        guard pn_ssl_present(), let domain = pn_ssl_domain(PN_SSL_MODE_CLIENT) else {
            throw ServiceBusError(code: .unsupported, message: "TLS is not available in this qpid-proton build; amqps refuses to connect in plaintext")
        }
        guard pn_ssl_domain_set_peer_authentication(domain, PN_SSL_VERIFY_PEER_NAME, nil) == 0 else {
            pn_ssl_domain_free(domain)
            throw ServiceBusError(code: .unsupported, message: "TLS peer verification could not be set up; amqps refuses to connect")
        }
        return domain
    }

    static func secureTransport(_ transport: OpaquePointer, _ domain: OpaquePointer, _ host: String) -> Bool {
        guard let ssl = pn_ssl(transport) else { return false }
        return pn_ssl_init(ssl, domain, nil) == 0 && pn_ssl_set_peer_hostname(ssl, host) == 0
    }
}
