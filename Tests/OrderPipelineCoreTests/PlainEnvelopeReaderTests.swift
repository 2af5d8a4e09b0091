import OrderPipelineTestSupport
import Testing

@testable import OrderPipelineCore

/// `EventEnvelope.decode` reads plain payloads without JSONDecoder; on every payload, plain or not, well-formed or
/// not, it must give exactly what the decoder path gives, and where the plain reader answers, the decoder's fields.
@Suite struct PlainEnvelopeReading {
    static let order = OrderID("11111111-2222-4333-8444-555555555555")!
    static let id = EventID.derived(order: order, type: .orderCreated)

    /// Checks one payload; true when the plain reader read it.
    @discardableResult
    static func agree(_ payload: [UInt8], _ comment: @autoclosure () -> String) -> Bool {
        let (plain, disagreement) = compare(payload, comment())
        #expect(disagreement == nil, "\(disagreement ?? "")")
        return plain
    }

    /// Whether the plain reader read the payload, and how the two readers disagree on it (nil when they agree):
    /// the loops of thousands of payloads run it off the cooperative pool (`compute`) and assert on what it found.
    static func compare(_ payload: [UInt8], _ comment: @autoclosure () -> String) -> (plain: Bool, disagreement: String?) {
        guard EventEnvelope.decode(payload) == EventEnvelope.decodeWithDecoder(payload) else { return (false, "decode differs, payload: \(comment())") }
        guard let plain = PlainJSONReader.readEnvelope(payload) else { return (false, nil) }
        guard plain == EventEnvelope.decoderFields(payload) else { return (true, "fields differ, payload: \(comment())") }
        return (true, nil)
    }

    @Test func eventsThePipelineWritesAreReadPlainly() {
        for (name, plain) in [("Customer 1", true), ("Zoë", false), ("A \"quoted\" name", false), ("tab\there", false)] {
            let order = Order(
                id: Self.order, customerName: name, customerEmail: "a@example.com",
                items: [OrderItem(productName: "P", quantity: 3, unitPrice: Money(cents: 1_999))], totalAmount: Money(cents: 5_997),
                createdAt: Instant(microseconds: 1_790_000_000_000_000), failureReason: "out of stock")
            for type in EventType.allCases {
                let payload = PipelineEvent(type: type, order: order, at: Instant(microseconds: 1_790_000_000_123_456), includeOrder: true).payload
                #expect(Self.agree(payload, String(decoding: payload, as: UTF8.self)) == plain)
                #expect(EventEnvelope.decode(payload) == .success(EventEnvelope(id: .derived(order: Self.order, type: type), type: type, orderID: Self.order)))
            }
            let short = PipelineEvent(type: .orderFulfilled, orderID: Self.order, at: Instant(microseconds: 0), status: .fulfilled).payload
            #expect(Self.agree(short, String(decoding: short, as: UTF8.self)))
        }
    }

