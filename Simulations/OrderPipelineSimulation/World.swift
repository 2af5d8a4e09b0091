import OrderPipelineCore

/// The simulated world: one seeded, single-threaded event loop on a virtual clock that plays every shell of the
/// production pipeline — API instances, Kafka relays, consumers, Service Bus relays — against the models of
/// PostgreSQL, Kafka and Service Bus, and injects faults at every effect boundary.
///
/// The machines it drives are the production ones (`OrderIntake`, `OutboxRelay`, `FulfilmentConsumer`), unchanged.
/// Determinism: one seed splits into independent streams (workload, latencies, faults, machine seeds); events are
/// ordered by (time, sequence); nothing that decides iterates a hash table.
public final class World {
    enum Role: Hashable {
        case api
        case relay(OutboxKind)
        case consumer
        case reconciler
    }

    final class Node {
        let name: String
        let role: Role
        var runner: MachineRunner<AnyPipelineMachine>
        var incarnation = 0
        var alive = true
        var restartPending = false
        var pausedUntil: Int64 = 0
        /// Time of the latest input scheduled on the consumer-group lane: the group client delivers assignments,
        /// fetches and commit results from one thread, in order. Every other result (store, publish, wake)
        /// completes independently, as the production loop's child tasks do, in an order the seed draws.
        var groupLane: Int64 = 0
        /// This node's wall clock minus true time (clock skew): what its machine's `now` reads.
        var clockOffset: Int64 = 0
        /// `producer-fenced`: this relay's Kafka producer session is unusable until the relay resets its publisher
        /// (or the process restarts with a new producer).
        var producerFenced = false
        init(name: String, role: Role, machine: any PipelineMachine) {
            self.name = name
            self.role = role
            self.runner = MachineRunner(AnyPipelineMachine(machine))
        }
    }

    struct Client {
        var key: String
        var body: [UInt8]
        var valid: Bool
        var attempts = 0
        var answered = false
        var ackedOrder: OrderID?
        var rejected = false
        /// The client cancels its order once acknowledged (PATCH status Failed).
        var wantsCancel = false
        var cancelAttempts = 0
        var cancelAnswered = false
        var cancelled = false
        /// The `traceparent` this client sends with every request, or nil (half the clients): then each request
        /// starts a new trace.
        var traceParent: TraceParent?
    }

    enum Event {
        case deliver(node: Int, incarnation: Int, Input)
        case apply(node: Int, incarnation: Int, Effect, PostgresModel.Reservation)
        case timer(node: Int, incarnation: Int, TimerID, token: UInt64)
        case restart(node: Int)
        case clientSend(client: Int)
        case clientTimeout(client: Int, attempt: Int)
        case clientReceive(client: Int, attempt: Int, IntakeResponse)
        case clientCancel(client: Int)
        case clientCancelTimeout(client: Int, attempt: Int)
        case fetchExpired(node: Int, incarnation: Int, Ticket)
        /// The group rebalances; `fault` when the nemesis forced it (not a join or a lost member).
        case rebalance(fault: Bool)
        case downstream(copies: Int)
        case poison
        /// A partition loses the records the group has not consumed yet.
        case loseRecords(partition: Int)
        /// A node's clock jumps by `delta` microseconds (either direction).
        case clockStep(node: Int, delta: Int64)
        case heal
        case check
    }

    public let options: SimulationOptions
    public let database = PostgresModel()
    public let kafka: KafkaModel
    public let serviceBus: ServiceBusModel
    public internal(set) var downstream = Downstream()
    public internal(set) var history: History
    public internal(set) var now: Int64 = 0
    public internal(set) var faultsFired = [Int](repeating: 0, count: FaultKind.allCases.count)
    public internal(set) var recoveries = RecoveryCounts()
    /// Anomalies seen by clients while running (the checker adds the rest at the end).
    public internal(set) var clientViolations: [Violation] = []
    /// `.fulfilled` notes per order, over every consumer's life (what the fulfilled counter would count).
    public internal(set) var fulfilledNotes: [OrderID: Int] = [:]
    public internal(set) var poisonSources: [String] = []
    /// Events a broker refuses for good (too large), and the orders they leave parked for an operator.
    var oversized: [EventID] = []
    public internal(set) var parkedOrders: [OrderID] = []
    /// Records the broker lost (`record-loss`): a poison record among them can never be dead-lettered.
    public internal(set) var lostSources: [String] = []
    public internal(set) var liveness: LivenessReport?
    /// Every fault chance that struck, in order: the run's fault schedule.
    public internal(set) var schedule: [FaultReference] = []
    var faultChances = [Int](repeating: 0, count: FaultKind.allCases.count)

