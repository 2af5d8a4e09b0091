import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import OrderPipelineCore
import OrderPipelineHTTP
import OrderPipelinePostgres
import OrderPipelineRuntime
import Testing

@Suite("HTTP API", .enabled(if: HTTPTestDatabase.isConfigured, "DATABASE_URL is not set: HTTP API tests are skipped"), .timeLimit(.minutes(5)))
struct OrderAPITests {
    @Test("POST creates an order (201, Location, JSON); GET returns it Pending; the list shows it")
    func createAndRead() async throws {
        try await withAPI { fixture in
            try await fixture.test { client in
                let created = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: johnSmith))
                #expect(created.status == .created)
                let order = try #require(created.jsonObject)
                let id = try #require(order["id"] as? String)
                #expect(created.headers[.location] == "/api/orders/\(id)")
                #expect(order["status"] as? String == "Pending")
                #expect(order["totalAmount"] as? Double == 999.99)
                #expect((order["items"] as? [Any])?.count == 1)
                #expect(created.text.contains(#""totalAmount":999.99"#))

                let read = try await client.execute(uri: "/api/orders/\(id)", method: .get)
                #expect(read.status == .ok)
                #expect(read.text == created.text)

                let list = try await client.execute(uri: "/api/orders", method: .get)
                #expect(list.status == .ok)
                #expect(((list.jsonObject?["items"] as? [[String: Any]])?.first?["id"] as? String) == id)
            }
            #expect(try await fixture.outboxCount() == 1)
        }
    }

    @Test("the list is newest first and cursor-paginated")
    func pagination() async throws {
        try await withAPI { fixture in
            try await fixture.test { client in
                var ids: [String] = []
                for _ in 0..<5 {
                    let response = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: johnSmith))
                    ids.append(try #require(response.jsonObject?["id"] as? String))
                }
                var seen: [String] = []
                var cursor: String?
                repeat {
                    let uri = "/api/orders?limit=2" + (cursor.map { "&cursor=\($0)" } ?? "")
                    let page = try await client.execute(uri: uri, method: .get)
                    #expect(page.status == .ok)
                    let object = try #require(page.jsonObject)
                    seen += (object["items"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
                    cursor = object["nextCursor"] as? String
                } while cursor != nil && seen.count < 10
                #expect(seen == ids.reversed())
                try await client.execute(uri: "/api/orders?limit=0", method: .get).expectProblem(.unprocessableContent)
                try await client.execute(uri: "/api/orders?limit=1000", method: .get).expectProblem(.unprocessableContent)
                try await client.execute(uri: "/api/orders?cursor=garbage", method: .get).expectProblem(.unprocessableContent)
            }
        }
    }

    @Test("Idempotency-Key: a retry returns the same order; the key with another body is 422")
    func idempotency() async throws {
        try await withAPI { fixture in
            try await fixture.test { client in
                let first = try await client.execute(uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "retry-1"), body: ByteBuffer(string: johnSmith))
                let again = try await client.execute(uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "retry-1"), body: ByteBuffer(string: johnSmith))
                #expect(first.status == .created && again.status == .created)
                #expect(first.jsonObject?["id"] as? String == again.jsonObject?["id"] as? String)
                let other = johnSmith.replacingOccurrences(of: "Laptop", with: "Phone")
                let reused = try await client.execute(uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "retry-1"), body: ByteBuffer(string: other))
                reused.expectProblem(.unprocessableContent)
                #expect(reused.jsonObject?["type"] as? String == "urn:orderpipeline:problem:idempotency-key-reused")
                let badKey = try await client.execute(uri: "/api/orders", method: .post, headers: .json(idempotencyKey: "has space"), body: ByteBuffer(string: johnSmith))
                badKey.expectProblem(.unprocessableContent)
            }
            #expect(try await fixture.orderCount() == 1)
        }
    }

    @Test("every error status is problem+json and writes no row")
    func errorStatuses() async throws {
        try await withAPI { fixture in
            try await fixture.test { client in
                // 400 malformed JSON, not an object
                try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: #"{"customerName":"#)).expectProblem(.badRequest)
                try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: "[1,2]")).expectProblem(.badRequest)
                try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer()).expectProblem(.badRequest)
                // 422 with per-field errors
                let invalid = try await client.execute(
                    uri: "/api/orders", method: .post, headers: .json,
                    body: ByteBuffer(string: #"{"customerName":"","customerEmail":"nope","items":[{"productName":"x","quantity":0,"unitPrice":1.234}]}"#))
                invalid.expectProblem(.unprocessableContent)
                let fields = (invalid.jsonObject?["errors"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String }
                #expect(fields == ["customerName", "customerEmail", "items[0].quantity", "items[0].unitPrice"])
                // 415 wrong or missing content type
                try await client.execute(uri: "/api/orders", method: .post, headers: [.contentType: "text/plain"], body: ByteBuffer(string: johnSmith)).expectProblem(
                    .unsupportedMediaType)
                try await client.execute(uri: "/api/orders", method: .post, body: ByteBuffer(string: johnSmith)).expectProblem(.unsupportedMediaType)
                // 413 over 64 KiB
                let big = ByteBuffer(string: #"{"customerName":""# + String(repeating: "a", count: 70_000) + #""}"#)
                try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: big).expectProblem(.contentTooLarge)
                // 404 unknown order, unknown route; 400 id that is not a UUID
                try await client.execute(uri: "/api/orders/00000000-0000-4000-8000-000000000000", method: .get).expectProblem(.notFound)
                try await client.execute(uri: "/api/nothing", method: .get).expectProblem(.notFound)
                let wrongMethod = try await client.execute(uri: "/api/orders", method: .delete)
                wrongMethod.expectProblem(.methodNotAllowed)
                #expect(wrongMethod.headers[.allow] == "GET, POST")
                try await client.execute(uri: "/api/orders/not-a-uuid", method: .get).expectProblem(.badRequest)
                try await client.execute(uri: "/api/orders/not-a-uuid/status", method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":"Failed"}"#)).expectProblem(
                    .badRequest)
                try await client.execute(
                    uri: "/api/orders/00000000-0000-4000-8000-000000000000/status", method: .patch, headers: .json,
                    body: ByteBuffer(string: #"{"status":"Failed"}"#)
                ).expectProblem(.notFound)
            }
            #expect(try await fixture.orderCount() == 0)
            #expect(try await fixture.outboxCount() == 0)
        }
    }

    @Test("PATCH status: legal moves 200, illegal 409, bad bodies 400/415/422")
    func statusChanges() async throws {
        try await withAPI { fixture in
            try await fixture.test { client in
                let created = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: johnSmith))
                let id = try #require(created.jsonObject?["id"] as? String)
                let uri = "/api/orders/\(id)/status"
                try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":"Fulfilled"}"#)).expectProblem(.conflict)
                try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":"Shipped"}"#)).expectProblem(.unprocessableContent)
                try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":"processing"}"#)).expectProblem(.unprocessableContent)
                try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"reason":"x"}"#)).expectProblem(.unprocessableContent)
                try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":7}"#)).expectProblem(.unprocessableContent)
                try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: "nope")).expectProblem(.badRequest)
                try await client.execute(uri: uri, method: .patch, headers: [.contentType: "text/plain"], body: ByteBuffer(string: "{}")).expectProblem(.unsupportedMediaType)
                let processing = try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":"Processing"}"#))
                #expect(processing.status == .ok)
                #expect(processing.jsonObject?["status"] as? String == "Processing")
                let fulfilled = try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":"Fulfilled","reason":"picked up"}"#))
                #expect(fulfilled.status == .ok)
                #expect(fulfilled.jsonObject?["status"] as? String == "Fulfilled")
                try await client.execute(uri: uri, method: .patch, headers: .json, body: ByteBuffer(string: #"{"status":"Failed"}"#)).expectProblem(.conflict)
            }
            // OrderCreated + OrderFulfilled in the Kafka outbox: the change went through the outbox.
            #expect(try await fixture.outboxCount() == 2)
        }
    }

    @Test("health, metrics and the OpenAPI document")
    func operations() async throws {
        try await withAPI { fixture in
            try await fixture.test { client in
                #expect(try await client.execute(uri: "/health/live", method: .get).status == .ok)
                let ready = try await client.execute(uri: "/health/ready", method: .get)
                #expect(ready.status == .ok)
                _ = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: johnSmith))
                let metrics = try await client.execute(uri: "/metrics", method: .get)
                #expect(metrics.status == .ok)
                #expect(metrics.text.contains(#"orderpipeline_outbox_pending{outbox="kafka"} 1"#))
                #expect(metrics.text.contains("orderpipeline_outbox_oldest_unpublished_age_seconds"))
                #expect(metrics.text.contains("orderpipeline_orders_created_total 1"))
                let openapi = try await client.execute(uri: "/openapi.json", method: .get)
                #expect(openapi.status == .ok)
                let document = try #require(openapi.jsonObject)
                #expect(document["openapi"] as? String == "3.1.0")
                let paths = try #require(document["paths"] as? [String: Any])
                #expect(Set(paths.keys) == ["/api/orders", "/api/orders/{id}", "/api/orders/{id}/status", "/health/live", "/health/ready", "/metrics", "/openapi.json"])
            }
        }
    }

    @Test("not migrated: /health/ready is 503")
    func notReady() async throws {
        try await withAPI(migrate: false) { fixture in
            try await fixture.test { client in
                try await client.execute(uri: "/health/ready", method: .get).expectProblem(.serviceUnavailable)
                #expect(try await client.execute(uri: "/health/live", method: .get).status == .ok)
            }
        }
    }

    @Test("fuzz: random and mutated bodies never give 500 and write only accepted orders")
    func fuzz() async throws {
        try await withAPI { fixture in
            let accepted = try await fixture.test { client in
                var random = SplitMix64(seed: 0x5EED_F00D)
                var accepted = 0
                let seeds = [
                    johnSmith, "{}", "[]", "null", "\"x\"", "1e999",
                    #"{"customerName":"A","customerEmail":"a@b.co","items":[{"productName":"P","quantity":2147483648,"unitPrice":-0}]}"#,
                    #"{"customerName":"A","customerEmail":"a@b.co","items":[{"productName":"P","quantity":1,"unitPrice":1e308}]}"#,
                    #"{"customerName":"\u0000","customerEmail":"a@b.co","items":[{"productName":"P","quantity":1,"unitPrice":1}]}"#,
                ]
                for round in 0..<400 {
                    var bytes = Array(seeds[Int(random.below(UInt64(seeds.count)))].utf8)
                    let mutations = Int(random.below(6))
                    for _ in 0..<mutations where !bytes.isEmpty {
                        let position = Int(random.below(UInt64(bytes.count)))
                        switch random.below(4) {
                        case 0: bytes[position] = UInt8(truncatingIfNeeded: random.next())
                        case 1: bytes.remove(at: position)
                        case 2:
                            let alphabet = Array(#"{}[]",:0123456789eE.-\ntfu"#.utf8)
                            bytes.insert(alphabet[Int(random.below(UInt64(alphabet.count)))], at: position)
                        default: bytes = Array(bytes.prefix(position))
                        }
                    }
                    if round % 50 == 0 { bytes = (0..<Int(random.below(300))).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
                    let response = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(bytes: bytes))
                    #expect(response.status.code < 500, "body \(String(decoding: bytes, as: UTF8.self)) → \(response.status) \(response.text)")
                    if response.status == .created {
                        accepted += 1
                    } else {
                        #expect([400, 422].contains(Int(response.status.code)))
                        #expect(response.headers[.contentType] == "application/problem+json")
                    }
                }
                return accepted
            }
            #expect(try await fixture.orderCount() == accepted)
            #expect(try await fixture.outboxCount() == accepted)
        }
    }
}

