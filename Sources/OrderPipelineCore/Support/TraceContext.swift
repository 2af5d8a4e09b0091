/// W3C Trace Context: the `traceparent` value `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
/// (https://www.w3.org/TR/trace-context/). It travels with an order: the POST (or a new trace), the Kafka outbox row,
/// the Kafka record's `traceparent` header, the consumer, the Service Bus outbox row, and the Service Bus message's
/// application properties `traceparent` and `Diagnostic-Id` (as Azure SDKs set them).
public struct TraceParent: Hashable, Sendable, CustomStringConvertible {
    // Kept as numbers, not text: a trace goes with every request, row, record and message, and parsing or copying
    // three strings each time cost allocations. The text forms below are exact (fixed width, lower case).
    private let trace: (high: UInt64, low: UInt64)
    private let parent: UInt64
    private let flagBits: UInt8

    /// 32 lower-case hex digits, not all zero.
    public var traceID: String { Self.hex(trace.high) + Self.hex(trace.low) }
    /// 16 lower-case hex digits, not all zero: the span the next hop is a child of.
    public var parentID: String { Self.hex(parent) }
    /// 2 hex digits (bit 0: sampled).
    public var flags: String { String(Self.hex(UInt64(flagBits)).suffix(2)) }

    /// Parses a header value; nil when it is not a valid version-00 value (a future version is read by its first
    /// four fields, as the specification asks).
    public init?(_ text: some StringProtocol) {
        let utf8 = text.utf8
        guard let parsed = utf8.withContiguousStorageIfAvailable({ TraceParent(bytes: $0) }) ?? TraceParent(bytes: Array(utf8)) else { return nil }
        self = parsed
    }

    /// Parses a header value's bytes in place (the consumer parses every record's header).
    init?(bytes: some RandomAccessCollection<UInt8>) {
        let dash = UInt8(ascii: "-")
        // `vv-<32>-<16>-ff`: 55 bytes, dashes at 2, 35 and 52; a future version may go on after another dash.
        guard bytes.count >= 55 else { return nil }
        func at(_ offset: Int) -> UInt8 { bytes[bytes.index(bytes.startIndex, offsetBy: offset)] }
        /// The hex number of `count` lower-case digits from `offset`; nil when one is not such a digit.
        func number(_ offset: Int, _ count: Int) -> UInt64? {
            var value: UInt64 = 0
            for index in offset..<(offset + count) {
                let byte = at(index)
                switch byte {
                case 0x30...0x39: value = value << 4 | UInt64(byte - 0x30)
                case 0x61...0x66: value = value << 4 | UInt64(byte - 0x61 + 10)
                default: return nil
                }
            }
            return value
        }
        guard at(2) == dash, at(35) == dash, at(52) == dash, let version = number(0, 2), version != 0xFF else { return nil }
        guard bytes.count == 55 || (version != 0 && at(55) == dash) else { return nil }
        guard let high = number(3, 16), let low = number(19, 16), let parent = number(36, 16), let flags = number(53, 2),
            high != 0 || low != 0, parent != 0
        else { return nil }
        self.init(trace: (high, low), parent: parent, flags: UInt8(flags))
    }

    /// A new, sampled trace (random ids from the caller's generator: the shell's, never the simulator's).
    public static func newTrace(using generator: inout some RandomNumberGenerator) -> TraceParent {
        TraceParent(trace: (nonZero(&generator), nonZero(&generator)), parent: nonZero(&generator), flags: 0x01)
    }

    /// The same trace, continued by a new span (the next hop's parent).
    public func child(using generator: inout some RandomNumberGenerator) -> TraceParent {
        TraceParent(trace: trace, parent: Self.nonZero(&generator), flags: flagBits)
    }

    /// The same trace, continued by a span whose id is derived from `id` (deterministic: the consumer's span for
    /// one event always has the same id, in production and in the simulator).
    public func child(derivedFrom id: UUID128) -> TraceParent {
        TraceParent(trace: trace, parent: id.high == 0 ? 1 : id.high, flags: flagBits)
    }

    public var description: String {
        String(unsafeUninitializedCapacity: 55) { text in
            writeText(into: text)
            return 55
        }
    }

    /// The text as bytes (a Kafka record's `traceparent` header).
    public var textBytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: 55) { text, count in
            writeText(into: text)
            count = 55
        }
    }

    /// Writes the 55 bytes of the text in place: no interpolation of the three parts.
    private func writeText(into text: UnsafeMutableBufferPointer<UInt8>) {
        let dash = UInt8(ascii: "-")
        (text[0], text[1], text[2], text[35], text[52]) = (UInt8(ascii: "0"), UInt8(ascii: "0"), dash, dash, dash)
        Self.writeHex(trace.high, digits: 16, into: text, at: 3)
        Self.writeHex(trace.low, digits: 16, into: text, at: 19)
        Self.writeHex(parent, digits: 16, into: text, at: 36)
        Self.writeHex(UInt64(flagBits), digits: 2, into: text, at: 53)
    }

    private init(trace: (high: UInt64, low: UInt64), parent: UInt64, flags: UInt8) {
        self.trace = trace
        self.parent = parent
        self.flagBits = flags
    }

    public static func == (lhs: TraceParent, rhs: TraceParent) -> Bool {
        lhs.trace == rhs.trace && lhs.parent == rhs.parent && lhs.flagBits == rhs.flagBits
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(trace.high)
        hasher.combine(trace.low)
        hasher.combine(parent)
        hasher.combine(flagBits)
    }

    private static func nonZero(_ generator: inout some RandomNumberGenerator) -> UInt64 {
        var value: UInt64 = 0
        while value == 0 { value = generator.next() }
        return value
    }

    /// 16 lower-case hex digits.
    private static func hex(_ value: UInt64) -> String {
        String(unsafeUninitializedCapacity: 16) { text in
            writeHex(value, digits: 16, into: text, at: 0)
            return 16
        }
    }

    /// The last `digits` hex digits of `value` (lower case), into `text` from `start`.
    private static func writeHex(_ value: UInt64, digits: Int, into text: UnsafeMutableBufferPointer<UInt8>, at start: Int) {
        for index in 0..<digits { text[start + index] = hexDigit(UInt8(truncatingIfNeeded: value >> UInt64(4 * (digits - 1 - index))) & 0x0F) }
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
        headers.last { $0.name == "traceparent" }.flatMap { TraceParent(bytes: $0.value) }
    }
}
