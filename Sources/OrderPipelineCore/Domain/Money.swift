/// An exact amount of money in minor units (cents): never floating point.
public struct Money: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var cents: Int64
    public init(cents: Int64) { self.cents = cents }

    public static let zero = Money(cents: 0)

    /// Parses decimal text with at most two fraction digits ("999.99", "10", "0.5"); nil when malformed or more precise.
    public init?(decimalText text: some StringProtocol) {
        var digits = Substring(text)
        var negative = false
        if digits.first == "-" { negative = true; digits = digits.dropFirst() }
        let parts = digits.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let whole = parts.first, !whole.isEmpty, whole.count <= 15, whole.allSatisfy(\.isASCIIDigit) else { return nil }
        var fraction = parts.count == 2 ? parts[1] : ""
        guard fraction.count <= 2, fraction.allSatisfy(\.isASCIIDigit), parts.count == 1 || !fraction.isEmpty else { return nil }
        while fraction.count < 2 { fraction += "0" }
        guard let units = Int64(whole), let hundredths = Int64(fraction) else { return nil }
        cents = (units * 100 + hundredths) * (negative ? -1 : 1)
    }

    /// Exact decimal text with two fraction digits, usable as a JSON number and a PostgreSQL `numeric` literal.
    public var description: String {
        let magnitude = cents.magnitude
        let fraction = magnitude % 100
        return (cents < 0 ? "-" : "") + "\(magnitude / 100)." + (fraction < 10 ? "0" : "") + "\(fraction)"
    }

    public static func < (lhs: Money, rhs: Money) -> Bool { lhs.cents < rhs.cents }

    /// Sum and product that report overflow instead of trapping.
    public func adding(_ other: Money) -> Money? {
        let (value, overflow) = cents.addingReportingOverflow(other.cents)
        return overflow ? nil : Money(cents: value)
    }

    public func multiplied(by quantity: Int) -> Money? {
        let (value, overflow) = cents.multipliedReportingOverflow(by: Int64(quantity))
        return overflow ? nil : Money(cents: value)
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
