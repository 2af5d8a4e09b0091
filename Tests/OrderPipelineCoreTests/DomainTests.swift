import OrderPipelineCore
import Testing

@Suite struct IdentifierTests {
    @Test func sha1MatchesFIPSVectors() {
        #expect(SHA1.hash(Array("abc".utf8)).hexString == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(SHA1.hash([UInt8]()).hexString == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(SHA1.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)).hexString == "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
        let long = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
        #expect(SHA1.hash(Array(long.utf8)).hexString == "a49b2446a02c645bf419f995b67091253a04a259")
        #expect(SHA1.hash(repeatElement(UInt8(ascii: "a"), count: 1_000_000)).hexString == "34aa973cd4c4daa4f61eeb2bdbad27316534016f")
    }

    @Test func sha1InPiecesIsSHA1OfTheWhole() {
        // Every length around the block and padding boundaries, split at every point into two or three updates.
        let bytes = (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        for length in [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 200] {
            let whole = SHA1.hash(bytes[..<length])
            for split in 0...length {
                var sha = SHA1()
                let middle = max(split, (split + length) / 2)
                bytes.withUnsafeBytes { all in
                    sha.update(UnsafeRawBufferPointer(rebasing: all[..<split]))
                    sha.update(UnsafeRawBufferPointer(rebasing: all[split..<middle]))
                    sha.update(UnsafeRawBufferPointer(rebasing: all[middle..<length]))
                }
                #expect(sha.finish() == whole, "length \(length), split at \(split)")
            }
        }
    }

    @Test func nameBasedUUIDMatchesRFCExample() {
        let dns = UUID128("6ba7b810-9dad-11d1-80b4-00c04fd430c8")!
        #expect(UUID128.nameBased(namespace: dns, name: "www.example.com").description == "2ed6657d-e927-568b-95e1-2665a8aea6a2")
    }

    @Test func eventIDsAreDerivedFromOrderAndType() {
        let order = OrderID("11111111-2222-4333-8444-555555555555")!
        let fulfilled = EventID.derived(order: order, type: .orderFulfilled)
        // Same value as Python's uuid.uuid5(namespace, "<order>/OrderFulfilled"): any implementation can derive it.
        #expect(fulfilled.description == "44e755a1-cf5a-507b-9ef4-053d0572acf2")
        #expect(EventID.derived(order: order, type: .orderFulfilled) == fulfilled)
        #expect(EventID.derived(order: order, type: .orderCreated) != fulfilled)
        #expect(EventID.derived(order: OrderID("11111111-2222-4333-8444-555555555556")!, type: .orderFulfilled) != fulfilled)
    }

    @Test func uuidParsingRejectsMalformedText() {
        #expect(UUID128("6BA7B810-9DAD-11D1-80B4-00C04FD430C8")?.description == "6ba7b810-9dad-11d1-80b4-00c04fd430c8")
        for bad in ["", "6ba7b810", "6ba7b8109dad11d180b400c04fd430c8", "6ba7b810-9dad-11d1-80b4-00c04fd430cg", "6ba7b810+9dad-11d1-80b4-00c04fd430c8"] {
            #expect(UUID128(bad) == nil, "\(bad)")
        }
    }

    @Test func randomUUIDsAreVersion4AndSeeded() {
        var a = SplitMix64(seed: 9)
        var b = SplitMix64(seed: 9)
        let first = UUID128.random(using: &a)
        #expect(first == UUID128.random(using: &b))
        let text = Array(first.description)
        #expect(text[14] == "4")
        #expect("89ab".contains(text[19]))
    }

    @Test func instantsFormatAsRFC3339() {
        #expect(Instant(microseconds: 0).description == "1970-01-01T00:00:00.000000Z")
        #expect(Instant(microseconds: 1_767_225_600_000_000 + 1_500).description == "2026-01-01T00:00:00.001500Z")
        #expect(Instant(microseconds: 951_782_400_000_000).description == "2000-02-29T00:00:00.000000Z")
        #expect(Instant(microseconds: -1).description == "1969-12-31T23:59:59.999999Z")
        // The first and last years written in place, and one past them (the same text, written by the slower path).
        #expect(Instant(microseconds: 253_402_300_799_999_999).description == "9999-12-31T23:59:59.999999Z")
        #expect(Instant(microseconds: 253_402_300_800_000_000).description == "10000-01-01T00:00:00.000000Z")
        #expect(Instant(microseconds: -62_167_219_200_000_000).description == "0000-01-01T00:00:00.000000Z")
    }
}

@Suite struct MoneyTests {
    @Test func parsesExactDecimalsAndRefusesMorePrecision() {
        #expect(Money(decimalText: "999.99")?.cents == 99_999)
        #expect(Money(decimalText: "10")?.cents == 1_000)
        #expect(Money(decimalText: "0.5")?.cents == 50)
        #expect(Money(decimalText: "-1.25")?.cents == -125)
        for bad in ["1.005", "", ".5", "1.", "abc", "1e2", "1,00", "--1"] { #expect(Money(decimalText: bad) == nil, "\(bad)") }
    }

    @Test func formatsWithTwoFractionDigits() {
        #expect(Money(cents: 99_999).description == "999.99")
        #expect(Money(cents: 5).description == "0.05")
        #expect(Money(cents: -125).description == "-1.25")
        #expect(Money(cents: 1_000).description == "10.00")
    }

    @Test func arithmeticReportsOverflow() {
        #expect(Money(cents: .max).adding(Money(cents: 1)) == nil)
        #expect(Money(cents: .max / 2).multiplied(by: 3) == nil)
        #expect(Money(cents: 250).multiplied(by: 4) == Money(cents: 1_000))
    }
}

@Suite struct OrderStatusTests {
    @Test(arguments: OrderStatus.allCases)
    func onlyForwardTransitionsAreLegal(from: OrderStatus) {
        let legal: [OrderStatus: Set<OrderStatus>] = [
            .pending: [.processing, .failed], .processing: [.fulfilled, .failed], .fulfilled: [], .failed: [],
        ]
        for to in OrderStatus.allCases {
            #expect(from.canMove(to: to) == legal[from]!.contains(to), "\(from) → \(to)")
            if from.canMove(to: to) { #expect(from < to) }
        }
    }

    @Test func namesParseInAnyCase() {
        #expect(OrderStatus(name: "fulfilled") == .fulfilled)
        #expect(OrderStatus(name: "PENDING") == .pending)
        #expect(OrderStatus(name: "shipped") == nil)
    }
}

@Suite struct EventTests {
    @Test func envelopesRoundTripAndForeignRecordsArePoison() throws {
        let order = Order(
            id: OrderID("11111111-2222-4333-8444-555555555555")!, customerName: "A", customerEmail: "a@example.com",
            items: [OrderItem(productName: "P", quantity: 1, unitPrice: Money(cents: 100))], totalAmount: Money(cents: 100),
            createdAt: Instant(microseconds: 0))
        let event = PipelineEvent(type: .orderCreated, order: order, at: Instant(microseconds: 0), includeOrder: true)
        let envelope = try EventEnvelope.decode(event.payload).get()
        #expect(envelope == EventEnvelope(id: event.id, type: .orderCreated, orderID: order.id))

        #expect(EventEnvelope.decode(Array("not json".utf8)) == .failure(.notJSON))
        #expect(EventEnvelope.decode(Array("{\"eventType\":\"OrderCreated\"}".utf8)) == .failure(.missingField("eventId")))
        let forged = "{\"eventId\":\"\(EventID.derived(order: order.id, type: .orderFailed))\",\"eventType\":\"OrderCreated\",\"orderId\":\"\(order.id)\"}"
        guard case .failure(.idNotDerived) = EventEnvelope.decode(Array(forged.utf8)) else {
            Issue.record("an event id that is not derived must be refused")
            return
        }
    }

    @Test func payloadsAreByteStable() {
        let order = Order(
            id: OrderID("11111111-2222-4333-8444-555555555555")!, customerName: "Zoë \"Q\"", customerEmail: "z@example.com",
            items: [OrderItem(productName: "Laptop", quantity: 2, unitPrice: Money(cents: 99_999))], totalAmount: Money(cents: 199_998),
            createdAt: Instant(microseconds: 0))
        let json = String(decoding: order.json, as: UTF8.self)
        #expect(
            json
                == #"{"id":"11111111-2222-4333-8444-555555555555","customerName":"Zoë \"Q\"","customerEmail":"z@example.com","status":"Pending","totalAmount":1999.98,"createdAt":"1970-01-01T00:00:00.000000Z","processedAt":null,"failureReason":null,"items":[{"productName":"Laptop","quantity":2,"unitPrice":999.99}]}"#
        )
    }
}
