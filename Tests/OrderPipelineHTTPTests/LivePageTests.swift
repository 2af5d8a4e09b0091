import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime
import OrderPipelineTestSupport
import Synchronization
import Testing

@testable import OrderPipelineHTTP

@Suite("Live page: configuration, snapshot hub")
struct LivePageUnitTests {
    @Test("UI_ENABLED, UI_REPLAY_TOKEN and UI_MAX_STREAMS are read and checked")
    func configuration() throws {
        let defaults = try LivePage.Configuration.fromEnvironment([:])
        #expect(defaults.enabled && defaults.replayToken == nil && defaults.maxStreams == 8)
        #expect(try !LivePage.Configuration.fromEnvironment(["UI_ENABLED": "false"]).enabled)
        #expect(try LivePage.Configuration.fromEnvironment(["UI_REPLAY_TOKEN": "0123456789abcdef"]).replayToken == "0123456789abcdef")
        #expect(try LivePage.Configuration.fromEnvironment(["UI_MAX_STREAMS": "2"]).maxStreams == 2)
        #expect(throws: RuntimeConfiguration.Problem.self) { try LivePage.Configuration.fromEnvironment(["UI_ENABLED": "maybe"]) }
        #expect(throws: RuntimeConfiguration.Problem.self) { try LivePage.Configuration.fromEnvironment(["UI_REPLAY_TOKEN": "short"]) }
        #expect(throws: RuntimeConfiguration.Problem.self) { try LivePage.Configuration.fromEnvironment(["UI_MAX_STREAMS": "0"]) }
    }

    @Test("consumer lag per partition from the registry's gauges")
    func lagFromPrometheus() {
        let text = """
            # TYPE orderpipeline_consumer_lag gauge
            orderpipeline_consumer_lag{partition="0"} 12.0
            orderpipeline_consumer_lag{partition="2"} 0.0
            orderpipeline_consumer_records_total 5
            """
        #expect(LivePage.consumerLag(prometheus: Array(text.utf8)) == [0: 12, 2: 0])
    }

    @Test("the hub reads nothing while nobody watches, one poller for every stream, stops with the last one")
    func hubPollsOnlyWhileWatched() async throws {
        let reads = Atomic<Int>(0)
        let hub = SnapshotHub(maxStreams: 2, interval: .milliseconds(10)) {
            Array("{\"n\":\(reads.add(1, ordering: .relaxed).newValue)}".utf8)
        }
        #expect(await !hub.isPolling)
        #expect(reads.load(ordering: .relaxed) == 0)

        let first = try #require(await hub.subscribe())
        let second = try #require(await hub.subscribe())
        #expect(await hub.subscribe() == nil, "a third stream is over the limit")
        var a = first.stream.makeAsyncIterator()
        var b = second.stream.makeAsyncIterator()
        // Both streams see snapshots from the one poller.
        #expect(await a.next() != nil)
        #expect(await b.next() != nil)
        #expect(await hub.isPolling)

        await hub.unsubscribe(first.id)
        #expect(await hub.isPolling, "one stream is still open")
        await hub.unsubscribe(second.id)
        #expect(await !hub.isPolling)
        #expect(await hub.openStreams == 0)
        #expect(await a.next() == nil, "an unsubscribed stream ends")
    }

    @Test("one-off reads share a fresh snapshot")
    func currentIsCached() async {
        let reads = Atomic<Int>(0)
        let hub = SnapshotHub(maxStreams: 1, interval: .seconds(60)) {
            reads.add(1, ordering: .relaxed)
            return Array("{}".utf8)
        }
        for _ in 0..<5 { _ = await hub.current() }
        #expect(reads.load(ordering: .relaxed) == 1)
    }

    @Test("replay tokens compare in constant time and exactly")
    func tokens() {
        #expect(LivePage.constantTimeEqual("0123456789abcdef", "0123456789abcdef"))
        #expect(!LivePage.constantTimeEqual("0123456789abcdef", "0123456789abcdeF"))
        #expect(!LivePage.constantTimeEqual("0123456789abcdef", "0123456789abcde"))
    }
}

@Suite("Live page over PostgreSQL", .enabled(if: HTTPTestDatabase.isConfigured, "DATABASE_URL is not set: live page tests are skipped"), .timeLimit(.minutes(5)))
struct LivePageTests {
    static let token = "test-replay-token-0123456789"

