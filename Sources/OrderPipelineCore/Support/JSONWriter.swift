/// A small JSON writer with a fixed key order and exact number text.
///
/// Events, API responses and simulator traces are written with it so that the same value always gives the same
/// bytes (Foundation's encoder does not promise key order, and would route money through Double).
public struct JSONWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    /// Room for a typical event or response up front: growing the array step by step costs more than writing it.
    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    public var string: String { String(decoding: bytes, as: UTF8.self) }

    public mutating func object(_ body: (inout JSONWriter) -> Void) {
        separator()
        bytes.append(UInt8(ascii: "{"))
        body(&self)
        bytes.append(UInt8(ascii: "}"))
    }

    public mutating func array(_ body: (inout JSONWriter) -> Void) {
        separator()
        bytes.append(UInt8(ascii: "["))
        body(&self)
        bytes.append(UInt8(ascii: "]"))
    }

    public mutating func key(_ name: String) {
        separator()
        appendQuoted(name)
        bytes.append(UInt8(ascii: ":"))
    }

    public mutating func string(_ value: String) {
        separator()
        appendQuoted(value)
    }

    /// A number given as its exact text (e.g. money "1999.98"); the caller guarantees it is a JSON number.
    public mutating func number(text: String) {
        separator()
        bytes.append(contentsOf: text.utf8)
    }

    public mutating func int(_ value: Int64) {
        separator()
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        appendDigits(value.magnitude)
    }
    public mutating func int(_ value: Int) { int(Int64(value)) }

    /// Money as its exact decimal text (`Money.description`: "-"?, whole units, ".", two digits).
    public mutating func money(_ value: Money) {
        separator()
        if value.cents < 0 { bytes.append(UInt8(ascii: "-")) }
        appendDigits(value.cents.magnitude / 100)
        bytes.append(UInt8(ascii: "."))
        appendDigits(value.cents.magnitude % 100, count: 2)
    }

    public mutating func bool(_ value: Bool) { number(text: value ? "true" : "false") }
    public mutating func null() { number(text: "null") }

    public mutating func field(_ name: String, _ value: String) { key(name); string(value) }
    public mutating func field(_ name: String, _ value: String?) {
        key(name)
        if let value { string(value) } else { null() }
    }
    public mutating func field(_ name: String, _ value: Int64) { key(name); int(value) }
    public mutating func field(_ name: String, _ value: Int) { key(name); int(value) }

    /// The decimal digits of `value`, at least `count` of them (zeros in front).
    private mutating func appendDigits(_ value: UInt64, count: Int = 1) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for UInt64.max's 20 digits
        withUnsafeMutableBytes(of: &digits) { digits in
            var value = value
            var start = digits.count
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            } while value > 0 || digits.count - start < count
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: digits[start...]))
        }
    }

    /// A value (or key) needs a comma before it unless it is the first: the last byte written tells which, as every
    /// value ends in `"`, `}`, `]`, a digit or a letter, and a container opens with `{`/`[` and a key ends in `:`.
    private mutating func separator() {
        guard let last = bytes.last, last != UInt8(ascii: "{"), last != UInt8(ascii: "["), last != UInt8(ascii: ":") else { return }
        bytes.append(UInt8(ascii: ","))
    }

    /// A string value of `count` bytes that `write` puts in place; the caller guarantees they are printable ASCII
    /// other than quote and backslash (ids, timestamps), so nothing needs escaping.
    mutating func asciiString(count: Int, _ write: (UnsafeMutableRawBufferPointer) -> Void) {
        separator()
        // Put together on the stack and appended in one go: cheaper than zero-filling room in the array first.
        withUnsafeTemporaryAllocation(byteCount: count + 2, alignment: 1) { text in
            text[0] = UInt8(ascii: "\"")
            write(UnsafeMutableRawBufferPointer(rebasing: text[1..<(count + 1)]))
            text[count + 1] = UInt8(ascii: "\"")
            bytes.append(contentsOf: text)
        }
    }

    /// Copies UTF-8 bytes through, escaping only what JSON requires (quote, backslash, control characters).
    private mutating func appendQuoted(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            // Most text needs no escape at all: then it is copied in one go.
            guard utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else {
                bytes.append(contentsOf: utf8)
                return
            }
            for byte in utf8 {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    bytes.append(UInt8(ascii: "\\"))
                    bytes.append(byte)
                case UInt8(ascii: "\n"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
                case UInt8(ascii: "\r"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
                case UInt8(ascii: "\t"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
                case 0..<0x20:
                    bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hexDigit(byte >> 4), hexDigit(byte & 0x0F)])
                default:
                    bytes.append(byte)
                }
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

extension JSONWriter {
    /// `"name":"<uuid>"`, written in place.
    public mutating func field(_ name: String, _ id: some UUIDIdentity) {
        key(name)
        asciiString(count: UUID128.textLength) { id.uuid.writeText(into: $0) }
    }

    /// `"name":"<RFC 3339 instant>"`, written in place for the years 0…9999.
    public mutating func field(_ name: String, _ instant: Instant) {
        key(name)
        let fields = instant.civilFields
        guard (0...9999).contains(fields.year) else { return string(instant.description) }
        asciiString(count: Instant.textLength) { instant.writeText(fields, into: $0) }
    }
}
