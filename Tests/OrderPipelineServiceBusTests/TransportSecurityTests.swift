import Foundation
import OrderPipelineCore
import Synchronization
import Testing

@testable import OrderPipelineServiceBus

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Service Bus transport security: TLS fails closed, no clear-text password off this machine")
struct TransportSecurityTests {
    @Test(
        "amqps to a broker that speaks no TLS: nothing is delivered (no fall back to plaintext)",
        .enabled(if: TestServiceBus.isConfigured, "SERVICEBUS_CONNECTION_STRING is not set"), .timeLimit(.minutes(5)))
    func noPlaintextFallback() async throws {
        // The local broker accepts exactly this message over plain amqp (see the integration tests); over amqps
        // the TLS handshake must fail and the message stay unsent.
        var configuration = try ServiceBusConfiguration.parse(TestServiceBus.connectionString!)
        configuration.useTLS = true
        configuration.queue = "test-tls-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        configuration.sendTimeout = .milliseconds(1_500)
        let sender = try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger)
        let outcome = await sender.send(AMQPMessage(messageID: "tls-1", subject: nil, contentType: nil, body: [1]))
        await sender.shutdown()
        #expect(outcome != .delivered)
        if case .failed(retriable: true, _) = outcome {} else { Issue.record("expected a retriable failure, got \(outcome)") }
    }

    @Test("a password over plain amqp to another host is refused before any connection")
    func plainToRemoteRefused() throws {
        var configuration = ServiceBusConfiguration(
            host: "broker.example", port: 5672, useTLS: false,
            authentication: .plain(user: "u", password: "secret"))
        #expect(throws: ServiceBusError.self) { try ServiceBusSender(configuration: configuration, logger: TestServiceBus.logger) }
        configuration.host = "127.0.0.1"
        #expect(throws: Never.self) { try configuration.checkTransportSecurity() }
    }

    /// amqps with a password to a local listener that only records what arrives.
    static func amqps(to listener: Listener) -> ServiceBusConfiguration {
        var configuration = ServiceBusConfiguration(
            host: "127.0.0.1", port: listener.port, useTLS: true,
            authentication: .plain(user: "guest", password: "secret"))
        configuration.sendTimeout = .milliseconds(1_000)
        configuration.reconnectDelay = .milliseconds(200)
        return configuration
    }

    @Test("the TLS domain cannot be created: the sender refuses to start with a clear error, no connection is made")
    func noDomainNoSender() throws {
        let listener = try Listener()
        let failing = TLSSetup(
            makeDomain: { () throws(ServiceBusError) -> OpaquePointer in
                throw ServiceBusError(code: .unsupported, message: "no TLS here (test)")
            }, secure: TLSSetup.standard.secure)
        let error = #expect(throws: ServiceBusError.self) {
            try ServiceBusSender(configuration: Self.amqps(to: listener), logger: TestServiceBus.logger, tls: failing)
        }
        #expect(error?.code == .unsupported)
        #expect(error?.message == "no TLS here (test)")
        // The engine was never created: nothing connected (accept finds no connection, at once).
        #expect(try listener.accept(waitingMilliseconds: 0) == nil)
    }

    @Test("SSL setup of a connection fails: no connection is made, sends fail retriably, nothing arrives in plaintext", .timeLimit(.minutes(5)))
    func sslSetupFailsClosed() async throws {
        let listener = try Listener()
        let attempts = Atomic<Int>(0)
        let failing = TLSSetup(
            makeDomain: TLSSetup.standard.makeDomain,
            secure: { _, _, _ in
                attempts.add(1, ordering: .relaxed)
                return false
            })
        let sender = try ServiceBusSender(configuration: Self.amqps(to: listener), logger: TestServiceBus.logger, tls: failing)
        let outcome = await sender.send(AMQPMessage(messageID: "tls-2", subject: nil, contentType: nil, body: [1]))
        await sender.shutdown()
        guard case .failed(retriable: true, let reason) = outcome else {
            Issue.record("expected a retriable failure, got \(outcome)")
            return
        }
        #expect(reason.contains("TLS setup failed"), "\(reason)")
        // The engine tried (at start and on each reconnect attempt within the send's 1 s) and never connected.
        #expect(attempts.load(ordering: .relaxed) >= 2)
        #expect(try listener.accept(waitingMilliseconds: 0) == nil)
    }

    @Test("the control: with TLS set up, the same listener gets a connection whose first bytes are a TLS handshake", .timeLimit(.minutes(5)))
    func tlsFromTheFirstByte() async throws {
        let listener = try Listener()
        let sender = try ServiceBusSender(configuration: Self.amqps(to: listener), logger: TestServiceBus.logger, tls: .standard)
        let sending = Task { await sender.send(AMQPMessage(messageID: "tls-3", subject: nil, contentType: nil, body: [1])) }
        let first = try #require(try listener.accept(waitingMilliseconds: 10_000))
        // 0x16 = a TLS handshake record (the ClientHello); plaintext AMQP would begin with "AMQP".
        #expect(first.first == 0x16, "first bytes \(first.prefix(8))")
        #expect(!first.starts(with: Array("AMQP".utf8)))
        _ = await sending.value
        await sender.shutdown()
    }
}

/// A TCP listener on 127.0.0.1 that answers nothing: `accept` reports whether a connection arrived and what its
/// first bytes were. Pending connections wait in the kernel's backlog, so a connection made before `accept` is
/// still found by it.
final class Listener {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard fd >= 0, bound == 0, listen(fd, 16) == 0 else {
            if fd >= 0 { close(fd) }
            throw ListenerError(message: "listen failed: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        self.fd = fd
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { close(fd) }

    /// The first bytes of a connection that arrives within the wait (an empty array if it sent nothing within
    /// 2 s), or nil when no connection arrived.
    func accept(waitingMilliseconds: Int32) throws -> [UInt8]? {
        guard Self.readable(fd, waitingMilliseconds) else { return nil }
        let client = Glibc.accept(fd, nil, nil)
        guard client >= 0 else { throw ListenerError(message: "accept failed: errno \(errno)") }
        defer { close(client) }
        guard Self.readable(client, 2_000) else { return [] }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = read(client, &buffer, buffer.count)
        return Array(buffer.prefix(max(count, 0)))
    }

    private static func readable(_ fd: Int32, _ milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, milliseconds) == 1
    }
}

struct ListenerError: Error { var message: String }
