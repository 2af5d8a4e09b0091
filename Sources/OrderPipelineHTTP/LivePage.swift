import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import OrderPipelineCore
import OrderPipelinePostgres
import OrderPipelineRuntime
import ServiceLifecycle

/// The live page, `/ui`: the pipeline's stages with live counts, pushed by Server-Sent Events.
///
/// Cost when nobody watches: nothing. One poller (`SnapshotHub`) reads one bounded snapshot about once a second
/// only while at least one stream is open, and every stream shares it; at most `maxStreams` streams at once, each
/// closed after `streamLifetime` (the browser's EventSource reconnects). Read-only unless `UI_REPLAY_TOKEN` is set.
public struct LivePage: Sendable {
    public struct Configuration: Sendable {
        /// `UI_ENABLED` (default true): false serves no `/ui` route at all.
        public var enabled = true
        /// `UI_REPLAY_TOKEN`: when set (16+ characters), a dead letter can be replayed from the page by a request
        /// carrying it in `X-Replay-Token`. Unset: the page shows the CLI command instead.
        public var replayToken: String?
        /// `UI_MAX_STREAMS` (default 8): concurrent live streams; more get 503.
        public var maxStreams = 8
        public var interval: Duration = .seconds(1)
        public var streamLifetime: Duration = .seconds(300)
        /// Closes a stream after this many snapshots (tests).
        public var maxEventsPerStream = Int.max

        public init() {}

        public static let environmentHelp = """
            Live page (serve, all): http://HTTP_HOST:HTTP_PORT/ui
              UI_ENABLED     false turns the page and its endpoints off (default true)
              UI_REPLAY_TOKEN
                             allow replaying dead letters from the page with this
                             token (16+ characters) in the X-Replay-Token header;
                             unset: read-only, the page shows the CLI command
              UI_MAX_STREAMS concurrent live streams (default 8)
            """

        public static func fromEnvironment(_ environment: [String: String]) throws(RuntimeConfiguration.Problem) -> Configuration {
            var configuration = Configuration()
            if let text = environment["UI_ENABLED"], !text.isEmpty {
                switch text.lowercased() {
                case "true", "1", "yes", "on": configuration.enabled = true
                case "false", "0", "no", "off": configuration.enabled = false
                default: throw RuntimeConfiguration.Problem(description: "UI_ENABLED must be true or false, not \(text)")
                }
            }
            if let token = environment["UI_REPLAY_TOKEN"], !token.isEmpty {
                guard token.count >= 16 else { throw RuntimeConfiguration.Problem(description: "UI_REPLAY_TOKEN must be at least 16 characters") }
                configuration.replayToken = token
            }
            if let value = try RuntimeConfiguration.whole(environment, "UI_MAX_STREAMS", in: 1...1_000) { configuration.maxStreams = value }
            return configuration
        }
    }

    public let configuration: Configuration
    let store: PostgresStore
    let hub: SnapshotHub