    /// The API's router with the live page on it, as `serve` builds it.
    func app(_ fixture: APIFixture, _ configure: (inout LivePage.Configuration) -> Void = { _ in }) -> (Application<RouterResponder<BasicRequestContext>>, LivePage) {
        var configuration = LivePage.Configuration()
        configure(&configuration)
        let page = LivePage(configuration: configuration, store: fixture.store, consumerLag: { [1: 4, 0: 0] })
        let router = fixture.api.makeRouter()
        page.register(on: router)
        return (Application(router: router, logger: HTTPTestDatabase.logger), page)
    }

    func perform(_ fixture: APIFixture, _ command: StoreCommand) async throws -> StoreReply {
        guard case .committed(let reply) = await fixture.store.perform(command) else { throw TestFailure("\(command) did not commit") }
        return reply
    }

    /// Does what the relays and the consumer do for every pending row: publish the Kafka outbox, fulfil, send.
    func drive(_ fixture: APIFixture, rejectKafka: Bool = false) async throws {
        guard case .claimed(let rows, _) = try await perform(fixture, .claimOutbox(.init(outbox: .kafka, owner: "t", limit: 10, lease: .seconds(30)))) else { return }
        if rejectKafka {
            _ = try await perform(fixture, .settleOutbox(.init(outbox: .kafka, owner: "t", rejections: rows.map { .init(sequence: $0.sequence, reason: "message too large") })))
            return
        }
        _ = try await perform(fixture, .settleOutbox(.init(outbox: .kafka, owner: "t", published: rows.map(\.sequence))))
        for row in rows {
            guard case .success(let envelope) = EventEnvelope.decode(row.event.payload) else { throw TestFailure("undecodable row") }
            _ = try await perform(fixture, .fulfil([Fulfilment(envelope: envelope, at: WallClock.now())]))
        }
        guard case .claimed(let sent, _) = try await perform(fixture, .claimOutbox(.init(outbox: .serviceBus, owner: "t", limit: 10, lease: .seconds(30)))) else { return }
        _ = try await perform(fixture, .settleOutbox(.init(outbox: .serviceBus, owner: "t", published: sent.map(\.sequence))))
    }

    @Test("GET /ui is one self-contained document: inline only, a CSP that forbids anything external")
    func page() async throws {
        try await withAPI { fixture in
            try await app(fixture).0.test(.router) { client in
                let page = try await client.execute(uri: "/ui", method: .get)
                #expect(page.status == .ok)
                #expect(page.headers[.contentType] == "text/html; charset=utf-8")
                #expect(page.headers[.contentSecurityPolicy]?.hasPrefix("default-src 'none'") == true)
                #expect(page.text.contains("OrderPipeline · live") && page.text.contains("new EventSource(\"/ui/api/events\")"))
                #expect(!page.text.contains("src=\"http") && !page.text.contains("href=\"http") && !page.text.contains("@import"))
            }
        }
    }

    @Test("UI_ENABLED=false: no /ui routes")
    func disabled() async throws {
        try await withAPI { fixture in
            try await app(fixture) { $0.enabled = false }.0.test(.router) { client in
                try await client.execute(uri: "/ui", method: .get).expectProblem(.notFound)
                try await client.execute(uri: "/ui/api/snapshot", method: .get).expectProblem(.notFound)
            }
        }
    }

    @Test("snapshot and journey follow an order: created, published, consumed, fulfilled, sent")
    func journey() async throws {
        try await withAPI { fixture in
            try await app(fixture).0.test(.router) { client in
                let created = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: johnSmith))
                let id = try #require(created.jsonObject?["id"] as? String)

                var snapshot = try #require(try await client.execute(uri: "/ui/api/snapshot", method: .get).jsonObject)
                var latest = try #require((snapshot["latest"] as? [[String: Any]])?.first)
                #expect(latest["orderId"] as? String == id && latest["status"] as? String == "Pending")
                #expect(latest["stage"] as? String == "awaiting Kafka" && latest["publishedAt"] is NSNull)
                let kafka = try #require((snapshot["outboxes"] as? [[String: Any]])?.first { $0["outbox"] as? String == "kafka" })
                #expect(kafka["pending"] as? Int == 1)
                #expect(((snapshot["minute"] as? [String: Any])?["created"] as? [Int])?.reduce(0, +) == 1)
                #expect((snapshot["consumerLag"] as? [[String: Any]])?.map { $0["partition"] as? Int } == [0, 1])
                #expect(snapshot["replayEnabled"] as? Bool == false)

                try await drive(fixture)
                // A one-off snapshot younger than a second is shared: wait for a fresh one.
                try await Task.sleep(for: .seconds(1.1))
                snapshot = try #require(try await client.execute(uri: "/ui/api/snapshot", method: .get).jsonObject)
                latest = try #require((snapshot["latest"] as? [[String: Any]])?.first)
                #expect(latest["status"] as? String == "Fulfilled" && latest["stage"] as? String == "sent")
                let minute = try #require(snapshot["minute"] as? [String: Any])
                for series in ["published", "fulfilled", "sent"] { #expect((minute[series] as? [Int])?.reduce(0, +) == 1, "\(series)") }
                #expect((minute["latency"] as? [String: Any])?["count"] as? Int == 1)

                let journey = try await client.execute(uri: "/ui/api/orders/\(id)/journey", method: .get)
                #expect(journey.status == .ok)
                let j = try #require(journey.jsonObject)
                let times = try ["createdAt", "publishedAt", "consumedAt", "fulfilledAt", "sentAt"].map { try #require(j[$0] as? Int64, "\($0)") }
                #expect(times == times.sorted(), "hops in order: \(times)")
                #expect((j["kafka"] as? [String: Any])?["attempts"] as? Int == 1)

                try await client.execute(uri: "/ui/api/orders/3fa85f64-5717-4562-b3fc-2c963f66afa6/journey", method: .get).expectProblem(.notFound)
                try await client.execute(uri: "/ui/api/orders/nope/journey", method: .get).expectProblem(.badRequest)
            }
        }
    }

