import Foundation
import Testing

@testable import OrderPipelineCore

@Suite struct ValidationTests {
    static let seedRequest = #"{"customerName":"John Smith","customerEmail":"john@example.com","items":[{"productName":"Laptop","quantity":1,"unitPrice":999.99}]}"#

    func parse(_ text: String) -> Result<OrderRequest, RequestError> { OrderRequest.parse(Array(text.utf8)) }

    func fieldErrors(_ text: String) -> [String: String] {
        guard case .failure(.invalid(let errors)) = parse(text) else { return [:] }
        return Dictionary(errors.map { ($0.field, $0.message) }, uniquingKeysWith: { a, _ in a })
    }

    @Test func theSeedRequestIsValidWithAnExactTotal() throws {
        let request = try parse(Self.seedRequest).get()
        #expect(request.customerName == "John Smith")
        #expect(request.totalAmount == Money(cents: 99_999))
        let two = try parse(
            #"{"customerName":"A","customerEmail":"a@b.io","items":[{"productName":"X","quantity":3,"unitPrice":0.1},{"productName":"Y","quantity":1,"unitPrice":0.2}]}"#
        ).get()
        #expect(two.totalAmount == Money(cents: 50))
    }

    @Test(arguments: ["", "not json", "[1,2]", "\"text\"", "{"])
    func malformedBodiesAreRefusedAs400(body: String) {
        guard case .failure(.malformed) = parse(body) else {
            Issue.record("\(body) should be malformed")
            return
        }
    }

    @Test func everyFieldProblemIsReported() {
        let errors = fieldErrors(
            #"{"customerName":"","customerEmail":"nope","items":[{"productName":"P","quantity":0,"unitPrice":-1},{"productName":"Q","quantity":1,"unitPrice":1.005}]}"#)
        #expect(errors["customerName"] == "must not be blank")
        #expect(errors["customerEmail"]?.contains("e-mail") == true)
        #expect(errors["items[0].quantity"] == "must be at least 1")
        #expect(errors["items[0].unitPrice"] == "must not be negative")
        #expect(errors["items[1].unitPrice"] == "must have at most 2 decimal places")
    }

    @Test func missingAndMistypedFields() {
        #expect(fieldErrors("{}") == ["customerName": "is required", "customerEmail": "is required", "items": "is required"])
        #expect(fieldErrors(#"{"customerName":"A","customerEmail":"a@b.io","items":[]}"#)["items"] == "must hold at least one item")
        #expect(fieldErrors(#"{"customerName":5,"customerEmail":"a@b.io","items":[]}"#)["customerName"] == "must be a string")
        #expect(
            fieldErrors(#"{"customerName":"A","customerEmail":"a@b.io","items":[{"productName":"P","quantity":"1","unitPrice":1}]}"#)["items[0].quantity"] == "must be an integer")
    }

    @Test func limitsAreEnforced() {
        let long = String(repeating: "x", count: 201)
        #expect(
            fieldErrors(#"{"customerName":"\#(long)","customerEmail":"a@b.io","items":[{"productName":"P","quantity":1,"unitPrice":1}]}"#)["customerName"]
                == "must be at most 200 characters")
        let items = Array(repeating: #"{"productName":"P","quantity":1,"unitPrice":1}"#, count: 101).joined(separator: ",")
        #expect(fieldErrors(#"{"customerName":"A","customerEmail":"a@b.io","items":[\#(items)]}"#)["items"] == "must hold at most 100 items")
        #expect(
            fieldErrors(#"{"customerName":"A","customerEmail":"a@b.io","items":[{"productName":"P","quantity":10001,"unitPrice":1}]}"#)["items[0].quantity"]
                == "must be at most 10000")
        #expect(
            fieldErrors(#"{"customerName":"A","customerEmail":"a@b.io","items":[{"productName":"P","quantity":1,"unitPrice":1e20}]}"#)["items[0].unitPrice"]
                == "must be at most 1000000.00")
        // Beyond what Decimal holds: the decoder calls the document invalid (400), never a crash or a row.
        guard case .failure = parse(#"{"customerName":"A","customerEmail":"a@b.io","items":[{"productName":"P","quantity":1,"unitPrice":1e300}]}"#) else {
            Issue.record("1e300 must be refused")
            return
        }
        #expect(
            fieldErrors(#"{"customerName":"A\u0000","customerEmail":"a@b.io","items":[{"productName":"P","quantity":1,"unitPrice":1}]}"#)["customerName"]
                == "must not contain control characters")
    }

    @Test func fingerprintsDependOnContentOnly() throws {
        let a = try parse(Self.seedRequest).get()
        let reordered = try parse(#"{"items":[{"unitPrice":999.99,"quantity":1,"productName":"Laptop"}],"customerEmail":"john@example.com","customerName":"John Smith"}"#).get()
        let other = try parse(Self.seedRequest.replacingOccurrences(of: "999.99", with: "999.98")).get()
        #expect(a.fingerprint == reordered.fingerprint)
        #expect(a.fingerprint != other.fingerprint)
    }

    @Test func theByteCheckOfAnASCIIEmailAgreesWithTheCharacterCheck() {
        var random = SplitMix64(seed: 0xE3A1)
        let alphabet = Array("ab9Z-._@+!~")
        var disagreements: [String] = []
        for _ in 0..<20_000 {
            let text = String((0..<random.int(in: 0...12)).map { _ in alphabet[Int(random.below(UInt64(alphabet.count)))] })
            if OrderRequest.isPlausibleASCIIEmail(text) != OrderRequest.isPlausibleEmailByCharacters(text) { disagreements.append(text) }
        }
        let long = String(repeating: "a", count: 64)
        for text in ["a@b.io", "\(long)@b.io", "\(long)a@b.io", "a@.b.io", "a@b..io", "a@b.io.", "@b.io", "a@bio", "a@b@c.io", "a@b.i"] {
            if OrderRequest.isPlausibleASCIIEmail(text) != OrderRequest.isPlausibleEmailByCharacters(text) { disagreements.append(text) }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(5))")
    }
}
