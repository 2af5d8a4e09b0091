import Testing

@testable import OrderPipelineCore

/// `OrderRequest.parse` reads plain bodies without JSONDecoder; on every body, plain or not, it must give exactly
/// what the decoder path gives (values and error messages).
@Suite struct PlainRequestReading {
    static let strings = [
        #""John Smith""#, #""""#, #""   ""#, #""a\"b""#, #""\u0041""#, "\"é\"", "\"x\u{7F}\"", "\"\t\"", #""john@example.com""#,
        #""a@b""#, #""@x.yz""#, #""a@@b.com""#, #""a@b..c""#, #""a@b-c.d""#, #""a b@c.de""#, #""A1@X9.Z""#, #""a@b_c.de""#,
        "\"" + String(repeating: "n", count: 201) + "\"", "null", "5", "[]", #""x"#,
    ]
    static let quantities = ["1", "2", "0", "-1", "1.0", "1e2", "10001", "10000", "007", "99999999999999999999", #""3""#, "null", "12."]
    static let prices = [
        "999.99", "0.07", "10.50", "1.005", "-0", "-1", "0", "0.0", "1000000.00", "1000000.01", "1e2", "00.5", "1.", ".5",
        "123456789012345.67", "1234567890123456", #""9.99""#, "null", "5E-1", "19.9", "1000000", "1000001",
    ]
    static let spaces = ["", " ", "\n", "\t", "\r\n "]

    @Test func agreesWithTheDecoderOnGeneratedBodies() {
        var random = SplitMix64(seed: 0x0B0D_1E5)
        func pick<T>(_ list: [T]) -> T { list[Int(random.below(UInt64(list.count)))] }
        /// Mostly the valid value, so that many bodies pass and the plain reader's values are compared too.
        func mostly(_ valid: String, _ list: [String]) -> String { random.chance(0.75) ? valid : pick(list) }
        var successes = 0
        for _ in 0..<4_000 {
            let space = pick(Self.spaces)
            func object(_ fields: [(String, String)]) -> String {
                "{" + space + fields.map { "\"\($0.0)\"" + space + ":" + space + $0.1 }.joined(separator: "," + space) + space + "}"
            }
            func item() -> String {
                var fields = [
                    ("productName", mostly(#""Laptop""#, Self.strings)), ("quantity", mostly("2", Self.quantities)),
                    ("unitPrice", mostly(pick(["999.99", "0.07", "10.5", "1000000.00", "3"]), Self.prices)),
                ]
                fields = fields.filter { _ in random.chance(0.93) }
                if random.chance(0.05) { fields.append((pick(["quantity", "other", "unitPrice"]), pick(Self.quantities))) }
                fields.shuffle(using: &random)
                return object(fields)
            }
            let items = "[" + space + (0..<Int(1 + random.below(3))).map { _ in item() }.joined(separator: ",") + space + "]"
            var fields = [
                ("customerName", mostly(#""John Smith""#, Self.strings)), ("customerEmail", mostly(#""john@example.com""#, Self.strings)),
                ("items", random.chance(0.95) ? items : pick(Self.strings + ["[]"])),
            ]
            fields = fields.filter { _ in random.chance(0.95) }
            if random.chance(0.05) { fields.append((pick(["customerName", "extra", "items"]), pick(Self.strings))) }
            fields.shuffle(using: &random)
            let body = space + object(fields) + (random.chance(0.05) ? pick(["x", "}", ",", "{}"]) : pick(Self.spaces))
            let bytes = Array(body.utf8)
            let plain = OrderRequest.parse(bytes)
            #expect(plain == OrderRequest.parseWithDecoder(bytes), "body: \(body)")
            if case .success = plain { successes += 1 }
        }
        #expect(successes > 400, "enough valid bodies to compare the plain reader's values")
    }

    @Test func theUsualRequestIsReadAsBefore() throws {
        let body = Array(#"{"customerName":"John Smith","customerEmail":"john@example.com","items":[{"productName":"Laptop","quantity":2,"unitPrice":999.99}]}"#.utf8)
        let request = try OrderRequest.parse(body).get()
        #expect(request.totalAmount == Money(cents: 199_998))
        #expect(OrderRequest.parse(body) == OrderRequest.parseWithDecoder(body))
    }
}
