import Foundation

/// Bounds on what an order request may hold. Defaults are the API's; all are checked before anything is stored.
public struct OrderLimits: Sendable, Hashable {
    public var maxItems = 100
    public var maxNameLength = 200
    public var maxEmailLength = 254
    public var maxProductNameLength = 200
    public var maxQuantity = 10_000
    public var maxUnitPrice = Money(cents: 100_000_000)  // 1,000,000.00
    public init() {}

    /// `maxUnitPrice` as a Decimal, for prices only `JSONDecoder` read: cents × 10⁻², the same value as cents / 100
    /// without a Decimal division.
    var maxUnitPriceDecimal: Decimal { Decimal(sign: .plus, exponent: -2, significand: Decimal(maxUnitPrice.cents)) }
}

/// One problem with one field, e.g. `items[0].quantity`: "must be at least 1".
public struct FieldError: Hashable, Sendable {
    public var field: String
    public var message: String
    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }
}

/// Why a request was refused before it touched the store.
public enum RequestError: Error, Hashable, Sendable {
    /// The body is not JSON, or not an object (HTTP 400).
    case malformed(String)
    /// The body is JSON but breaks the rules; one entry per field (HTTP 422).
    case invalid([FieldError])
}

/// A validated order request: `{"customerName","customerEmail","items":[{"productName","quantity","unitPrice"}]}`.
public struct OrderRequest: Hashable, Sendable {
    public var customerName: String
    public var customerEmail: String
    public var items: [OrderItem]
    public var totalAmount: Money

    /// SHA-1 of the canonical form: two requests with the same content have the same fingerprint, which is how a
    /// reused Idempotency-Key with a different body is recognised.
    public var fingerprint: String {
        var json = JSONWriter()
        json.object { json in
            json.field("customerName", customerName)
            json.field("customerEmail", customerEmail)
            json.key("items")
            OrderItem.write(items, to: &json)
        }
        return SHA1.hash(json.bytes).hexString
    }

    struct Wire: Decodable {
        var customerName: String?
        var customerEmail: String?
        var items: [WireItem]?
    }

    struct WireItem: Decodable {
        var productName: String?
        var quantity: Int?
        var unitPrice: Decimal?
        /// The price in cents when `PlainJSONReader` read it (then `unitPrice` is nil); never decoded.
        var unitPriceCents: Int64? = nil

        enum CodingKeys: String, CodingKey { case productName, quantity, unitPrice }
    }

    /// Decodes and validates a request body. Every problem is reported, not only the first.
    public static func parse(_ body: [UInt8], limits: OrderLimits = OrderLimits()) -> Result<OrderRequest, RequestError> {
        if let wire = PlainJSONReader.readRequest(body) { return validate(wire, limits: limits) }
        return parseWithDecoder(body, limits: limits)
    }

