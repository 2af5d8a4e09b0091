/// A 128-bit UUID as two words: cheap to hash and compare, formatted lower-case (RFC 9562).
public struct UUID128: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public init(bytes: some Collection<UInt8>) {
        precondition(bytes.count >= 16)
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (index, byte) in bytes.prefix(16).enumerated() {
            if index < 8 { high = high << 8 | UInt64(byte) } else { low = low << 8 | UInt64(byte) }
        }
        self.init(high: high, low: low)
    }

    /// A random (version 4) UUID from the caller's generator; the simulator passes its seeded one.
    public static func random(using generator: inout some RandomNumberGenerator) -> UUID128 {
        let high = (generator.next() & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000
        let low = (generator.next() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000
        return UUID128(high: high, low: low)
    }

    /// A name-based (version 5, SHA-1) UUID: the same namespace and name always give the same id.
    public static func nameBased(namespace: UUID128, name: String) -> UUID128 {
        var name = name
        return name.withUTF8 { nameBased(namespace: namespace, name: UnsafeRawBufferPointer($0)) }
    }

    static func nameBased(namespace: UUID128, name: UnsafeRawBufferPointer) -> UUID128 {
        var sha = SHA1()
        withUnsafeBytes(of: (namespace.high.bigEndian, namespace.low.bigEndian)) { sha.update($0) }
        sha.update(name)
        let (h0, h1, h2, h3, _) = sha.finishWords()
        // The first 16 bytes of the digest, with the version (5) and the variant (10xx) set.
        let high = (UInt64(h0) << 32 | UInt64(h1)) & 0xFFFF_FFFF_FFFF_0FFF | 0x0000_0000_0000_5000
        let low = (UInt64(h2) << 32 | UInt64(h3)) & 0x3FFF_FFFF_FFFF_FFFF | 0x8000_0000_0000_0000
        return UUID128(high: high, low: low)
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(16)
        for word in [high, low] {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
        }
        return out
    }

    /// The length of the canonical text, `8-4-4-4-12` hexadecimal digits.
    static var textLength: Int { 36 }

    /// Writes the canonical text (lower case) into the first 36 bytes of `text`.
    func writeText(into text: UnsafeMutableRawBufferPointer) {
        // A byte at a time, most significant first; a dash after the 4th, 6th, 8th and 10th.
        var at = 0
        for index in 0..<16 {
            let byte = UInt8(truncatingIfNeeded: (index < 8 ? high : low) &>> (56 - 8 * (index & 7)))
            text[at] = hexDigit(byte >> 4)
            text[at + 1] = hexDigit(byte & 0x0F)
            at += 2
            if index == 3 || index == 5 || index == 7 || index == 9 {
                text[at] = UInt8(ascii: "-")
                at += 1
            }
        }
    }

    public var description: String {
        String(unsafeUninitializedCapacity: Self.textLength) { text in
            writeText(into: UnsafeMutableRawBufferPointer(text))
            return Self.textLength
        }
    }

    /// The canonical text as bytes, written in place (a Kafka record's key and `event-id` header).
    public var textBytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: Self.textLength) { text, count in
            writeText(into: UnsafeMutableRawBufferPointer(text))
            count = Self.textLength
        }
    }

    /// Parses the canonical 36-character form (either case); nil for anything else.
    public init?(_ text: some StringProtocol) {
        let utf8 = text.utf8
        guard utf8.count == Self.textLength else { return nil }
        let parsed = utf8.withContiguousStorageIfAvailable { UUID128(text: UnsafeRawBufferPointer($0)) } ?? UUID128(text: Array(utf8))
        guard let parsed else { return nil }
        self = parsed
    }

    /// Parses the canonical text from bytes; nil for anything else.
    init?(text: some Collection<UInt8>) {
        guard text.count == Self.textLength else { return nil }
        var words: (UInt64, UInt64) = (0, 0)
        var digits = 0
        for (index, char) in text.enumerated() {
            if index == 8 || index == 13 || index == 18 || index == 23 {
                guard char == UInt8(ascii: "-") else { return nil }
                continue
            }
            let nibble: UInt8
            switch char {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = char - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = char - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = char - UInt8(ascii: "A") + 10
            default: return nil
            }
            if digits < 16 { words.0 = words.0 << 4 | UInt64(nibble) } else { words.1 = words.1 << 4 | UInt64(nibble) }
            digits += 1
        }
        self.init(high: words.0, low: words.1)
    }

    public static func < (lhs: UUID128, rhs: UUID128) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// An identity that is a UUID: written and parsed as the UUID's text, ordered as the UUID.
public protocol UUIDIdentity: Hashable, Comparable, Sendable, CustomStringConvertible {
    var uuid: UUID128 { get }
    init(_ uuid: UUID128)
}

