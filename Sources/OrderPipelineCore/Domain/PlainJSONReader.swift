/// Reads the JSON the pipeline itself writes in one pass, without Foundation: order requests (`readRequest`) and
/// event envelopes (`readEnvelope`). It reads only a plain subset of JSON — strings of printable ASCII without
/// escapes, numbers without signs or exponents where a value is read (with a sign, a fraction and no exponent where
/// one is skipped), `true`/`false`/`null`, objects and arrays of these — and gives nil for anything else (escapes,
/// non-ASCII, exponents, a known key twice, malformed JSON), which then goes through `JSONDecoder`. So every result
/// and every error is what the decoder alone gives; on what the reader accepts it yields the values the decoder
/// would.
struct PlainJSONReader {
    typealias Wire = OrderRequest.Wire
    typealias WireItem = OrderRequest.WireItem

    /// The bytes read, borrowed for one read (`reading`): no array bounds checks or reference counting per byte.
    let bytes: UnsafeBufferPointer<UInt8>
    var at = 0

    /// Runs `read` on a reader of `bytes`; nil unless it succeeds and only whitespace is left.
    static func reading<T>(_ bytes: [UInt8], _ read: (inout PlainJSONReader) -> T?) -> T? {
        bytes.withUnsafeBufferPointer { bytes in
            var reader = PlainJSONReader(bytes: bytes)
            guard let value = read(&reader) else { return nil }
            reader.skipSpace()
            return reader.at == bytes.count ? value : nil
        }
    }

    /// An order request body (`OrderRequest.parse`): an object holding only the three known keys, each at most once,
    /// in any order; quantities of plain digits and prices of plain digits with at most two decimals.
    static func readRequest(_ body: [UInt8]) -> Wire? { reading(body) { $0.request() } }

    mutating func request() -> Wire? {
        var wire = Wire()
        var seen = (name: false, email: false, items: false)
        let complete = object { reader, key in
            switch key {
            case "customerName" where !seen.name:
                seen.name = true
                wire.customerName = reader.string()
                return wire.customerName != nil
            case "customerEmail" where !seen.email:
                seen.email = true
                wire.customerEmail = reader.string()
                return wire.customerEmail != nil
            case "items" where !seen.items:
                seen.items = true
                wire.items = reader.items()
                return wire.items != nil
            default:
                return false
            }
        }
        return complete ? wire : nil
    }

    mutating func items() -> [WireItem]? {
        guard take(UInt8(ascii: "[")) else { return nil }
        var list: [WireItem] = []
        if take(UInt8(ascii: "]")) { return list }
        repeat {
            guard let item = item() else { return nil }
            list.append(item)
        } while take(UInt8(ascii: ","))
        return take(UInt8(ascii: "]")) ? list : nil
    }

    mutating func item() -> WireItem? {
        var item = WireItem()
        var seen = (name: false, quantity: false, price: false)
        let complete = object { reader, key in
            switch key {
            case "productName" where !seen.name:
                seen.name = true
                item.productName = reader.string()
                return item.productName != nil
            case "quantity" where !seen.quantity:
                seen.quantity = true
                guard let (whole, fraction) = reader.number(maxWholeDigits: 18), fraction == nil else { return false }
                item.quantity = Int(whole)
                return true
            case "unitPrice" where !seen.price:
                seen.price = true
                guard let (whole, fraction) = reader.number(maxWholeDigits: 15) else { return false }
                item.unitPriceCents = whole * 100 + (fraction ?? 0)
                return true
            default:
                return false
            }
        }
        return complete ? item : nil
    }

    /// `{ "key": value, … }`, handing each key to `value`, which reads the value (false: not plain, give up).
    mutating func object(_ value: (inout PlainJSONReader, String) -> Bool) -> Bool {
        guard take(UInt8(ascii: "{")) else { return false }
        if take(UInt8(ascii: "}")) { return true }
        repeat {
            guard let key = string(), take(UInt8(ascii: ":")), value(&self, key) else { return false }
        } while take(UInt8(ascii: ","))
        return take(UInt8(ascii: "}"))
    }

    /// A string of printable ASCII with no escapes.
    mutating func string() -> String? {
        guard take(UInt8(ascii: "\"")) else { return nil }
        let start = at
        while at < bytes.count {
            let byte = bytes[at]
            if byte == UInt8(ascii: "\"") {
                defer { at += 1 }
                return String(decoding: bytes[start..<at], as: UTF8.self)
            }
            guard byte >= 0x20, byte < 0x7F, byte != UInt8(ascii: "\\") else { return nil }
            at += 1
        }
        return nil
    }

    /// `0` or `[1-9][0-9]*` (at most `maxWholeDigits`), then optionally `.` and one or two digits; the fraction is
    /// returned in hundredths.
    mutating func number(maxWholeDigits: Int) -> (whole: Int64, hundredths: Int64?)? {
        skipSpace()
        let start = at
        var whole: Int64 = 0
        while at < bytes.count, let digit = Self.digit(bytes[at]) {
            guard at - start < maxWholeDigits else { return nil }  // before the digit is added: no overflow
            whole = whole * 10 + digit
            at += 1
        }
        let count = at - start
        guard count > 0, count == 1 || bytes[start] != UInt8(ascii: "0") else { return nil }
        guard at < bytes.count, bytes[at] == UInt8(ascii: ".") else { return isNumberEnd ? (whole, nil) : nil }
        at += 1
        guard at < bytes.count, let tenths = Self.digit(bytes[at]) else { return nil }
        at += 1
        var hundredths = tenths * 10
        if at < bytes.count, let digit = Self.digit(bytes[at]) {
            hundredths += digit
            at += 1
        }
        return isNumberEnd ? (whole, hundredths) : nil
    }

    /// A number ends at whitespace, `,`, `}` or `]` (not at a further digit, an exponent, or the end of the body).
    var isNumberEnd: Bool {
        guard at < bytes.count else { return false }
        let byte = bytes[at]
        return byte == UInt8(ascii: ",") || byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") || Self.isSpace(byte)
    }

    static func digit(_ byte: UInt8) -> Int64? {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") ? Int64(byte - UInt8(ascii: "0")) : nil
    }

    mutating func take(_ byte: UInt8) -> Bool {
        skipSpace()
        guard at < bytes.count, bytes[at] == byte else { return false }
        at += 1
        return true
    }

    mutating func skipSpace() {
        while at < bytes.count, Self.isSpace(bytes[at]) { at += 1 }
    }

    static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 }
}