    static let idTexts = [
        "\"\(id)\"", "\"\(id.description.uppercased())\"", "\"\(EventID.derived(order: order, type: .orderFailed))\"", "\"not-a-uuid\"", "null",
        "5", "\"\\u0031\(id.description.dropFirst())\"", "[]", "{}", "\"\(id)", "true",
    ]
    static let typeTexts = [#""OrderCreated""#, #""OrderFulfilled""#, #""orderCreated""#, "null", "1", #""Order\u0043reated""#, "\"Créé\""]
    static let orderTexts = ["\"\(order)\"", "\"\(order.description.dropLast())\"", "null", "0", "\"\(order)\"x"]
    static let others = [
        "1", "-1", "0", "-0", "1.5", "-0.25", "01", "1.", ".5", "-", "1e5", "1E-2", "+1", "123456789012345678901234567890", "true",
        "false", "null", "tru", "nul", "falsey", #""x""#, #""a\"b""#, #""\u00e9""#, "\"é\"", "\"\t\"", #""unterminated"#, "[]", "{}",
        "[1, 2, 3]", "[1,2,]", #"{"a": {"b": [null, true, "c"]}}"#, #"{"a":1,"a":2}"#, #"{"a" 1}"#, "[[[[[[[[[[]]]]]]]]]]", "{,}", "",
        String(repeating: "[", count: 40) + String(repeating: "]", count: 40),
    ]
    static let spaces = ["", " ", "\n", "\t", "\r\n "]

    @Test func agreesWithTheDecoderOnGeneratedPayloads() async {
        let (plain, successes, disagreements) = await compute { () -> (Int, Int, [String]) in
            var random = SplitMix64(seed: 0xE1_7E10)
            func pick<T>(_ list: [T]) -> T { list[Int(random.below(UInt64(list.count)))] }
            func mostly(_ valid: String, _ list: [String]) -> String { random.chance(0.7) ? valid : pick(list) }
            var (plain, successes, disagreements) = (0, 0, [String]())
            for _ in 0..<5_000 {
                let space = pick(Self.spaces)
                var fields = [
                    ("eventId", mostly(Self.idTexts[0], Self.idTexts)), ("eventType", mostly(Self.typeTexts[0], Self.typeTexts)),
                    ("orderId", mostly(Self.orderTexts[0], Self.orderTexts)),
                ]
                fields = fields.filter { _ in random.chance(0.95) }
                for _ in 0..<random.below(4) { fields.append((pick(["status", "order", "totalAmount", "x", ""]), pick(Self.others))) }
                if random.chance(0.05) { fields.append((pick(["eventId", "eventType", "orderId"]), pick(Self.idTexts + Self.typeTexts))) }
                fields.shuffle(using: &random)
                let object = "{" + space + fields.map { "\"\($0.0)\"" + space + ":" + space + $0.1 }.joined(separator: "," + space) + space + "}"
                let payload = space + object + (random.chance(0.05) ? pick(["x", "}", ",", "{}", "\u{0}"]) : pick(Self.spaces))
                let (read, disagreement) = Self.compare(Array(payload.utf8), payload)
                if read { plain += 1 }
                if let disagreement { disagreements.append(disagreement) }
                if case .success = EventEnvelope.decode(Array(payload.utf8)) { successes += 1 }
            }
            return (plain, successes, disagreements)
        }
        #expect(disagreements.isEmpty, "\(disagreements.count) payloads: \(disagreements.prefix(5))")
        #expect(plain > 1_000, "enough payloads read plainly to compare the plain reader's fields")
        #expect(successes > 500, "enough valid payloads")
    }

    @Test func agreesWithTheDecoderOnDamagedPayloads() async {
        let disagreements = await compute { () -> [String] in
            let order = Order(
                id: Self.order, customerName: "Customer 1", customerEmail: "a@example.com",
                items: [OrderItem(productName: "Product 1", quantity: 2, unitPrice: Money(cents: 999))], totalAmount: Money(cents: 1_998),
                createdAt: Instant(microseconds: 0))
            let payload = PipelineEvent(type: .orderCreated, order: order, at: Instant(microseconds: 0), includeOrder: true).payload
            var disagreements: [String] = []
            func check(_ damaged: [UInt8], _ comment: @autoclosure () -> String) {
                if let disagreement = Self.compare(damaged, comment()).disagreement { disagreements.append(disagreement) }
            }
            // Every prefix (a truncated record) and, at every position, a byte replaced, inserted or removed.
            for end in 0...payload.count { check(Array(payload[..<end]), "prefix of \(end) bytes") }
            let replacements = Array(#"{}[],:" \-.0e9tnx"#.utf8) + [0x00, 0x7F, 0xC3, 0xFF]
            for position in payload.indices {
                for byte in replacements {
                    var replaced = payload
                    replaced[position] = byte
                    check(replaced, "byte \(position) replaced by \(byte)")
                    var inserted = payload
                    inserted.insert(byte, at: position)
                    check(inserted, "byte \(byte) inserted at \(position)")
                }
                var removed = payload
                removed.remove(at: position)
                check(removed, "byte \(position) removed")
            }
            return disagreements
        }
        #expect(disagreements.isEmpty, "\(disagreements.count) payloads: \(disagreements.prefix(5))")
    }
}

/// `StatusChangeRequest.parse` reads plain bodies the same way: the same result as `JSONDecoder` on every body.
@Suite struct PlainStatusChangeReading {
    @Test func agreesWithTheDecoderOnGeneratedBodies() {
        let statuses = [#""Failed""#, #""Fulfilled""#, #""failed""#, #""Nope""#, "null", "1", #""F\u0061iled""#, "\"Failed", "[]"]
        let reasons = [#""cancelled by the customer""#, #""""#, "null", "5", #""a\nb""#, "\"é\"", "\"\t\"", "\"" + String(repeating: "r", count: 501) + "\""]
        var random = SplitMix64(seed: 0x57A7_0005)
        func pick<T>(_ list: [T]) -> T { list[Int(random.below(UInt64(list.count)))] }
        var (plain, successes) = (0, 0)
        for _ in 0..<3_000 {
            let space = pick(PlainEnvelopeReading.spaces)
            var fields = [("status", random.chance(0.7) ? statuses[0] : pick(statuses)), ("reason", pick(reasons))].filter { _ in random.chance(0.9) }
            for _ in 0..<random.below(3) { fields.append((pick(["status", "reason", "x"]), pick(PlainEnvelopeReading.others))) }
            fields.shuffle(using: &random)
            let object = "{" + space + fields.map { "\"\($0.0)\"" + space + ":" + space + $0.1 }.joined(separator: "," + space) + space + "}"
            let body = Array((space + object + (random.chance(0.05) ? pick(["x", "}", ",", "{}"]) : pick(PlainEnvelopeReading.spaces))).utf8)
            let result = StatusChangeRequest.parse(body)
            #expect(result == StatusChangeRequest.parseWithDecoder(body), "body: \(String(decoding: body, as: UTF8.self))")
            if PlainJSONReader.readStrings(body, keys: ["status", "reason"]) != nil { plain += 1 }
            if case .success = result { successes += 1 }
        }
        #expect(plain > 500 && successes > 300, "enough plain and valid bodies")
    }
}
