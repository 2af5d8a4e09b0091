extension PlainJSONReader {
    /// The three fields an event envelope needs (`EventEnvelope.decode`) from a plain payload; nil when it is not
    /// plain (the decoder decides those).
    static func readEnvelope(_ payload: [UInt8]) -> EventEnvelope.Fields? {
        guard let values = readStrings(payload, keys: EventEnvelope.Fields.keys) else { return nil }
        return EventEnvelope.Fields(eventId: values[0], eventType: values[1], orderId: values[2])
    }

    /// The values of `keys` in a plain object, as a `Decodable` struct of optional strings gets them: each a string,
    /// or nil when missing or `null`; every other key's value is skipped. nil when not plain, or when one of `keys`
    /// comes twice or holds anything but a string or `null` (the decoder decides those).
    static func readStrings(_ payload: [UInt8], keys: [String]) -> [String?]? {
        var values = [String?](repeating: nil, count: keys.count)
        var seen = [Bool](repeating: false, count: keys.count)
        return reading(payload) { reader in
            let complete = reader.object { reader, key in
                guard let index = keys.firstIndex(of: key) else { return reader.skipValue(depth: 1) }
                guard !seen[index] else { return false }
                seen[index] = true
                return reader.stringOrNull(&values[index])
            }
            return complete ? values : nil
        }
    }

    /// A plain string into `value`, or `null` (nil); false for anything else.
    mutating func stringOrNull(_ value: inout String?) -> Bool {
        skipSpace()
        if skipLiteral("null") { return true }
        value = string()
        return value != nil
    }

    /// Skips one plain value (nested at most 32 deep); false when it is not plain.
    mutating func skipValue(depth: Int) -> Bool {
        guard depth <= 32 else { return false }
        skipSpace()
        guard at < bytes.count else { return false }
        switch bytes[at] {
        case UInt8(ascii: "\""):
            return skipString()
        case UInt8(ascii: "{"):
            at += 1
            if take(UInt8(ascii: "}")) { return true }
            repeat {
                skipSpace()
                guard skipString(), take(UInt8(ascii: ":")), skipValue(depth: depth + 1) else { return false }
            } while take(UInt8(ascii: ","))
            return take(UInt8(ascii: "}"))
        case UInt8(ascii: "["):
            at += 1
            if take(UInt8(ascii: "]")) { return true }
            repeat {
                guard skipValue(depth: depth + 1) else { return false }
            } while take(UInt8(ascii: ","))
            return take(UInt8(ascii: "]"))
        case UInt8(ascii: "t"): return skipLiteral("true")
        case UInt8(ascii: "f"): return skipLiteral("false")
        case UInt8(ascii: "n"): return skipLiteral("null")
        default: return skipNumber()
        }
    }

    /// A string of printable ASCII with no escapes, not kept.
    mutating func skipString() -> Bool {
        guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { return false }
        at += 1
        while at < bytes.count {
            let byte = bytes[at]
            at += 1
            if byte == UInt8(ascii: "\"") { return true }
            guard byte >= 0x20, byte < 0x7F, byte != UInt8(ascii: "\\") else { return false }
        }
        return false
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, ending where a number may end.
    mutating func skipNumber() -> Bool {
        if at < bytes.count, bytes[at] == UInt8(ascii: "-") { at += 1 }
        let start = at
        while at < bytes.count, Self.digit(bytes[at]) != nil { at += 1 }
        guard at > start, at - start == 1 || bytes[start] != UInt8(ascii: "0") else { return false }
        if at < bytes.count, bytes[at] == UInt8(ascii: ".") {
            at += 1
            let fraction = at
            while at < bytes.count, Self.digit(bytes[at]) != nil { at += 1 }
            guard at > fraction else { return false }
        }
        return isNumberEnd
    }

    /// `true`, `false` or `null` (whichever `literal` is), ending where a value may end.
    mutating func skipLiteral(_ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard at + count <= bytes.count else { return false }
        for index in 0..<count where bytes[at + index] != literal.utf8Start[index] { return false }
        at += count
        return isNumberEnd
    }
}
