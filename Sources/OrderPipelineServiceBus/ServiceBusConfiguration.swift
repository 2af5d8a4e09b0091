import Foundation

/// Where and how the Service Bus sender connects, parsed from `SERVICEBUS_CONNECTION_STRING`.
///
/// Two forms are accepted:
/// - an Azure connection string, `Endpoint=sb://NAME.servicebus.windows.net/;SharedAccessKeyName=…;
///   SharedAccessKey=…[;EntityPath=…][;UseDevelopmentEmulator=true]` (TLS on 5671; the emulator: no TLS, 5672);
/// - a URL for a generic AMQP 1.0 broker, `amqp://user:password@host:port` or `amqps://…` (SASL PLAIN).
public struct ServiceBusConfiguration: Sendable, Hashable {
    /// How the connection authenticates.
    public enum Authentication: Sendable, Hashable {
        /// SASL ANONYMOUS (no credentials).
        case anonymous
        /// SASL PLAIN, for generic brokers.
        case plain(user: String, password: String)
        /// Azure: SASL ANONYMOUS, then a CBS put-token with a SAS token signed by this key.
        case sharedAccessKey(name: String, key: String)
    }

    public var host: String
    public var port: Int
    public var useTLS: Bool
    public var authentication: Authentication
    /// `EntityPath` of an Azure connection string (the queue, when the string is scoped to one).
    public var entityPath: String?
    public var isDevelopmentEmulator = false
    /// `SERVICEBUS_QUEUE` — the link target.
    public var queue = "order-fulfilment"
    /// No disposition within this time: the outcome is unknown.
    public var sendTimeout: Duration = .seconds(10)
    /// Wait between reconnection attempts.
    public var reconnectDelay: Duration = .seconds(1)

    /// A configuration built by hand; `parse(_:)` reads a connection string.
    public init(host: String, port: Int, useTLS: Bool, authentication: Authentication) {
        self.host = host
        self.port = port
        self.useTLS = useTLS
        self.authentication = authentication
    }

    /// The connection string without secrets (passwords and keys become `***`), for logs.
    public var redactedDescription: String {
        let scheme = useTLS ? "amqps" : "amqp"
        switch authentication {
        case .anonymous: return "\(scheme)://\(host):\(port)"
        case .plain(let user, _): return "\(scheme)://\(user):***@\(host):\(port)"
        case .sharedAccessKey(let name, _):
            return "Endpoint=sb://\(host):\(port)/;SharedAccessKeyName=\(name);SharedAccessKey=***"
                + (entityPath.map { ";EntityPath=\($0)" } ?? "") + (isDevelopmentEmulator ? ";UseDevelopmentEmulator=true" : "")
        }
    }

    /// A broker on this machine (where credentials in clear text never cross a network).
    public var isLoopback: Bool {
        let host = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// The rule for credentials on the wire: SASL PLAIN (a password) without TLS only to a broker on this machine
    /// (the local RabbitMQ of the tests); anywhere else it needs `amqps://`. TLS itself fails closed (see
    /// `AMQPEngine`): an `amqps` connection that cannot set up TLS is not made.
    public func checkTransportSecurity() throws(ServiceBusError) {
        if case .plain = authentication, !useTLS, !isLoopback {
            throw ServiceBusError(
                code: .configuration,
                message: "amqp:// with a user and password sends the password in clear text; use amqps:// for \(host) (plain amqp:// is allowed only to localhost)")
        }
    }

    /// Reads either form (see the type).
    /// - Parameter text: An Azure connection string or an `amqp://` / `amqps://` URL.
    /// - Returns: The configuration, with the queue from `EntityPath` when the string names one.
    /// - Throws: `ServiceBusError` with `.configuration` for a string that is neither form, or that sends a
    ///   password in clear text to another machine.
    public static func parse(_ text: String) throws(ServiceBusError) -> ServiceBusConfiguration {
        let trimmed = text.trimmingWhitespace
        if trimmed.lowercased().hasPrefix("amqp://") || trimmed.lowercased().hasPrefix("amqps://") {
            let configuration = try parseURL(trimmed)
            try configuration.checkTransportSecurity()
            return configuration
        }
        if trimmed.range(of: "Endpoint=", options: .caseInsensitive) != nil {
            return try parseAzure(trimmed)
        }
        throw ServiceBusError(code: .configuration, message: "SERVICEBUS_CONNECTION_STRING is neither an amqp(s):// URL nor an Azure connection string (Endpoint=sb://…)")
    }

    static func parseURL(_ text: String) throws(ServiceBusError) -> ServiceBusConfiguration {
        let tls = text.lowercased().hasPrefix("amqps://")
        var rest = Substring(text.drop(while: { $0 != ":" }).dropFirst(3))
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        var authentication = Authentication.anonymous
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let user: Substring
            let password: Substring
            if let colon = credentials.firstIndex(of: ":") {
                user = credentials[..<colon]
                password = credentials[credentials.index(after: colon)...]
            } else {
                user = credentials
                password = ""
            }
            authentication = .plain(user: percentDecoded(user), password: percentDecoded(password))
        }
        let (host, port) = try hostAndPort(rest, defaultPort: tls ? 5671 : 5672)
        return ServiceBusConfiguration(host: host, port: port, useTLS: tls, authentication: authentication)
    }