    /// `parse` through `JSONDecoder` alone (what the plain reader must agree with; tests compare the two).
    static func parseWithDecoder(_ body: [UInt8], limits: OrderLimits = OrderLimits()) -> Result<OrderRequest, RequestError> {
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: Data(body))
        } catch let error as DecodingError {
            return .failure(describe(error))
        } catch {
            return .failure(.malformed("the body is not valid JSON"))
        }
        return validate(wire, limits: limits)
    }

    private static func describe(_ error: DecodingError) -> RequestError {
        func path(_ codingPath: [any CodingKey]) -> String {
            var text = ""
            for key in codingPath {
                if let index = key.intValue { text += "[\(index)]" } else { text += text.isEmpty ? key.stringValue : ".\(key.stringValue)" }
            }
            return text
        }
        switch error {
        case .typeMismatch(let type, let context) where !context.codingPath.isEmpty:
            return .invalid([FieldError(field: path(context.codingPath), message: "must be \(expectation(for: type))")])
        case .dataCorrupted(let context) where !context.codingPath.isEmpty:
            return .invalid([FieldError(field: path(context.codingPath), message: "has a value of the wrong type or range")])
        case .valueNotFound(let type, let context) where !context.codingPath.isEmpty:
            return .invalid([FieldError(field: path(context.codingPath), message: "must be \(expectation(for: type))")])
        case .typeMismatch:
            return .malformed("the body must be a JSON object")
        default:
            return .malformed("the body is not valid JSON")
        }
    }

    private static func expectation(for type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type: "an integer"
        case is Decimal.Type: "a number"
        case is [WireItem].Type: "an array"
        default: "an object"
        }
    }

    private static func validate(_ wire: Wire, limits: OrderLimits) -> Result<OrderRequest, RequestError> {
        var errors: [FieldError] = []
        // Field names are made only for an error (the usual request has none: no text built per item).
        func check(_ field: @autoclosure () -> String, _ text: String?, max: Int) -> String {
            guard let text else {
                errors.append(FieldError(field: field(), message: "is required"))
                return ""
            }
            if isPrintableASCII(text) {
                // One byte per character, none of them control characters: the checks below, on bytes.
                if text.utf8.allSatisfy({ $0 == 0x20 }) { errors.append(FieldError(field: field(), message: "must not be blank")) }
                if text.utf8.count > max { errors.append(FieldError(field: field(), message: "must be at most \(max) characters")) }
                return text
            }
            // Scalar and byte views first: grapheme work only where it can change the answer.
            if text.unicodeScalars.allSatisfy(\.properties.isWhitespace) { errors.append(FieldError(field: field(), message: "must not be blank")) }
            if text.utf8.count > max, text.count > max { errors.append(FieldError(field: field(), message: "must be at most \(max) characters")) }
            if text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
                errors.append(FieldError(field: field(), message: "must not contain control characters"))
            }
            return text
        }
        let name = check("customerName", wire.customerName, max: limits.maxNameLength)
        let email = check("customerEmail", wire.customerEmail, max: limits.maxEmailLength)
        if wire.customerEmail != nil, !email.isEmpty, !isPlausibleEmail(email) {
            errors.append(FieldError(field: "customerEmail", message: "must be an e-mail address like name@example.com"))
        }
        var items: [OrderItem] = []
        var total = Money.zero
        switch wire.items {
        case nil:
            errors.append(FieldError(field: "items", message: "is required"))
        case let list? where list.isEmpty:
            errors.append(FieldError(field: "items", message: "must hold at least one item"))
        case let list? where list.count > limits.maxItems:
            errors.append(FieldError(field: "items", message: "must hold at most \(limits.maxItems) items"))
        case let list?:
            for (index, item) in list.enumerated() {
                func field(_ name: String) -> String { "items[\(index)].\(name)" }
                let product = check(field("productName"), item.productName, max: limits.maxProductNameLength)
                var quantity = 0
                if let q = item.quantity {
                    if q < 1 {
                        errors.append(FieldError(field: field("quantity"), message: "must be at least 1"))
                    } else if q > limits.maxQuantity {
                        errors.append(FieldError(field: field("quantity"), message: "must be at most \(limits.maxQuantity)"))
                    } else {
                        quantity = q
                    }
                } else {
                    errors.append(FieldError(field: field("quantity"), message: "is required"))
                }
                var price: Money?
                if let cents = item.unitPriceCents {
                    if cents > limits.maxUnitPrice.cents {
                        errors.append(FieldError(field: field("unitPrice"), message: "must be at most \(limits.maxUnitPrice)"))
                    } else {
                        price = Money(cents: cents)
                    }
                } else if let decimal = item.unitPrice {
                    if decimal < 0 {
                        errors.append(FieldError(field: field("unitPrice"), message: "must not be negative"))
                    } else if decimal > limits.maxUnitPriceDecimal {
                        errors.append(FieldError(field: field("unitPrice"), message: "must be at most \(limits.maxUnitPrice)"))
                    } else if let money = Money(decimalText: plainText(decimal)) {
                        price = money
                    } else {
                        errors.append(FieldError(field: field("unitPrice"), message: "must have at most 2 decimal places"))
                    }
                } else {
                    errors.append(FieldError(field: field("unitPrice"), message: "is required"))
                }
                if let price, quantity > 0 {
                    let item = OrderItem(productName: product, quantity: quantity, unitPrice: price)
                    items.append(item)
                    // Bounded by the limits above (100 items × 10,000 × 1,000,000.00 fits in Int64 cents).
                    total = total.adding(item.lineTotal) ?? total
                }
            }
        }
        guard errors.isEmpty else { return .failure(.invalid(errors)) }
        return .success(OrderRequest(customerName: name, customerEmail: email, items: items, totalAmount: total))
    }

    /// Decimal's text in plain notation (no exponent), so `Money` sees every fraction digit.
    private static func plainText(_ value: Decimal) -> String {
        var value = value
        var text = NSDecimalString(&value, nil)
        if text.contains("e") || text.contains("E") { text = "\(value)" }
        return text
    }

    /// Only bytes 0x20…0x7E: each is one character, and none is a control character.
    private static func isPrintableASCII(_ text: String) -> Bool {
        var text = text
        return text.withUTF8 { $0.allSatisfy { $0 >= 0x20 && $0 < 0x7F } }
    }

    private static func isPlausibleEmail(_ text: String) -> Bool {
        isPrintableASCII(text) && !text.utf8.contains(0x20) ? isPlausibleASCIIEmail(text) : isPlausibleEmailByCharacters(text)
    }

    /// One `@` between a local part (1…64 characters) and a domain: labels of letters, numbers and `-` joined by dots,
    /// at least two, none empty; no whitespace anywhere.
    static func isPlausibleEmailByCharacters(_ text: String) -> Bool {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, let local = parts.first, let domain = parts.last else { return false }
        guard !local.isEmpty, local.count <= 64, domain.count >= 3 else { return false }
        guard !text.contains(where: { $0.isWhitespace }) else { return false }
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        return labels.count >= 2 && labels.allSatisfy { !$0.isEmpty && $0.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" } }
    }

    /// `isPlausibleEmailByCharacters` for text of printable ASCII without spaces, in one pass over its bytes (where a
    /// letter is A–Z or a–z and a number 0–9, as Character's properties say for ASCII).
    static func isPlausibleASCIIEmail(_ text: String) -> Bool {
        var text = text
        return text.withUTF8 { bytes in
            guard let at = bytes.firstIndex(of: UInt8(ascii: "@")), at > 0, at <= 64, bytes.count - at - 1 >= 3 else { return false }
            var dots = 0
            var previous = UInt8(ascii: ".")  // a label may not be empty: no dot first, after a dot, or last
            for byte in bytes[(at + 1)...] {
                switch byte {
                case UInt8(ascii: "."):
                    guard previous != UInt8(ascii: ".") else { return false }
                    dots += 1
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"):
                    break
                default:
                    return false
                }
                previous = byte
            }
            return dots > 0 && previous != UInt8(ascii: ".")
        }
    }
}