    var nodes: [Node] = []
    /// The API instances' node indices (the clients pick one per request).
    var apiNodes: [Int] = []
    var clients: [Client] = []
    var queue = EventQueue<Event>()
    var workloadRandom: SplitMix64
    var latencyRandom: SplitMix64
    /// One stream per fault kind: removing one kind (shrinking) shifts no other kind's draws.
    var faultStreams: [SplitMix64]
    var machineSeeds: SplitMix64
    var idRandom: SplitMix64
    /// Trace ids, drawn the way the HTTP shell draws them (`TraceParent.forRequest`); its own stream, so tracing
    /// moves no other draw.
    var traceRandom: SplitMix64
    /// The trace each create attempt handed to the intake machine, by the order id it drew: the order's events and
    /// its fulfilment message must carry that trace id (`trace-carried-end-to-end`).
    var requestTraces: [OrderID: TraceParent] = [:]
    var parkedFetch: [Int: (incarnation: Int, ticket: Ticket)] = [:]
    var outages: [FaultKind: [(start: Int64, end: Int64)]] = [:]
    /// Windows in which one relay cannot reach its broker (`partial-partition`); `end` nil: the partition outlives
    /// the heal (a sick host), so the other relays must drain the outbox without it.
    var partitions: [(node: Int, start: Int64, end: Int64?)] = []
    /// `dead-letter-topic-down`: a configuration fault, so it lasts through the liveness phase.
    var deadLetterTopicDown = false
    var inLiveness = false
    var finished = false
    var downstreamInFlight = 0
    let safetyEnd: Int64
    let deadline: Int64

    /// An order still Pending this long after its publication is re-announced (the world's consumers normally take
    /// well under a second; outages and rebalances a few).
    static let overdueAfter: Duration = .seconds(8)
    /// The callers' deadlines for an answer (`DB_REQUEST_TIMEOUT_MS`, the producer's delivery timeout): a hung call
    /// becomes an unknown outcome then.
    static let storeDeadline: Duration = .seconds(3)
    static let publishDeadline: Duration = .seconds(5)
    /// Relay settings in the world: a short lease so pauses really outlive it.
    static let relayLease: Duration = .seconds(2)
    /// Marks a request id as a cancellation (PATCH) rather than a create.
    static let cancelFlag = 0x8000
    static let epoch: Int64 = 1_767_225_600_000_000  // 2026-01-01T00:00:00Z: virtual time zero.

    public init(options: SimulationOptions) {
        self.options = options
        var root = SplitMix64(seed: options.seed)
        workloadRandom = root.split()
        latencyRandom = root.split()
        var faultRoot = root.split()
        faultStreams = FaultKind.allCases.map { _ in faultRoot.split() }
        machineSeeds = root.split()
        idRandom = root.split()
        traceRandom = root.split()
        kafka = KafkaModel(partitionCount: max(1, options.partitions))
        serviceBus = ServiceBusModel(duplicateDetectionWindow: .seconds(600))
        history = History(enabled: options.recordHistory)
        database.recipeVariants = options.bug?.recipeVariants ?? options.recipeVariants
        // Fixed for up to 100 orders, so that shrinking the workload moves no request and no fault in time.
        let workloadSpan = max(Int64(2_000_000), Int64(options.orders) * 20_000)
        safetyEnd = workloadSpan + 3_000_000
        deadline = safetyEnd + options.livenessDeadline.microseconds
        build(workloadSpan: workloadSpan)
    }

    var instant: Instant { Instant(microseconds: World.epoch + now) }

    // MARK: - Set-up