    /// `consumerLag`: records behind the high watermark per partition, when the consumer runs in this process
    /// (`all`); nil otherwise (`serve`).
    public init(configuration: Configuration, store: PostgresStore, consumerLag: (@Sendable () -> [Int32: Int64])? = nil) {
        self.configuration = configuration
        self.store = store
        let replay = configuration.replayToken != nil
        hub = SnapshotHub(maxStreams: configuration.maxStreams, interval: configuration.interval) {
            let result: Result<Dashboard.Snapshot, PostgresError> = await store.pool.withConnection { connection in
                Result { () throws(PostgresError) in try Dashboard.snapshot(try connection.get()) }
            }
            switch result {
            case .success(let snapshot): return LiveJSON.snapshot(snapshot, consumerLag: consumerLag?(), replayEnabled: replay)
            case .failure: return Array(#"{"error":"the database is unavailable"}"#.utf8)
            }
        }
    }

    public func register(on router: Router<BasicRequestContext>) {
        guard configuration.enabled else { return }
        router.get("/ui") { _, _ in Self.page() }
        router.get("/ui/api/snapshot") { _, _ in await self.snapshot() }
        router.get("/ui/api/events") { request, _ in await self.events(request) }
        router.get("/ui/api/orders/:id/journey") { _, context in await self.journey(context) }
        router.post("/ui/api/dead-letters/:id/replay") { request, context in await self.replay(request, context) }
    }

    // MARK: handlers

    static func page() -> Response {
        Response(
            status: .ok,
            headers: [
                .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                // Nothing leaves this origin: inline style and script only, no external asset can load.
                .contentSecurityPolicy: "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ], body: ResponseBody(byteBuffer: ByteBuffer(string: LivePageHTML.document)))
    }

    func snapshot() async -> Response {
        let bytes = await hub.current()
        return OrderAPI.json(bytes.starts(with: Array(#"{"error""#.utf8)) ? .serviceUnavailable : .ok, bytes)
    }

    /// `text/event-stream`: one `snapshot` event about every second until the client goes, the stream's lifetime
    /// ends or the server shuts down.
    func events(_ request: Request) async -> Response {
        guard await hub.hasRoom else {
            return Problem.unavailable("at most \(configuration.maxStreams) live streams at once; try again later").response(headers: [.retryAfter: "5"])
        }
        let hub = self.hub
        let lifetime = configuration.streamLifetime
        let maxEvents = configuration.maxEventsPerStream
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"],
            body: ResponseBody { writer in
                guard let subscription = await hub.subscribe() else {
                    try await writer.write(ByteBuffer(string: "event: full\ndata: {}\n\n"))
                    try await writer.finish(nil)
                    return
                }
                do {
                    try await request.body.consumeWithCancellationOnInboundClose { _ in
                        try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                        let deadline = ContinuousClock.now + lifetime
                        var sent = 0
                        for await snapshot in subscription.stream.cancelOnGracefulShutdown() {
                            try await writer.write(ByteBuffer(bytes: Array("event: snapshot\ndata: ".utf8) + snapshot + Array("\n\n".utf8)))
                            sent += 1
                            if sent >= maxEvents || ContinuousClock.now >= deadline { break }
                        }
                    }
                } catch {
                    // The client went away, or the server is shutting down.
                }
                await hub.unsubscribe(subscription.id)
                try? await writer.finish(nil)
            })
    }

    func journey(_ context: BasicRequestContext) async -> Response {
        guard let id = context.parameters.get("id").flatMap({ OrderID($0) }) else {
            return Problem.malformed("the order id must be a UUID like 3fa85f64-5717-4562-b3fc-2c963f66afa6").response()
        }
        let result: Result<Dashboard.Journey?, PostgresError> = await store.pool.withConnection { connection in
            Result { () throws(PostgresError) in try Dashboard.journey(id, try connection.get()) }
        }
        switch result {
        case .success(let journey?):
            var json = JSONWriter()
            LiveJSON.journey(journey, to: &json)
            return OrderAPI.json(.ok, json.bytes)
        case .success(nil):
            return Problem.notFound("no order with id \(id)").response()
        case .failure:
            return Problem.unavailable("the database is unavailable").response(headers: [.retryAfter: "1"])
        }
    }

    /// Replays one dead letter with `OutboxAdmin.replay` (what `orderpipeline outbox replay ID` runs), only when
    /// `UI_REPLAY_TOKEN` is set and the request carries it. A custom header also keeps other sites' forms out.
    func replay(_ request: Request, _ context: BasicRequestContext) async -> Response {
        guard let id = context.parameters.get("id").flatMap({ Int64($0) }), id > 0 else {
            return Problem.malformed("the dead letter id must be a positive integer").response()
        }
        guard let token = configuration.replayToken else {
            return Problem(
                .forbidden, type: "urn:orderpipeline:problem:replay-disabled", title: "Replay from the page is disabled",
                detail: "run `orderpipeline outbox replay \(id)`, or start the server with UI_REPLAY_TOKEN set"
            ).response()
        }
        guard let given = request.headers[.replayToken], Self.constantTimeEqual(given, token) else {
            return Problem(
                .forbidden, type: "urn:orderpipeline:problem:replay-token", title: "Replay token missing or wrong",
                detail: "send the UI_REPLAY_TOKEN value in the X-Replay-Token header"
            ).response()
        }
        let result: Result<OutboxAdmin.ReplayResult, PostgresError> = await store.pool.withConnection { connection in
            Result { () throws(PostgresError) in try OutboxAdmin.replay(id: id, try connection.get()) }
        }
        switch result {
        case .success(let outcome):
            context.logger.notice("Dead letter replayed from the live page", metadata: ["dead_letter.id": "\(id)", "result": "\(outcome)"])
            var json = JSONWriter()
            json.object { json in
                json.field("id", id)
                json.key("changed"); json.bool(outcome.changed)
                json.field("result", outcome.description)
            }
            if case .notFound = outcome { return Problem.notFound("no dead letter with id \(id)").response() }
            return OrderAPI.json(.ok, json.bytes)
        case .failure:
            return Problem.unavailable("the database is unavailable").response(headers: [.retryAfter: "1"])
        }
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }

    /// Per-partition consumer lag from the `orderpipeline_consumer_lag{partition="N"}` gauges that the consumer
    /// of this process keeps in the metrics registry (Prometheus text).
    public static func consumerLag(prometheus text: [UInt8]) -> [Int32: Int64] {
        var lag: [Int32: Int64] = [:]
        let prefix = #"orderpipeline_consumer_lag{partition=""#
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n") where line.hasPrefix(prefix) {
            let rest = line.dropFirst(prefix.count)
            guard let quote = rest.firstIndex(of: "\""), let partition = Int32(rest[..<quote]),
                let value = rest.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            lag[partition] = Int64(value)
        }
        return lag
    }
}

extension HTTPField.Name {
    static let replayToken = Self("X-Replay-Token")!
}

/// One poller shared by every live stream: it runs only while a stream is open, reads one snapshot per interval
/// and hands the newest to each stream (a slow client skips snapshots; it never queues them). `current()` serves
/// one-off reads from the same snapshot when it is fresh, so no request rate makes more than one query at a time.
/// `/metrics` shows it: `orderpipeline_ui_snapshots_total` (reads) stands still while `orderpipeline_ui_streams` is 0.
actor SnapshotHub {
    private let readCounter = Counter(label: "orderpipeline_ui_snapshots_total")
    private let streamGauge = Gauge(label: "orderpipeline_ui_streams")
    let maxStreams: Int
    let interval: Duration
    let fetch: @Sendable () async -> [UInt8]
    private var streams: [Int: AsyncStream<[UInt8]>.Continuation] = [:]
    private var nextID = 0
    private var poller: Task<Void, Never>?
    private var cached: (at: ContinuousClock.Instant, bytes: [UInt8])?
    private var inFlight: Task<[UInt8], Never>?
    /// Snapshots read so far (tests check that none is read while nobody watches).
    private(set) var reads = 0

    init(maxStreams: Int, interval: Duration, fetch: @escaping @Sendable () async -> [UInt8]) {
        self.maxStreams = maxStreams
        self.interval = interval
        self.fetch = fetch
    }

    var hasRoom: Bool { streams.count < maxStreams }
    var openStreams: Int { streams.count }
    var isPolling: Bool { poller != nil }

    func subscribe() -> (id: Int, stream: AsyncStream<[UInt8]>)? {
        guard hasRoom else { return nil }
        let (stream, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .bufferingNewest(1))
        nextID += 1
        streams[nextID] = continuation
        streamGauge.record(streams.count)
        if poller == nil { poller = Task { await self.poll() } }
        return (nextID, stream)
    }

    func unsubscribe(_ id: Int) {
        streams.removeValue(forKey: id)?.finish()
        streamGauge.record(streams.count)
        if streams.isEmpty {
            poller?.cancel()
            poller = nil
        }
    }

    /// The snapshot, read now unless one younger than `maxAge` (default: the interval) is at hand.
    func current(maxAge: Duration? = nil) async -> [UInt8] {
        if let cached, ContinuousClock.now - cached.at < maxAge ?? interval { return cached.bytes }
        if let inFlight { return await inFlight.value }
        let task = Task { await fetch() }
        inFlight = task
        let bytes = await task.value
        inFlight = nil
        reads += 1
        readCounter.increment()
        cached = (.now, bytes)
        return bytes
    }

    private func poll() async {
        while !Task.isCancelled, !streams.isEmpty {
            let started = ContinuousClock.now
            let bytes = await current(maxAge: .zero)
            for stream in streams.values { stream.yield(bytes) }
            try? await Task.sleep(until: started + interval)
        }
    }
}