@Suite("OpenAPI document")
struct OpenAPIDocumentTests {
    @Test("the served OpenAPI document is the one in the repository")
    func openAPIMatchesRepository() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/OrderPipelineHTTP/openapi.json")
        let text = try String(contentsOf: file, encoding: .utf8)
        #expect(text == OrderAPI.openAPIDocument, "run scripts/embed-openapi")
    }
}

@Suite("HTTP API without a database")
struct UnavailableDatabaseTests {
    @Test("a database that cannot be reached answers 503 problem+json (and liveness stays 200)")
    func databaseDown() async throws {
        try await withUnreachableDatabase { client in
            let post = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: johnSmith))
            post.expectProblem(.serviceUnavailable)
            #expect(post.headers[.retryAfter] == "1")
            try await client.execute(uri: "/api/orders/00000000-0000-4000-8000-000000000000", method: .get).expectProblem(.serviceUnavailable)
            try await client.execute(uri: "/api/orders", method: .get).expectProblem(.serviceUnavailable)
            try await client.execute(uri: "/health/ready", method: .get).expectProblem(.serviceUnavailable)
            #expect(try await client.execute(uri: "/health/live", method: .get).status == .ok)
            #expect(try await client.execute(uri: "/metrics", method: .get).status == .ok)
            // Validation still answers without the database.
            try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: "{}")).expectProblem(.unprocessableContent)
        }
    }
}