extension UUIDIdentity {
    /// Parses the UUID's text; nil when it is not a UUID.
    public init?(_ text: some StringProtocol) {
        guard let uuid = UUID128(text) else { return nil }
        self.init(uuid)
    }
    public var description: String { uuid.description }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.uuid < rhs.uuid }
}

/// The identity of an order. New ids come from the shell (the API server's system randomness, the simulator's seed).
public struct OrderID: UUIDIdentity {
    public var uuid: UUID128
    public init(_ uuid: UUID128) { self.uuid = uuid }
}

/// The identity of an event. Always derived from (order, event type), so a re-sent event carries the same id; the
/// id of `OrderFulfilled` is the Service Bus MessageId that duplicate detection keys on.
public struct EventID: UUIDIdentity {
    public var uuid: UUID128
    public init(_ uuid: UUID128) { self.uuid = uuid }

    /// The namespace of every derived event id (a fixed, project-specific UUID).
    public static let namespace = UUID128("2b1f6f1e-8a3c-4c56-9d0e-5a7b3c9e4f10")!

    public static func derived(order: OrderID, type: EventType) -> EventID {
        // The name is "<order id>/<type>", written into a stack buffer rather than a String (an event id is derived
        // for every event written and every record consumed).
        withUnsafeTemporaryAllocation(byteCount: 64, alignment: 1) { name in
            order.uuid.writeText(into: name)
            name[UUID128.textLength] = UInt8(ascii: "/")
            var length = UUID128.textLength + 1
            for byte in type.rawValue.utf8 {
                name[length] = byte
                length += 1
            }
            return EventID(UUID128.nameBased(namespace: namespace, name: UnsafeRawBufferPointer(rebasing: name[..<length])))
        }
    }
}

/// A point in time as microseconds since the Unix epoch. Machines are handed `now`; they never read a clock.
public struct Instant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var microseconds: Int64
    public init(microseconds: Int64) { self.microseconds = microseconds }

    public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.microseconds < rhs.microseconds }
    public static func + (lhs: Instant, rhs: Duration) -> Instant { Instant(microseconds: lhs.microseconds + rhs.microseconds) }
    public static func - (lhs: Instant, rhs: Instant) -> Duration { Duration.microseconds(lhs.microseconds - rhs.microseconds) }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-29T02:40:03.123456Z`.
    public var description: String {
        let fields = civilFields
        guard (0...9999).contains(fields.year) else {
            func pad(_ value: Int64, _ width: Int) -> String {
                let text = String(value)
                return String(repeating: "0", count: max(0, width - text.count)) + text
            }
            return "\(pad(fields.year, 4))-\(pad(fields.month, 2))-\(pad(fields.day, 2))T\(pad(fields.second / 3600, 2)):"
                + "\(pad(fields.second / 60 % 60, 2)):\(pad(fields.second % 60, 2)).\(pad(fields.micros, 6))Z"
        }
        return String(unsafeUninitializedCapacity: Self.textLength) { text in
            writeText(fields, into: UnsafeMutableRawBufferPointer(text))
            return Self.textLength
        }
    }

    /// The length of the text of an instant in the years 0…9999.
    static var textLength: Int { 27 }

    typealias CivilFields = (year: Int64, month: Int64, day: Int64, second: Int64, micros: Int64)

    /// Writes the text (27 bytes) of an instant whose year is within 0…9999.
    func writeText(_ fields: CivilFields, into text: UnsafeMutableRawBufferPointer) {
        var at = 0
        func put(_ value: Int64, _ width: Int, then separator: UInt8) {
            var value = value
            for index in stride(from: at + width - 1, through: at, by: -1) {
                text[index] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            }
            text[at + width] = separator
            at += width + 1
        }
        put(fields.year, 4, then: UInt8(ascii: "-"))
        put(fields.month, 2, then: UInt8(ascii: "-"))
        put(fields.day, 2, then: UInt8(ascii: "T"))
        put(fields.second / 3600, 2, then: UInt8(ascii: ":"))
        put(fields.second / 60 % 60, 2, then: UInt8(ascii: ":"))
        put(fields.second % 60, 2, then: UInt8(ascii: "."))
        put(fields.micros, 6, then: UInt8(ascii: "Z"))
    }

    /// Civil date (proleptic Gregorian, UTC), second of the day and microsecond of this instant.
    var civilFields: CivilFields {
        let seconds = microseconds.floorDivided(by: 1_000_000)
        let micros = microseconds - seconds * 1_000_000
        let days = seconds.floorDivided(by: 86_400)
        let secondOfDay = seconds - days * 86_400
        // Howard Hinnant's civil-from-days.
        let z = days + 719_468
        let era = z.floorDivided(by: 146_097)
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        return (year, month, day, secondOfDay, micros)
    }
}

extension Duration {
    /// Whole microseconds (the resolution of `Instant`).
    public var microseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    }
}

extension Int64 {
    fileprivate func floorDivided(by divisor: Int64) -> Int64 {
        let q = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? q - 1 : q
    }
}