    func build(workloadSpan: Int64) {
        for i in 0..<max(1, options.apiInstances) {
            nodes.append(Node(name: "api-\(i + 1)", role: .api, machine: makeMachine(.api, name: "api-\(i + 1)")))
        }
        for i in 0..<max(1, options.relays) {
            nodes.append(Node(name: "relay-\(i + 1)", role: .relay(.kafka), machine: makeMachine(.relay(.kafka), name: "relay-\(i + 1)")))
        }
        for i in 0..<max(1, options.consumers) {
            nodes.append(Node(name: "consumer-\(i + 1)", role: .consumer, machine: makeMachine(.consumer, name: "consumer-\(i + 1)")))
        }
        for i in 0..<max(1, options.serviceBusRelays) {
            nodes.append(Node(name: "sb-relay-\(i + 1)", role: .relay(.serviceBus), machine: makeMachine(.relay(.serviceBus), name: "sb-relay-\(i + 1)")))
        }
        for i in 0..<max(0, options.reconcilers) {
            nodes.append(Node(name: "reconciler-\(i + 1)", role: .reconciler, machine: makeMachine(.reconciler, name: "reconciler-\(i + 1)")))
        }
        apiNodes = nodes.indices.filter { nodes[$0].role == .api }
        for index in nodes.indices {
            queue.schedule(at: 0, .deliver(node: index, incarnation: 0, .start))
        }
        queue.schedule(at: 50_000, .rebalance(fault: false))

        for i in 0..<options.orders {
            let valid = !workloadRandom.chance(options.invalidRequestShare)
            var client = Client(key: "client-\(i + 1)", body: makeBody(i, valid: valid), valid: valid)
            if traceRandom.chance(0.5) { client.traceParent = .newTrace(using: &traceRandom) }
            client.wantsCancel = valid && workloadRandom.chance(options.cancelShare)
            clients.append(client)
            // Half the requests arrive on 10 ms boundaries: bursts of concurrent transactions.
            var arrival = workloadRandom.int(in: 0...workloadSpan)
            if workloadRandom.chance(0.5) { arrival -= arrival % 10_000 }
            queue.schedule(at: arrival, .clientSend(client: i))
        }

        // Scheduled faults are drawn whether or not the schedule allows them, so allowing fewer shifts nothing else.
        for kind in [FaultKind.databaseOutage, .kafkaOutage, .serviceBusOutage] where options.enabled(kind) {
            for _ in 0..<options.rates.outageWindows {
                let start = faultStreams[kind.index].int(in: 0...(safetyEnd - 500_000))
                let end = start + faultStreams[kind.index].int(in: 200_000...2_500_000)
                if permit(kind) { outages[kind, default: []].append((start, end)) }
            }
        }
        if options.enabled(.rebalance) {
            for _ in 0..<options.rates.rebalances {
                let at = faultStreams[FaultKind.rebalance.index].int(in: 100_000...safetyEnd)
                if permit(.rebalance) { queue.schedule(at: at, .rebalance(fault: true)) }
            }
        }
        if options.enabled(.poison) {
            for _ in 0..<options.rates.poisonRecords {
                let at = faultStreams[FaultKind.poison.index].int(in: 0...safetyEnd)
                if permit(.poison) { queue.schedule(at: at, .poison) }
            }
        }
        drawHostileFaults()
        queue.schedule(at: safetyEnd, .heal)
    }

    func makeMachine(_ role: Role, name: String) -> any PipelineMachine {
        let machine = makeProductionMachine(role, name: name)
        guard let bug = options.bug else { return machine }
        return bug.wrap(machine, role: role, seed: machineSeeds.next())
    }

    func makeProductionMachine(_ role: Role, name: String) -> any PipelineMachine {
        switch role {
        case .api:
            // One create transaction at a time and small batches: the world's requests are sparse, so this is what
            // makes overlapping creates share transactions (group commit) and batches fill up.
            var configuration = OrderIntake.Configuration()
            configuration.createsInFlight = 1
            configuration.maxCreateBatch = 4
            return OrderIntake(configuration: configuration)
        case .relay(let kind):
            var configuration = OutboxRelay.Configuration(outbox: kind, owner: name)
            configuration.batchSize = 20
            configuration.lease = World.relayLease
            configuration.leaseSweepInterval = World.relayLease / 4
            configuration.pollInterval = .milliseconds(500)
            return OutboxRelay(configuration: configuration, seed: machineSeeds.next())
        case .reconciler:
            var configuration = Reconciler.Configuration()
            configuration.overdueAfter = World.overdueAfter
            configuration.interval = .seconds(1)
            return Reconciler(configuration: configuration)
        case .consumer:
            var configuration = FulfilmentConsumer.Configuration()
            configuration.fetchMax = 20
            configuration.batchMax = 8  // a fetch is split into several transactions now and then
            return FulfilmentConsumer(configuration: configuration, seed: machineSeeds.next())
        }
    }

    func makeBody(_ index: Int, valid: Bool) -> [UInt8] {
        var json = JSONWriter()
        // Drawn in the order they are written: quantity, then price, item by item.
        let items = (0..<Int(workloadRandom.int(in: 1...3))).map { item in
            let quantity = Int(workloadRandom.int(in: 1...5))
            return OrderItem(productName: "Product \(item + 1)", quantity: quantity, unitPrice: Money(cents: workloadRandom.int(in: 1...99_999)))
        }
        json.object { json in
            json.field("customerName", "Customer \(index + 1)")
            json.field("customerEmail", valid ? "customer\(index + 1)@example.com" : "not-an-email")
            json.key("items")
            OrderItem.write(items, to: &json)
        }
        return json.bytes
    }

    // MARK: - The loop

    /// Runs the safety phase, heals, runs the liveness phase to quiescence or the deadline.
    public func run() {
        while !finished, let (time, event) = queue.pop() {
            now = time
            dispatch(event)
        }
    }