    static func parseAzure(_ text: String) throws(ServiceBusError) -> ServiceBusConfiguration {
        var fields: [String: String] = [:]
        for part in text.split(separator: ";") where !part.isEmpty {
            guard let equals = part.firstIndex(of: "=") else { continue }
            fields[part[..<equals].trimmingWhitespace.lowercased()] = String(part[part.index(after: equals)...]).trimmingWhitespace
        }
        guard let endpoint = fields["endpoint"], !endpoint.isEmpty else {
            throw ServiceBusError(code: .configuration, message: "the connection string has no Endpoint")
        }
        var address = Substring(endpoint)
        if let scheme = address.range(of: "://") { address = address[scheme.upperBound...] }
        if let slash = address.firstIndex(of: "/") { address = address[..<slash] }
        let emulator = fields["usedevelopmentemulator"]?.lowercased() == "true"
        let (host, port) = try hostAndPort(address, defaultPort: emulator ? 5672 : 5671)
        guard let name = fields["sharedaccesskeyname"], let key = fields["sharedaccesskey"] else {
            throw ServiceBusError(code: .configuration, message: "the connection string needs SharedAccessKeyName and SharedAccessKey")
        }
        var configuration = ServiceBusConfiguration(host: host, port: port, useTLS: !emulator, authentication: .sharedAccessKey(name: name, key: key))
        configuration.isDevelopmentEmulator = emulator
        if let path = fields["entitypath"], !path.isEmpty {
            configuration.entityPath = path
            configuration.queue = path
        }
        return configuration
    }

    private static func hostAndPort(_ text: Substring, defaultPort: Int) throws(ServiceBusError) -> (String, Int) {
        guard !text.isEmpty else { throw ServiceBusError(code: .configuration, message: "no host in the connection string") }
        if let colon = text.lastIndex(of: ":"), !text.hasPrefix("[") || text[..<colon].hasSuffix("]") {
            guard let port = Int(text[text.index(after: colon)...]), (1...65_535).contains(port) else {
                throw ServiceBusError(code: .configuration, message: "the port in the connection string is not a number")
            }
            return (String(text[..<colon]), port)
        }
        return (String(text), defaultPort)
    }

    private static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// An adapter error: what kind, and what happened (never a C type). The same shape as `PostgresError` and
/// `KafkaError`.
public struct ServiceBusError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure.
    /// Opaque, as swift-service-lifecycle's and postgres-nio's error codes: a kind can be added without breaking a
    /// caller's `switch` (compare with `==` or match `case .unavailable:` with a `default`).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: String, Hashable, Sendable { case configuration, unsupported, connection }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// A connection string or setting that cannot be used (malformed, or unsafe: a password in clear text).
        public static let configuration = Code(.configuration)
        /// Something this qpid-proton build cannot do (TLS).
        public static let unsupported = Code(.unsupported)
        /// qpid-proton could not start the connection's engine.
        public static let connection = Code(.connection)

        public var description: String { kind.rawValue }
    }
    public var code: Code
    /// What happened, for logs and operators (never a key or password).
    public var message: String
    /// - Parameters:
    ///   - code: What kind of failure.
    ///   - message: What happened (never a key or password).
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "Service Bus \(code) error: \(message)" }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        String(drop(while: { $0.isWhitespace }).reversed().drop(while: { $0.isWhitespace }).reversed())
    }
}
