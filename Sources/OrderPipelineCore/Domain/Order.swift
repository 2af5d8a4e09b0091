/// The life of an order. Pending → Processing → Fulfilled | Failed; Pending → Failed; nothing moves backwards.
public enum OrderStatus: String, Sendable, CaseIterable, Comparable {
    case pending = "Pending"
    case processing = "Processing"
    case fulfilled = "Fulfilled"
    case failed = "Failed"

    /// The statuses this one may move to.
    public var successors: [OrderStatus] {
        switch self {
        case .pending: [.processing, .failed]
        case .processing: [.fulfilled, .failed]
        case .fulfilled, .failed: []
        }
    }

    public func canMove(to next: OrderStatus) -> Bool { successors.contains(next) }

    public var isFinal: Bool { successors.isEmpty }

    /// Position along the life of an order, for "never backwards" checks.
    public var rank: Int {
        switch self {
        case .pending: 0
        case .processing: 1
        case .fulfilled, .failed: 2
        }
    }

    public static func < (lhs: OrderStatus, rhs: OrderStatus) -> Bool { lhs.rank < rhs.rank }

    /// Accepts the canonical name in any letter case ("fulfilled", "Fulfilled").
    public init?(name: String) {
        guard let status = OrderStatus.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() }) else { return nil }
        self = status
    }
}

public struct OrderItem: Hashable, Sendable {
    public var productName: String
    public var quantity: Int
    public var unitPrice: Money

    public init(productName: String, quantity: Int, unitPrice: Money) {
        self.productName = productName
        self.quantity = quantity
        self.unitPrice = unitPrice
    }

    public var lineTotal: Money { unitPrice.multiplied(by: quantity) ?? Money(cents: .max) }

    /// The one way an order's items are written as JSON — in requests' fingerprints, events, API responses, the
    /// `items` column and the simulator's requests: `[{"productName","quantity","unitPrice"}, …]`, the price as its
    /// exact decimal text.
    public static func write(_ items: [OrderItem], to json: inout JSONWriter) {
        json.array { json in
            for item in items {
                json.object { json in
                    json.field("productName", item.productName)
                    json.field("quantity", item.quantity)
                    json.key("unitPrice"); json.money(item.unitPrice)
                }
            }
        }
    }
}

public struct Order: Hashable, Sendable {
    public var id: OrderID
    public var customerName: String
    public var customerEmail: String
    public var items: [OrderItem]
    public var totalAmount: Money
    public var status: OrderStatus
    public var createdAt: Instant
    public var processedAt: Instant?
    public var failureReason: String?

    public init(
        id: OrderID, customerName: String, customerEmail: String, items: [OrderItem], totalAmount: Money,
        status: OrderStatus = .pending, createdAt: Instant, processedAt: Instant? = nil, failureReason: String? = nil
    ) {
        self.id = id
        self.customerName = customerName
        self.customerEmail = customerEmail
        self.items = items
        self.totalAmount = totalAmount
        self.status = status
        self.createdAt = createdAt
        self.processedAt = processedAt
        self.failureReason = failureReason
    }

    /// The order as the API and the events show it (field names as in the seed's API).
    public func write(to json: inout JSONWriter) {
        json.object { json in
            json.field("id", id)
            json.field("customerName", customerName)
            json.field("customerEmail", customerEmail)
            json.field("status", status.rawValue)
            json.key("totalAmount"); json.money(totalAmount)
            json.field("createdAt", createdAt)
            if let processedAt { json.field("processedAt", processedAt) } else { json.field("processedAt", nil as String?) }
            json.field("failureReason", failureReason)
            json.key("items")
            OrderItem.write(items, to: &json)
        }
    }

    public var json: [UInt8] {
        var writer = JSONWriter()
        write(to: &writer)
        return writer.bytes
    }
}
