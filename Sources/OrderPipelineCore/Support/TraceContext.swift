/// W3C Trace Context: the `traceparent` value `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
/// (https://www.w3.org/TR/trace-context/). It travels with an order: the POST (or a new trace), the Kafka outbox row,
/// the Kafka record's `traceparent` header, the consumer, the Service Bus outbox row, and the Service Bus message's
/// application properties `traceparent` and `Diagnostic-Id` (as Azure SDKs set them).
public struct TraceParent: Hashable, Sendable, CustomStringConvertible {
    /// 32 lower-case hex digits, not all zero.
    public let traceID: String
    /// 16 lower-case hex digits, not all zero: the span the next hop is a child of.
    public let parentID: String
    /// 2 hex digits (bit 0: sampled).
    public let flags: String

    /// Parses a header value; nil when it is not a valid version-00 value (a future version is read by its first
    /// four fields, as the specification asks). Reads the bytes in place: the consumer parses every record's header.
    public init?(_ text: some StringProtocol) {
        let dash = UInt8(ascii: "-")
        // `vv-<32>-<16>-ff`: 55 bytes, dashes at 2, 35 and 52; a future version may go on after another dash.
        let bytes = Array(text.utf8)
        guard bytes.count >= 55, bytes[2] == dash, bytes[35] == dash, bytes[52] == dash,
            Self.isHex(bytes[0..<2]), !(bytes[0] == UInt8(ascii: "f") && bytes[1] == UInt8(ascii: "f"))
        else { return nil }
        let versionZero = bytes[0] == UInt8(ascii: "0") && bytes[1] == UInt8(ascii: "0")
        guard bytes.count == 55 || (!versionZero && bytes[55] == dash) else { return nil }
        let trace = bytes[3..<35], parent = bytes[36..<52], flags = bytes[53..<55]
        guard Self.isHex(trace), Self.isHex(parent), Self.isHex(flags),
            trace.contains(where: { $0 != UInt8(ascii: "0") }), parent.contains(where: { $0 != UInt8(ascii: "0") })
        else { return nil }
        self.traceID = String(decoding: trace, as: UTF8.self)
        self.parentID = String(decoding: parent, as: UTF8.self)
        self.flags = String(decoding: flags, as: UTF8.self)
    }

    /// A new, sampled trace (random ids from the caller's generator: the shell's, never the simulator's).
    public static func newTrace(using generator: inout some RandomNumberGenerator) -> TraceParent {
        TraceParent(trace: hex(nonZero(&generator)) + hex(nonZero(&generator)), parent: hex(nonZero(&generator)), flags: "01")
    }

    /// The same trace, continued by a new span (the next hop's parent).
    public func child(using generator: inout some RandomNumberGenerator) -> TraceParent {
        TraceParent(trace: traceID, parent: Self.hex(Self.nonZero(&generator)), flags: flags)
    }

    /// The same trace, continued by a span whose id is derived from `id` (deterministic: the consumer's span for
    /// one event always has the same id, in production and in the simulator).
    public func child(derivedFrom id: UUID128) -> TraceParent {
        TraceParent(trace: traceID, parent: Self.hex(id.high == 0 ? 1 : id.high), flags: flags)
    }

    public var description: String { "00-\(traceID)-\(parentID)-\(flags)" }

    private init(trace: String, parent: String, flags: String) {
        self.traceID = trace
        self.parentID = parent
        self.flags = flags
    }

    private static func isHex(_ bytes: ArraySlice<UInt8>) -> Bool {
        bytes.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    private static func nonZero(_ generator: inout some RandomNumberGenerator) -> UInt64 {
        var value: UInt64 = 0
        while value == 0 { value = generator.next() }
        return value
    }

    private static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

extension TraceParent {
    /// The trace of an API request: the caller's `traceparent` continued by this request's span, or a new trace
    /// when it sent none (or an invalid one). The HTTP shell draws from the system, the simulator from its seed.
    public static func forRequest(_ incoming: TraceParent?, using generator: inout some RandomNumberGenerator) -> TraceParent {
        incoming?.child(using: &generator) ?? .newTrace(using: &generator)
    }
}

extension ConsumedRecord {
    /// The record's `traceparent` header, when it has a valid one.
    public var traceParent: TraceParent? {
        headers.last { $0.name == "traceparent" }.flatMap { TraceParent(String(decoding: $0.value, as: UTF8.self)) }
    }
}
