/// A small JSON writer with a fixed key order and exact number text.
///
/// Events, API responses and simulator traces are written with it so that the same value always gives the same
/// bytes (Foundation's encoder does not promise key order, and would route money through Double).
public struct JSONWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    private var needsComma: [Bool] = [false]

    public init() {}

    public var string: String { String(decoding: bytes, as: UTF8.self) }

    public mutating func object(_ body: (inout JSONWriter) -> Void) {
        separator()
        bytes.append(UInt8(ascii: "{"))
        needsComma.append(false)
        body(&self)
        needsComma.removeLast()
        bytes.append(UInt8(ascii: "}"))
    }

    public mutating func array(_ body: (inout JSONWriter) -> Void) {
        separator()
        bytes.append(UInt8(ascii: "["))
        needsComma.append(false)
        body(&self)
        needsComma.removeLast()
        bytes.append(UInt8(ascii: "]"))
    }

    public mutating func key(_ name: String) {
        separator()
        appendQuoted(name)
        bytes.append(UInt8(ascii: ":"))
        needsComma[needsComma.count - 1] = false
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

    public mutating func int(_ value: Int64) { number(text: String(value)) }
    public mutating func int(_ value: Int) { number(text: String(value)) }

    public mutating func bool(_ value: Bool) { number(text: value ? "true" : "false") }
    public mutating func null() { number(text: "null") }

    public mutating func field(_ name: String, _ value: String) { key(name); string(value) }
    public mutating func field(_ name: String, _ value: String?) {
        key(name)
        if let value { string(value) } else { null() }
    }
    public mutating func field(_ name: String, _ value: Int64) { key(name); int(value) }
    public mutating func field(_ name: String, _ value: Int) { key(name); int(value) }

    private mutating func separator() {
        if needsComma[needsComma.count - 1] { bytes.append(UInt8(ascii: ",")) }
        needsComma[needsComma.count - 1] = true
    }

    private mutating func appendQuoted(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": bytes.append(contentsOf: Array(#"\""#.utf8))
            case "\\": bytes.append(contentsOf: Array(#"\\"#.utf8))
            case "\n": bytes.append(contentsOf: Array(#"\n"#.utf8))
            case "\r": bytes.append(contentsOf: Array(#"\r"#.utf8))
            case "\t": bytes.append(contentsOf: Array(#"\t"#.utf8))
            case _ where scalar.value < 0x20:
                let hex = Array(String(scalar.value, radix: 16).utf8)
                bytes.append(contentsOf: Array(#"\u"#.utf8))
                bytes.append(contentsOf: Array(repeating: UInt8(ascii: "0"), count: 4 - hex.count))
                bytes.append(contentsOf: hex)
            default: bytes.append(contentsOf: Array(String(scalar).utf8))
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