    @Test("replay: refused with the CLI command unless UI_REPLAY_TOKEN is set and sent; then OutboxAdmin.replay")
    func replay() async throws {
        try await withAPI { fixture in
            try await app(fixture).0.test(.router) { client in
                _ = try await client.execute(uri: "/api/orders", method: .post, headers: .json, body: ByteBuffer(string: johnSmith))
                try await drive(fixture, rejectKafka: true)
                let snapshot = try #require(try await client.execute(uri: "/ui/api/snapshot", method: .get).jsonObject)
                let letter = try #require((snapshot["deadLetters"] as? [[String: Any]])?.first)
                #expect(letter["reason"] as? String == "message too large")
                let id = try #require(letter["id"] as? Int)
                let refused = try await client.execute(uri: "/ui/api/dead-letters/\(id)/replay", method: .post)
                refused.expectProblem(.forbidden)
                #expect((refused.jsonObject?["detail"] as? String)?.contains("orderpipeline outbox replay \(id)") == true)
            }
            try await app(fixture) { $0.replayToken = Self.token }.0.test(.router) { client in
                let snapshot = try #require(try await client.execute(uri: "/ui/api/snapshot", method: .get).jsonObject)
                #expect(snapshot["replayEnabled"] as? Bool == true)
                let id = try #require((snapshot["deadLetters"] as? [[String: Any]])?.first?["id"] as? Int)
                try await client.execute(uri: "/ui/api/dead-letters/\(id)/replay", method: .post, headers: [.replayToken: "wrong-token-0123456789"]).expectProblem(.forbidden)
                try await client.execute(uri: "/ui/api/dead-letters/99999/replay", method: .post, headers: [.replayToken: Self.token]).expectProblem(.notFound)
                let replayed = try await client.execute(uri: "/ui/api/dead-letters/\(id)/replay", method: .post, headers: [.replayToken: Self.token])
                #expect(replayed.status == .ok)
                #expect(replayed.jsonObject?["changed"] as? Bool == true)
                #expect((replayed.jsonObject?["result"] as? String)?.hasPrefix("re-queued kafka outbox row") == true)
                let again = try await client.execute(uri: "/ui/api/dead-letters/\(id)/replay", method: .post, headers: [.replayToken: Self.token])
                #expect(again.jsonObject?["changed"] as? Bool == false, "idempotent")
            }
            #expect(try await fixture.outboxCount() == 1)
        }
    }

    @Test("the event stream sends snapshots, is bounded, and frees its slot when it ends")
    func events() async throws {
        try await withAPI { fixture in
            let (app, page) = app(fixture) {
                $0.maxEventsPerStream = 2
                $0.interval = .milliseconds(50)
            }
            try await app.test(.live) { client in
                let stream = try await client.execute(uri: "/ui/api/events", method: .get)
                #expect(stream.status == .ok)
                #expect(stream.headers[.contentType] == "text/event-stream")
                #expect(stream.text.hasPrefix("retry: 2000\n\n"))
                let events = stream.text.components(separatedBy: "event: snapshot\ndata: ").dropFirst()
                #expect(events.count == 2)
                for event in events {
                    let json = try JSONSerialization.jsonObject(with: Data(event.trimmingCharacters(in: .whitespacesAndNewlines).utf8)) as? [String: Any]
                    #expect(json?["outboxes"] is [Any])
                }
            }
            #expect(await page.hub.openStreams == 0)
            #expect(await !page.hub.isPolling)
        }
    }
}
