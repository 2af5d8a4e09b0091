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
    }

    final class Node {
        let name: String
        let role: Role
        var machine: any PipelineMachine
        var incarnation = 0
        var alive = true
        var restartPending = false
        var pausedUntil: Int64 = 0
        /// Time of the latest input scheduled for this node (inputs are delivered in order).
        var lastDelivery: Int64 = 0
        var timerTokens: [TimerID: UInt64] = [:]
        init(name: String, role: Role, machine: any PipelineMachine) {
            self.name = name
            self.role = role
            self.machine = machine
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
        case heal
        case check
    }

    public let options: SimulationOptions
    public let database = PostgresModel()
    public let kafka: KafkaModel
    public let serviceBus: ServiceBusModel
    public private(set) var downstream = Downstream()
    public private(set) var history: History
    public private(set) var now: Int64 = 0
    public private(set) var faultsFired = [Int](repeating: 0, count: FaultKind.allCases.count)
    public private(set) var recoveries = RecoveryCounts()
    /// Anomalies seen by clients while running (the checker adds the rest at the end).
    public private(set) var clientViolations: [Violation] = []
    public private(set) var poisonSources: [String] = []
    public private(set) var liveness: LivenessReport?
    /// Every fault chance that struck, in order: the run's fault schedule.
    public private(set) var schedule: [FaultReference] = []
    private var faultChances = [Int](repeating: 0, count: FaultKind.allCases.count)

    var nodes: [Node] = []
    var clients: [Client] = []
    private var queue = EventQueue<Event>()
    private var workloadRandom: SplitMix64
    private var latencyRandom: SplitMix64
    private var faultRandom: SplitMix64
    private var machineSeeds: SplitMix64
    private var idRandom: SplitMix64
    private var parkedFetch: [Int: (incarnation: Int, ticket: Ticket)] = [:]
    private var outages: [FaultKind: [(start: Int64, end: Int64)]] = [:]
    private var inLiveness = false
    private var finished = false
    private var downstreamInFlight = 0
    let safetyEnd: Int64
    let deadline: Int64

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
        faultRandom = root.split()
        machineSeeds = root.split()
        idRandom = root.split()
        kafka = KafkaModel(partitionCount: max(1, options.partitions))
        serviceBus = ServiceBusModel(duplicateDetectionWindow: .seconds(600))
        history = History(enabled: options.recordHistory)
        database.recipeVariants = options.bug?.recipeVariants ?? options.recipeVariants
        let workloadSpan = max(Int64(1_000_000), Int64(options.orders) * 20_000)
        safetyEnd = workloadSpan + 3_000_000
        deadline = safetyEnd + options.livenessDeadline.microseconds
        build(workloadSpan: workloadSpan)
    }

    var instant: Instant { Instant(microseconds: World.epoch + now) }

    // MARK: - Set-up

    private func build(workloadSpan: Int64) {
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
        for index in nodes.indices {
            queue.schedule(at: 0, .deliver(node: index, incarnation: 0, .start))
        }
        queue.schedule(at: 50_000, .rebalance(fault: false))

        for i in 0..<options.orders {
            let valid = !workloadRandom.chance(options.invalidRequestShare)
            var client = Client(key: "client-\(i + 1)", body: makeBody(i, valid: valid), valid: valid)
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
                let start = faultRandom.int(in: 0...(safetyEnd - 500_000))
                let end = start + faultRandom.int(in: 200_000...2_500_000)
                if permit(kind) { outages[kind, default: []].append((start, end)) }
            }
        }
        if options.enabled(.rebalance) {
            for _ in 0..<options.rates.rebalances {
                let at = faultRandom.int(in: 100_000...safetyEnd)
                if permit(.rebalance) { queue.schedule(at: at, .rebalance(fault: true)) }
            }
        }
        if options.enabled(.poison) {
            for _ in 0..<options.rates.poisonRecords {
                let at = faultRandom.int(in: 0...safetyEnd)
                if permit(.poison) { queue.schedule(at: at, .poison) }
            }
        }
        queue.schedule(at: safetyEnd, .heal)
    }

    func makeMachine(_ role: Role, name: String) -> any PipelineMachine {
        let machine = makeProductionMachine(role, name: name)
        guard let bug = options.bug else { return machine }
        return bug.wrap(machine, role: role, seed: machineSeeds.next())
    }

    private func makeProductionMachine(_ role: Role, name: String) -> any PipelineMachine {
        switch role {
        case .api:
            return OrderIntake()
        case .relay(let kind):
            var configuration = OutboxRelay.Configuration(outbox: kind, owner: name)
            configuration.batchSize = 20
            configuration.lease = World.relayLease
            configuration.pollInterval = .milliseconds(500)
            return OutboxRelay(configuration: configuration, seed: machineSeeds.next())
        case .consumer:
            var configuration = FulfilmentConsumer.Configuration()
            configuration.fetchMax = 20
            return FulfilmentConsumer(configuration: configuration, seed: machineSeeds.next())
        }
    }

    private func makeBody(_ index: Int, valid: Bool) -> [UInt8] {
        var json = JSONWriter()
        let items = Int(workloadRandom.int(in: 1...3))
        json.object { json in
            json.field("customerName", "Customer \(index + 1)")
            json.field("customerEmail", valid ? "customer\(index + 1)@example.com" : "not-an-email")
            json.key("items")
            json.array { json in
                for item in 0..<items {
                    json.object { json in
                        json.field("productName", "Product \(item + 1)")
                        json.field("quantity", Int(workloadRandom.int(in: 1...5)))
                        json.key("unitPrice"); json.number(text: Money(cents: workloadRandom.int(in: 1...99_999)).description)
                    }
                }
            }
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

    private func dispatch(_ event: Event) {
        switch event {
        case let .deliver(index, incarnation, input):
            let node = nodes[index]
            guard node.alive, node.incarnation == incarnation else { return }
            if node.pausedUntil > now {
                queue.schedule(at: node.pausedUntil, event)
                return
            }
            deliver(input, to: index)

        case let .timer(index, incarnation, id, token):
            let node = nodes[index]
            guard node.alive, node.incarnation == incarnation, node.timerTokens[id] == token else { return }
            if node.pausedUntil > now {
                queue.schedule(at: node.pausedUntil, event)
                return
            }
            deliver(.timer(id), to: index)

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
            let partition = Int(faultRandom.below(UInt64(kafka.partitionCount)))
            kafka.appendPoison(partition: partition, value: Array("{\"not\":\"an order event\"".utf8), at: instant)
            poisonSources.append(ConsumedRecord(partition: Int32(partition), offset: Int64(kafka.partitions[partition].count - 1), key: nil, headers: [], value: []).source(topic: "orders"))
            fired(.poison, "foreign record on partition \(partition)")
            serveParkedFetches()

        case .heal:
            heal()

        case .check:
            if let report = quiescence() {
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

    private func deliver(_ input: Input, to index: Int) {
        let node = nodes[index]
        let effects = node.machine.handle(input, now: instant)
        let incarnation = node.incarnation
        for effect in effects { execute(effect, from: index, incarnation: incarnation) }
    }

    /// The shell's half: hand the effect to its server after a network delay, arm timers, answer clients.
    private func execute(_ effect: Effect, from index: Int, incarnation: Int) {
        let node = nodes[index]
        switch effect {
        case .store(_, let command):
            history.record(now, node.name, .invoke, command.name, command.summary)
            // The transaction starts now: its outbox sequence numbers are taken now and become visible at commit.
            let reservation = database.reserve(for: command)
            queue.schedule(at: now + latency(200...1_500), .apply(node: index, incarnation: incarnation, effect, reservation))
        case .publish(_, let channel, let rows):
            history.record(now, node.name, .invoke, "publish", "\(channel.rawValue) \(rows.map(\.event.summary).joined(separator: " "))")
            queue.schedule(at: now + latency(300...3_000), .apply(node: index, incarnation: incarnation, effect, .init()))
        case .forwardDeadLetter(_, let record, _):
            history.record(now, node.name, .invoke, "forwardDeadLetter", record.source(topic: "orders"))
            queue.schedule(at: now + latency(300...3_000), .apply(node: index, incarnation: incarnation, effect, .init()))
        case .fetch, .commitOffsets:
            history.record(now, node.name, .invoke, effect.name, "")
            queue.schedule(at: now + latency(100...800), .apply(node: index, incarnation: incarnation, effect, .init()))
        case let .setTimer(id, at):
            let token = (node.timerTokens[id] ?? 0) + 1
            node.timerTokens[id] = token
            queue.schedule(at: max(now, at.microseconds - World.epoch), .timer(node: index, incarnation: incarnation, id, token: token))
        case .cancelTimer(let id):
            node.timerTokens[id] = (node.timerTokens[id] ?? 0) + 1
        case let .respond(requestID, response):
            let client = Int(requestID >> 16)
            let attempt = Int(requestID & 0xFFFF)
            queue.schedule(at: now + latency(100...1_000), .clientReceive(client: client, attempt: attempt, response))
        case .note(let note):
            recoveries.count(note)
            history.record(now, node.name, .info, "note", note.summary)
        }
    }

    // MARK: - Servers

    private func apply(_ effect: Effect, _ reservation: PostgresModel.Reservation, from index: Int) {
        let node = nodes[index]
        let incarnation = node.incarnation
        if roll(.crashBeforeEffect) {
            fired(.crashBeforeEffect, "\(node.name) before \(effect.name)")
            crash(index)
            return
        }
        let result: Input
        switch effect {
        case let .store(ticket, command):
            result = .stored(ticket, performStore(command, reservation, by: node))
        case let .publish(ticket, channel, rows):
            result = .published(ticket, channel == .fulfilment ? sendToServiceBus(rows, by: node) : produce(rows, by: node))
        case let .forwardDeadLetter(ticket, record, _):
            if isDown(.kafkaOutage) {
                result = .published(ticket, [.failed(retriable: true, reason: "broker unavailable")])
            } else {
                kafka.appendDeadLetter(record)
                result = .published(ticket, [.delivered])
            }
        case let .fetch(ticket, max):
            guard let fetched = fetch(ticket, max: max, for: index) else { return }
            result = fetched
        case let .commitOffsets(ticket, offsets, generation):
            if isDown(.kafkaOutage) {
                result = .offsetsCommitted(ticket, .failed("broker unavailable"))
            } else {
                if roll(.rebalance) {
                    rebalance(asFault: true)
                }
                let outcome = kafka.commit(member: index, offsets: offsets, generation: generation)
                if outcome == .rebalanced { recoveries.offsetCommitsFenced += 1 }
                history.record(now, node.name, outcome == .committed ? .ok : .fail, "commitOffsets", "\(offsets.map { "\($0.partition)@\($0.offset)" }) gen=\(generation)")
                result = .offsetsCommitted(ticket, outcome)
            }
        default:
            return
        }
        if roll(.crashAfterEffect) {
            fired(.crashAfterEffect, "\(node.name) after \(effect.name)")
            crash(index)
            return
        }
        if case .stored(_, .committed(.claimed(let rows))) = result, !rows.isEmpty, roll(.relayPause) {
            let until = now + World.relayLease.microseconds + latency(100_000...1_500_000)
            node.pausedUntil = until
            fired(.relayPause, "\(node.name) stalls until \(until) holding \(rows.count) claimed rows")
        }
        reply(to: index, incarnation: incarnation, result)
    }

    /// Inputs reach a node in the order they were sent (its shell reads one event loop), whatever the latencies.
    private func reply(to index: Int, incarnation: Int, _ input: Input, after delay: Int64? = nil) {
        let node = nodes[index]
        let time = max(now + (delay ?? latency(100...1_000)), node.lastDelivery)
        node.lastDelivery = time
        queue.schedule(at: time, .deliver(node: index, incarnation: incarnation, input))
    }

    private func performStore(_ command: StoreCommand, _ reservation: PostgresModel.Reservation, by node: Node) -> StoreResult {
        if isDown(.databaseOutage) {
            fired(.databaseOutage, "\(node.name) \(command.name) refused")
            history.record(now, node.name, .fail, command.name, "database unavailable")
            return .failed(.unavailable("connection refused"))
        }
        if roll(.commitUnknown) {
            let happened = faultRandom.chance(0.5)
            fired(.commitUnknown, "\(node.name) \(command.name) \(happened ? "committed" : "rolled back")")
            if happened { _ = commit(command, reservation, by: node) }
            history.record(now, node.name, .info, command.name, "outcome unknown (\(happened ? "committed" : "not committed"))")
            return .unknown
        }
        let reply = commit(command, reservation, by: node)
        history.record(now, node.name, .ok, command.name, reply.summary)
        return .committed(reply)
    }

    private func commit(_ command: StoreCommand, _ reservation: PostgresModel.Reservation, by node: Node) -> StoreReply {
        let (storeReply, notify) = database.perform(command, reserved: reservation)
        if let kind = notify {
            // NOTIFY: every relay of that outbox that is listening wakes up.
            for (index, other) in nodes.enumerated() where other.alive && other.role == .relay(kind) {
                reply(to: index, incarnation: other.incarnation, .wake)
            }
        }
        return storeReply
    }

    private func produce(_ rows: [OutboxMessage], by node: Node) -> [PublishOutcome] {
        if isDown(.kafkaOutage) {
            fired(.kafkaOutage, "\(node.name) produce refused")
            history.record(now, node.name, .fail, "publish", "broker unavailable")
            return rows.map { _ in .failed(retriable: true, reason: "broker unavailable") }
        }
        if roll(.produceTimeout) {
            var written: [String] = []
            for row in rows where faultRandom.chance(0.5) {
                appendToKafka(row.event)
                written.append(row.event.summary)
            }
            fired(.produceTimeout, "\(node.name) produce timed out; written: \(written.count)/\(rows.count)")
            history.record(now, node.name, .info, "publish", "timed out; written: \(written.joined(separator: " "))")
            serveParkedFetches()
            return rows.map { _ in .unknown("delivery report timed out") }
        }
        for row in rows { appendToKafka(row.event) }
        history.record(now, node.name, .ok, "publish", rows.map(\.event.summary).joined(separator: " "))
        serveParkedFetches()
        return rows.map { _ in .delivered }
    }

    private func appendToKafka(_ event: PipelineEvent) {
        let record = kafka.append(event, at: instant)
        history.record(now, "kafka-p\(record.partition)", .ok, "append", "offset \(record.offset): \(event.summary)")
    }

    private func sendToServiceBus(_ rows: [OutboxMessage], by node: Node) -> [PublishOutcome] {
        if isDown(.serviceBusOutage) {
            fired(.serviceBusOutage, "\(node.name) send refused")
            history.record(now, node.name, .fail, "publish", "service bus unavailable")
            return rows.map { _ in .failed(retriable: true, reason: "service bus unavailable") }
        }
        let timedOut = roll(.sendTimeout)
        var outcomes: [PublishOutcome] = []
        for row in rows {
            if timedOut && faultRandom.chance(0.5) {
                outcomes.append(.unknown("no disposition in time"))
                continue
            }
            let enqueued = serviceBus.send(row.event, at: instant)
            history.record(now, "service-bus", .ok, "send", "messageId=\(row.event.id) \(enqueued == nil ? "duplicate dropped" : "enqueued") for \(row.event.orderID)")
            if let message = enqueued {
                let copies = roll(.duplicateDelivery) ? 2 : 1
                if copies == 2 { fired(.duplicateDelivery, "service bus delivers \(message.messageID) twice") }
                downstreamInFlight += 1
                queue.schedule(at: now + latency(500...5_000), .downstream(copies: copies))
            } else {
                recoveries.duplicatesDroppedByServiceBus += 1
            }
            outcomes.append(timedOut ? .unknown("no disposition in time") : .delivered)
        }
        if timedOut { fired(.sendTimeout, "\(node.name) send without disposition") }
        history.record(now, node.name, timedOut ? .info : .ok, "publish", rows.map(\.event.summary).joined(separator: " "))
        return outcomes
    }

    private func fetch(_ ticket: Ticket, max: Int, for index: Int) -> Input? {
        let node = nodes[index]
        if isDown(.kafkaOutage) {
            fired(.kafkaOutage, "\(node.name) fetch refused")
            reply(to: index, incarnation: node.incarnation, .fetched(ticket, []), after: 500_000)
            return nil
        }
        if roll(.duplicateDelivery) {
            let partition = Int(faultRandom.below(UInt64(kafka.partitionCount)))
            if kafka.rewind(member: index, partition: partition, by: faultRandom.int(in: 1...3)) {
                fired(.duplicateDelivery, "\(node.name) gets partition \(partition) again")
            }
        }
        let records = kafka.fetch(member: index, max: max)
        if records.isEmpty {
            history.record(now, node.name, .info, "fetch", "nothing to read: waiting")
            parkedFetch[index] = (node.incarnation, ticket)
            queue.schedule(at: now + 1_000_000, .fetchExpired(node: index, incarnation: node.incarnation, ticket))
            return nil
        }
        history.record(now, node.name, .ok, "fetch", records.map { "\($0.partition)@\($0.offset)" }.joined(separator: " "))
        return .fetched(ticket, records)
    }

    private func serveParkedFetches() {
        for index in parkedFetch.keys.sorted() where kafka.hasRecords(for: index) {
            guard let parked = parkedFetch.removeValue(forKey: index) else { continue }
            let records = kafka.fetch(member: index, max: 20)
            history.record(now, nodes[index].name, .ok, "fetch", records.map { "\($0.partition)@\($0.offset)" }.joined(separator: " "))
            reply(to: index, incarnation: parked.incarnation, .fetched(parked.ticket, records))
        }
    }

    // MARK: - Group, crashes, restarts

    private func rebalance(asFault: Bool) {
        let members = nodes.indices.filter { nodes[$0].role == .consumer && nodes[$0].alive }
        let assignments = kafka.rebalance(members: members)
        if asFault { fired(.rebalance, "generation \(kafka.generation)") }
        history.record(now, "kafka", .info, "rebalance", "generation \(kafka.generation): \(assignments.map { "\(nodes[$0.member].name)=\($0.partitions)" }.joined(separator: " "))")
        for (member, partitions) in assignments {
            reply(to: member, incarnation: nodes[member].incarnation, .assigned(generation: kafka.generation, partitions: partitions))
        }
        serveParkedFetches()
    }

    private func crash(_ index: Int) {
        let node = nodes[index]
        node.alive = false
        node.incarnation += 1
        node.pausedUntil = 0
        parkedFetch[index] = nil
        history.record(now, node.name, .info, "crash", "")
        if node.role == .consumer {
            // The group notices after the session timeout.
            queue.schedule(at: now + latency(300_000...1_500_000), .rebalance(fault: false))
        }
        if !node.restartPending {
            node.restartPending = true
            queue.schedule(at: now + latency(50_000...1_000_000), .restart(node: index))
        }
    }

    private func restart(_ index: Int) {
        let node = nodes[index]
        node.restartPending = false
        guard !node.alive else { return }
        node.alive = true
        node.machine = makeMachine(node.role, name: node.name)
        node.timerTokens = [:]
        history.record(now, node.name, .info, "restart", "incarnation \(node.incarnation)")
        deliver(.start, to: index)
        if node.role == .consumer { queue.schedule(at: now + latency(50_000...300_000), .rebalance(fault: false)) }
    }

    // MARK: - Clients

    private func send(_ client: Int) {
        clients[client].attempts += 1
        let attempt = clients[client].attempts
        let apis = nodes.indices.filter { nodes[$0].role == .api }
        let copies = attempt == 1 && roll(.duplicateRequest) ? 2 : 1
        if copies == 2 { fired(.duplicateRequest, "\(clients[client].key) submits twice") }
        for copy in 0..<copies {
            let api = apis[Int(workloadRandom.below(UInt64(apis.count)))]
            let requestID = RequestID(client) << 16 | RequestID(attempt)
            let orderID = OrderID(UUID128.random(using: &idRandom))
            history.record(now, clients[client].key, .invoke, "createOrder", "attempt \(attempt)\(copy > 0 ? " (copy)" : "") via \(nodes[api].name)")
            let input = Input.createOrder(requestID, body: clients[client].body, idempotencyKey: clients[client].key, newOrderID: orderID)
            reply(to: api, incarnation: nodes[api].incarnation, input)
        }
        queue.schedule(at: now + 1_000_000, .clientTimeout(client: client, attempt: attempt))
    }

    private func receive(_ response: IntakeResponse, client index: Int, attempt: Int) {
        var client = clients[index]
        defer { clients[index] = client }
        switch response {
        case .created(let order), .replayed(let order):
            history.record(now, client.key, .ok, "createOrder", "order=\(order.id)")
            if let earlier = client.ackedOrder, earlier != order.id {
                clientViolations.append(Violation(.idempotency, "\(client.key) was acknowledged with two orders: \(earlier) and \(order.id)"))
            }
            if !client.valid {
                clientViolations.append(Violation(.badInputWroteNothing, "\(client.key): an invalid request was accepted as \(order.id)"))
            }
            if client.ackedOrder == nil, client.wantsCancel {
                queue.schedule(at: now + latency(0...50_000), .clientCancel(client: index))
            }
            client.ackedOrder = order.id
            client.answered = true
        case .rejected:
            history.record(now, client.key, .fail, "createOrder", "rejected")
            if client.valid { clientViolations.append(Violation(.badInputWroteNothing, "\(client.key): a valid request was rejected")) }
            client.rejected = true
            client.answered = true
        case .unavailable(let reason):
            history.record(now, client.key, .fail, "createOrder", reason)
            guard !client.answered, attempt == client.attempts else { return }
            client.answered = false
            let backoff = latency(50_000...500_000)
            clients[index] = client
            queue.schedule(at: now + backoff, .clientSend(client: index))
            // Invalidate the pending timeout of this attempt: the resend bumps the attempt number.
        default:
            history.record(now, client.key, .fail, "createOrder", "unexpected response \(response)")
            clientViolations.append(Violation(.badInputWroteNothing, "\(client.key): unexpected response \(response)"))
            client.answered = true
        }
    }

    private func cancel(_ client: Int) {
        guard let order = clients[client].ackedOrder else { return }
        clients[client].cancelAttempts += 1
        let attempt = clients[client].cancelAttempts
        let apis = nodes.indices.filter { nodes[$0].role == .api }
        let api = apis[Int(workloadRandom.below(UInt64(apis.count)))]
        history.record(now, clients[client].key, .invoke, "cancelOrder", "order=\(order) attempt \(attempt) via \(nodes[api].name)")
        let requestID = RequestID(client) << 16 | RequestID(attempt | World.cancelFlag)
        reply(to: api, incarnation: nodes[api].incarnation, .changeStatus(requestID, order, to: .failed, reason: "cancelled by the customer"))
        queue.schedule(at: now + 1_000_000, .clientCancelTimeout(client: client, attempt: attempt))
    }

    private func receiveCancel(_ response: IntakeResponse, client index: Int, attempt: Int) {
        guard !clients[index].cancelAnswered else { return }
        let key = clients[index].key
        switch response {
        case .statusChanged(let order):
            history.record(now, key, .ok, "cancelOrder", "order=\(order.id) now \(order.status.rawValue)")
            clients[index].cancelled = true
            clients[index].cancelAnswered = true
        case .illegalTransition(_, let from, _):
            // Too late (already processing or fulfilled) or already cancelled by an earlier attempt.
            history.record(now, key, .fail, "cancelOrder", "illegal from \(from.rawValue)")
            if from == .failed { clients[index].cancelled = true }
            clients[index].cancelAnswered = true
        case .unavailable(let reason):
            history.record(now, key, .fail, "cancelOrder", reason)
            guard attempt == clients[index].cancelAttempts else { return }
            queue.schedule(at: now + latency(50_000...500_000), .clientCancel(client: index))
        default:
            history.record(now, key, .fail, "cancelOrder", "unexpected response \(response)")
            clientViolations.append(Violation(.acknowledgedOrderLost, "\(key): cancelling its acknowledged order got \(response)"))
            clients[index].cancelAnswered = true
        }
    }

    // MARK: - Faults

    private func roll(_ kind: FaultKind) -> Bool {
        guard !inLiveness, options.enabled(kind) else { return false }
        let rates = options.rates
        let p: Double
        switch kind {
        case .crashBeforeEffect: p = rates.crashBeforeEffect
        case .crashAfterEffect: p = rates.crashAfterEffect
        case .relayPause: p = rates.relayPause
        case .commitUnknown: p = rates.commitUnknown
        case .produceTimeout: p = rates.produceTimeout
        case .sendTimeout: p = rates.sendTimeout
        case .duplicateDelivery: p = rates.duplicateDelivery
        case .duplicateRequest: p = rates.duplicateRequest
        case .rebalance: p = rates.rebalanceBeforeCommit
        case .databaseOutage, .kafkaOutage, .serviceBusOutage, .poison: p = 0
        }
        return faultRandom.chance(p) && permit(kind)
    }

    /// Numbers every chance a fault kind gets; with a fault schedule (shrinking, replay) only the listed chances
    /// may strike. Every chance that strikes is recorded, so a run's schedule can be replayed or shrunk.
    private func permit(_ kind: FaultKind) -> Bool {
        let index = faultChances[kind.index]
        faultChances[kind.index] += 1
        let reference = FaultReference(kind: kind, index: index)
        if let schedule = options.faultSchedule, !schedule.contains(reference) { return false }
        schedule.append(reference)
        return true
    }

    private func isDown(_ kind: FaultKind) -> Bool {
        guard !inLiveness, let windows = outages[kind] else { return false }
        return windows.contains { $0.start <= now && now < $0.end }
    }

    private func fired(_ kind: FaultKind, _ detail: @autoclosure () -> String) {
        faultsFired[kind.index] += 1
        history.record(now, "nemesis", .info, kind.rawValue, detail())
    }

    private func latency(_ range: ClosedRange<Int64>) -> Int64 { latencyRandom.int(in: range) }

    // MARK: - Liveness

    private func heal() {
        inLiveness = true
        history.record(now, "nemesis", .info, "heal", "faults off; crashed components restart")
        for (index, node) in nodes.enumerated() {
            node.pausedUntil = 0
            if !node.alive, !node.restartPending {
                node.restartPending = true
                queue.schedule(at: now, .restart(node: index))
            }
        }
        queue.schedule(at: now, .check)
    }

    /// Nil when nothing is pending anywhere; otherwise what is stuck where.
    func quiescence() -> LivenessReport? {
        var report = LivenessReport()
        for client in clients where !client.answered || (client.wantsCancel && client.ackedOrder != nil && !client.cancelAnswered) {
            report.unansweredClients.append(client.key)
        }
        report.kafkaOutbox = database.kafkaOutbox.pending.map { describe($0) }
        report.serviceBusOutbox = database.serviceBusOutbox.pending.map { describe($0) }
        for p in 0..<kafka.partitionCount where kafka.committed[p] < kafka.partitions[p].count {
            let owner = kafka.owner[p] >= 0 ? nodes[kafka.owner[p]].name : "nobody"
            report.uncommittedPartitions.append("partition \(p): committed \(kafka.committed[p]) of \(kafka.partitions[p].count), owned by \(owner)")
        }
        if serviceBus.backlog > 0 || downstreamInFlight > 0 { report.serviceBusBacklog = serviceBus.backlog + downstreamInFlight }
        for id in database.orderIDs where database.orders[id]?.status.isFinal != true {
            report.unfulfilledOrders.append("\(id) is \(database.orders[id]!.status.rawValue)")
        }
        return report.isEmpty ? nil : report
    }

    private func describe(_ row: PostgresModel.OutboxRow) -> String {
        var text = "row \(row.sequence) (\(row.event.type.rawValue) of \(row.event.orderID), attempts \(row.attempts)"
        if let owner = row.claimedBy {
            text += ", claimed by \(owner) until \(row.claimedUntil.microseconds - World.epoch)"
        }
        if let error = row.lastError { text += ", last error: \(error)" }
        return text + ")"
    }
}

/// What is still pending after the liveness phase.
public struct LivenessReport: Sendable, Hashable {
    public var unansweredClients: [String] = []
    public var kafkaOutbox: [String] = []
    public var serviceBusOutbox: [String] = []
    public var uncommittedPartitions: [String] = []
    public var serviceBusBacklog = 0
    public var unfulfilledOrders: [String] = []

    public var isEmpty: Bool {
        unansweredClients.isEmpty && kafkaOutbox.isEmpty && serviceBusOutbox.isEmpty && uncommittedPartitions.isEmpty
            && serviceBusBacklog == 0 && unfulfilledOrders.isEmpty
    }

    public var summary: String {
        var parts: [String] = []
        func add(_ list: [String], _ what: String) {
            guard !list.isEmpty else { return }
            parts.append("\(list.count) \(what): \(list.prefix(3).joined(separator: "; "))\(list.count > 3 ? "; …" : "")")
        }
        add(unansweredClients, "client requests never answered")
        add(kafkaOutbox, "Kafka outbox rows unpublished")
        add(serviceBusOutbox, "Service Bus outbox rows unsent")
        add(uncommittedPartitions, "partitions with uncommitted records")
        if serviceBusBacklog > 0 { parts.append("\(serviceBusBacklog) Service Bus messages not yet received downstream") }
        add(unfulfilledOrders, "orders neither Fulfilled nor Failed")
        return parts.joined(separator: " | ")
    }
}

/// How often each recovery path ran: a green run where these are zero proved little.
public struct RecoveryCounts: Sendable, Hashable {
    public var idempotentReplays = 0
    public var redeliveriesDeduplicated = 0
    public var unknownOutcomesResolved = 0
    public var storeRetries = 0
    public var publishRetries = 0
    public var leasesLost = 0
    public var poisonDeadLettered = 0
    public var offsetCommitsFenced = 0
    public var duplicatesDroppedByServiceBus = 0

    public init() {}

    mutating func count(_ note: Note) {
        switch note {
        case .orderAccepted(_, replayed: true): idempotentReplays += 1
        case .redeliveryDeduplicated: redeliveriesDeduplicated += 1
        case .unknownOutcome: unknownOutcomesResolved += 1
        case .storeRetry: storeRetries += 1
        case .publishRetry: publishRetries += 1
        case .leaseLost(_, let rows): leasesLost += rows
        case .poison: poisonDeadLettered += 1
        default: break
        }
    }

    public var rows: [(String, Int)] {
        [
            ("idempotent replay (client retry or unknown commit)", idempotentReplays),
            ("redelivery deduplicated by the inbox", redeliveriesDeduplicated),
            ("unknown outcome re-issued", unknownOutcomesResolved),
            ("store call retried after a failure", storeRetries),
            ("publish retried (broker down / timeout)", publishRetries),
            ("lease lost, settlement fenced", leasesLost),
            ("poison record dead-lettered", poisonDeadLettered),
            ("offset commit fenced by a rebalance", offsetCommitsFenced),
            ("duplicate dropped by Service Bus", duplicatesDroppedByServiceBus),
        ]
    }

    public static func + (lhs: RecoveryCounts, rhs: RecoveryCounts) -> RecoveryCounts {
        var sum = lhs
        sum.idempotentReplays += rhs.idempotentReplays
        sum.redeliveriesDeduplicated += rhs.redeliveriesDeduplicated
        sum.unknownOutcomesResolved += rhs.unknownOutcomesResolved
        sum.storeRetries += rhs.storeRetries
        sum.publishRetries += rhs.publishRetries
        sum.leasesLost += rhs.leasesLost
        sum.poisonDeadLettered += rhs.poisonDeadLettered
        sum.offsetCommitsFenced += rhs.offsetCommitsFenced
        sum.duplicatesDroppedByServiceBus += rhs.duplicatesDroppedByServiceBus
        return sum
    }
}