    func dispatch(_ event: consuming Event) {
        switch consume event {  // moved out, not copied: its inputs and effects carry arrays and strings
        case let .deliver(index, incarnation, input):
            let node = nodes[index]
            guard node.alive, node.incarnation == incarnation else { return }
            if node.pausedUntil > now {
                queue.schedule(at: node.pausedUntil, .deliver(node: index, incarnation: incarnation, input))
                return
            }
            deliver(input, to: index)

        case let .timer(index, incarnation, id, token):
            let node = nodes[index]
            guard node.alive, node.incarnation == incarnation else { return }
            if node.pausedUntil > now {
                queue.schedule(at: node.pausedUntil, .timer(node: index, incarnation: incarnation, id, token: token))
                return
            }
            var performers = SimulatedPerformers(world: self, node: index, incarnation: incarnation)
            node.runner.timerFired(id, token: token, now: clock(of: node), performers: &performers)

        case let .apply(index, incarnation, effect, reservation):
            guard nodes[index].alive, nodes[index].incarnation == incarnation else { return }
            apply(effect, reservation, from: index)

        case .restart(let index):
            restart(index)

        case .clientSend(let client):
            send(client)

        case let .clientTimeout(client, attempt):
            guard !clients[client].answered, clients[client].attempts == attempt else { return }
            history.record(now, clients[client].key, .info, "createOrder", "attempt \(attempt): no response")
            send(client)

        case let .clientReceive(client, attempt, response):
            if attempt & World.cancelFlag != 0 {
                receiveCancel(response, client: client, attempt: attempt & ~World.cancelFlag)
            } else {
                receive(response, client: client, attempt: attempt)
            }

        case .clientCancel(let client):
            cancel(client)

        case let .clientCancelTimeout(client, attempt):
            guard !clients[client].cancelAnswered, clients[client].cancelAttempts == attempt else { return }
            cancel(client)

        case let .fetchExpired(index, incarnation, ticket):
            guard let parked = parkedFetch[index], parked.incarnation == incarnation, parked.ticket == ticket else { return }
            parkedFetch[index] = nil
            reply(to: index, incarnation: incarnation, .fetched(ticket, []))

        case .rebalance(let fault):
            rebalance(asFault: fault && !inLiveness)

        case let .downstream(copies):
            downstreamInFlight -= 1
            guard let message = serviceBus.receive() else { return }
            for _ in 0..<copies {
                downstream.receive(message)
                history.record(now, "downstream", .ok, "receive", "messageId=\(message.messageID) order=\(message.orderID)")
            }

        case .poison:
            let partition = Int(faultStreams[FaultKind.poison.index].below(UInt64(kafka.partitionCount)))
            kafka.appendPoison(partition: partition, value: Array("{\"not\":\"an order event\"".utf8), at: instant)
            poisonSources.append(
                ConsumedRecord(partition: Int32(partition), offset: Int64(kafka.partitions[partition].count - 1), key: nil, headers: [], value: []).source(topic: "orders"))
            fired(.poison, "foreign record on partition \(partition)")
            serveParkedFetches()

        case .loseRecords(let partition):
            let from = max(kafka.committed[partition], kafka.logStart[partition])
            for offset in from..<Int64(kafka.partitions[partition].count) {
                lostSources.append(ConsumedRecord(partition: Int32(partition), offset: offset, key: nil, headers: [], value: []).source(topic: "orders"))
            }
            let lost = kafka.loseUnconsumed(partition: partition)
            if lost > 0 { fired(.recordLoss, "partition \(partition) lost \(lost) acknowledged records") }

        case let .clockStep(index, delta):
            nodes[index].clockOffset += delta
            fired(.clockSkew, "\(nodes[index].name)'s clock steps \(delta / 1_000_000) s (now \(nodes[index].clockOffset / 1_000_000) s off)")

        case .heal:
            heal()

        case .check:
            // Before the deadline only whether anything is left matters; the report at the deadline is kept.
            if let report = quiescence(described: now >= deadline) {
                if now >= deadline {
                    liveness = report
                    finished = true
                } else {
                    queue.schedule(at: now + 250_000, .check)
                }
            } else {
                finished = true
            }
        }
    }

    /// Feeds an input to a node's runner; its effects go to the world's performers.
    func deliver(_ input: Input, to index: Int) {
        let node = nodes[index]
        var performers = SimulatedPerformers(world: self, node: index, incarnation: node.incarnation)
        node.runner.handle(input, now: clock(of: node), performers: &performers)
    }

    /// What a node's wall clock reads now.
    func clock(of node: Node) -> Instant { Instant(microseconds: World.epoch + now + node.clockOffset) }
}
