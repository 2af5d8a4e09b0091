import OrderPipelineCore

/// The simulator's performers: every effect of a node goes to its server (a model) after a network delay; the
/// result comes back through the event queue. The same `MachineRunner` drives the node as in production.
struct SimulatedPerformers: EffectPerformers {
    unowned let world: World
    let node: Int
    let incarnation: Int

    private var name: String { world.nodes[node].name }

    mutating func store(_ command: StoreCommand, ticket: Ticket) {
        world.history.record(world.now, name, .invoke, command.name, command.summary)
        // The transaction starts now: its outbox sequence numbers are taken now and become visible at commit.
        let reservation = world.database.reserve(for: command)
        world.send(.store(ticket, command), from: node, incarnation: incarnation, latency: 200...1_500, reservation)
    }

    mutating func publish(_ messages: [OutboxMessage], to channel: Channel, ticket: Ticket) {
        world.history.record(world.now, name, .invoke, "publish", "\(channel.rawValue) \(messages.map(\.event.summary).joined(separator: " "))")
        world.send(.publish(ticket, channel, messages), from: node, incarnation: incarnation, latency: 300...3_000)
    }

    mutating func forwardDeadLetter(_ record: ConsumedRecord, reason: String, ticket: Ticket) {
        world.history.record(world.now, name, .invoke, "forwardDeadLetter", record.source(topic: "orders"))
        world.send(.forwardDeadLetter(ticket, record, reason: reason), from: node, incarnation: incarnation, latency: 300...3_000)
    }

    /// Synchronous, as in production: a publish sent after it is answered by the new session.
    mutating func resetPublisher(_ channel: Channel) {
        world.history.record(world.now, name, .info, "resetPublisher", channel.rawValue)
        guard channel == .orders, world.nodes[node].producerFenced else { return }
        world.nodes[node].producerFenced = false
        world.recoveries.publisherResets += 1
    }

    mutating func fetch(max: Int, ticket: Ticket) {
        world.history.record(world.now, name, .invoke, "fetch", "")
        world.send(.fetch(ticket, max: max), from: node, incarnation: incarnation, latency: 100...800)
    }

    mutating func commit(_ offsets: [PartitionOffset], generation: Int64, ticket: Ticket) {
        world.history.record(world.now, name, .invoke, "commitOffsets", "")
        world.send(.commitOffsets(ticket, offsets, generation: generation), from: node, incarnation: incarnation, latency: 100...800)
    }

    mutating func setTimer(_ id: TimerID, at: Instant, token: UInt64) {
        // The node's clock reads `at` when true time reaches `at` minus its offset.
        let due = at.microseconds - World.epoch - world.nodes[node].clockOffset
        world.queue.schedule(at: max(world.now, due), .timer(node: node, incarnation: incarnation, id, token: token))
    }

    mutating func respond(_ response: IntakeResponse, to request: RequestID) {
        let client = Int(request >> 16)
        let attempt = Int(request & 0xFFFF)
        world.queue.schedule(at: world.now + world.latency(100...1_000), .clientReceive(client: client, attempt: attempt, response))
    }

    mutating func observe(_ note: Note) {
        world.recoveries.count(note)
        if case .fulfilled(let id) = note { world.fulfilledNotes[id, default: 0] += 1 }
        world.history.record(world.now, name, .info, "note", note.summary)
        if case .unexpected(let what) = note {
            world.clientViolations.append(Violation(.noUnexpectedBranch, "\(name): \(what)"))
        }
    }
}

extension World {
    /// Refusals a Kafka broker answers for reasons that pass.
    static let transientKafkaRefusals = [
        ("kafka:NOT_ENOUGH_REPLICAS", "Broker: Not enough in-sync replicas"),
        ("kafka:LEADER_NOT_AVAILABLE", "Broker: Leader not available"),
        ("kafka:NOT_LEADER_FOR_PARTITION", "Broker: Not leader for partition"),
        ("kafka:THROTTLING_QUOTA_EXCEEDED", "Broker: Throttling quota has been exceeded"),
    ]

    /// Refusals Azure Service Bus answers for reasons that pass.
    static let transientRefusals = [
        ("com.microsoft:server-busy", "The server is busy. Please retry the operation."),
        ("amqp:resource-limit-exceeded", "The quota of the namespace was exceeded."),
        ("amqp:unauthorized-access", "The token has expired."),
        ("amqp:internal-error", "The service was unable to process the request."),
        ("com.microsoft:timeout", "The operation did not complete within the allotted timeout."),
    ]

    /// A permanent refusal: now and then (a fifth of the transient-refusal chances) the first message of a batch is
    /// too large for the broker, for good. Its row must be dead-lettered and its order is parked for an operator
    /// (`orderpipeline outbox replay`): exempt from the fulfilment and downstream invariants, never from the others.
    /// The batch's other messages are handed over as usual. Nil when nothing in the batch is too large.
    func refuseOversized(_ rows: [OutboxMessage], outbox: OutboxKind, by node: Node, deliver: ([OutboxMessage]) -> [PublishOutcome]) -> [PublishOutcome]? {
        // Only a message still unsettled (not one a paused relay re-sends after another relay published it).
        func unsettled(_ row: OutboxMessage) -> Bool { database.outbox(outbox).row(row.sequence).map { !$0.isSettled } ?? false }
        // Size is a property of the bytes: a message the broker already took once (a copy whose settlement has not
        // landed yet, re-sent after its lease ran out) is never too large afterwards.
        func takenBefore(_ event: PipelineEvent) -> Bool { outbox == .kafka ? kafka.holds(event) : serviceBus.accepted(event.id) }
        if let first = rows.first, options.enabled(.transientRefusal), !inLiveness, !oversized.contains(first.event.id), unsettled(first),
            faultStreams[FaultKind.transientRefusal.index].chance(options.rates.transientRefusal / 5), !takenBefore(first.event),
            permit(.transientRefusal)
        {
            oversized.append(first.event.id)
            if !parkedOrders.contains(first.event.orderID) { parkedOrders.append(first.event.orderID) }
            fired(.transientRefusal, "\(first.event.summary) is too large for the \(outbox.rawValue) broker, for good")
        }
        guard rows.contains(where: { oversized.contains($0.event.id) }) else { return nil }
        let (condition, description) =
            outbox == .kafka
            ? ("kafka:MSG_SIZE_TOO_LARGE", "Broker: Message size too large") : ("amqp:link:message-size-exceeded", "The message is too large.")
        for row in rows where oversized.contains(row.event.id) && unsettled(row) {
            let source = "\(outbox.rawValue)-outbox/\(row.sequence)"
            if !poisonSources.contains(source) { poisonSources.append(source) }
            history.record(now, node.name, .fail, "publish", "refused (\(condition)): \(row.event.summary)")
        }
        // Which rows are refused is fixed before the rest is handed over (that may mark another message too large).
        let refused = rows.map { oversized.contains($0.event.id) }
        var others = deliver(zip(rows, refused).filter { !$0.1 }.map(\.0)).makeIterator()
        return refused.map { $0 ? .refused(condition: condition, description: description) : others.next() ?? .unknown("lost") }
    }

    /// Hands an effect to its server after a network delay (moved into the queue, as `reply` moves its input).
    func send(_ effect: consuming Effect, from index: Int, incarnation: Int, latency range: ClosedRange<Int64>, _ reservation: PostgresModel.Reservation = .init()) {
        queue.schedule(at: now + latency(range), .apply(node: index, incarnation: incarnation, effect, reservation))
    }

    func apply(_ effect: Effect, _ reservation: PostgresModel.Reservation, from index: Int) {
        let node = nodes[index]
        let incarnation = node.incarnation
        if roll(.crashBeforeEffect) {
            fired(.crashBeforeEffect, "\(node.name) before \(effect.name)")
            crash(index)
            return
        }
        if hang(effect, reservation, from: index) { return }
        let result: Input
        switch effect {
        case let .store(ticket, command):
            result = .stored(ticket, performStore(command, reservation, by: node))
        case let .publish(ticket, channel, rows):
            result = .published(ticket, channel == .fulfilment ? sendToServiceBus(rows, by: node) : produce(rows, by: node))
        case let .forwardDeadLetter(ticket, record, _):
            if deadLetterTopicDown {
                fired(.deadLetterTopicDown, "\(node.name) cannot forward \(record.source(topic: "orders"))")
                result = .published(ticket, [.failed(retriable: true, reason: "unknown topic or partition")])
            } else if isDown(.kafkaOutage) {
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
        if case .stored(_, .committed(.claimed(let rows, _))) = result, !rows.isEmpty, roll(.relayPause) {
            let until = now + World.relayLease.microseconds + latency(100_000...1_500_000)
            node.pausedUntil = until
            fired(.relayPause, "\(node.name) stalls until \(until) holding \(rows.count) claimed rows")
        }
        reply(to: index, incarnation: incarnation, result)
    }

    /// `hang`: the server (a frozen PostgreSQL, a black-holed broker, a half-open connection) never answers; the
    /// caller's deadline turns that into an unknown outcome. What the server did meanwhile is a coin per
    /// transaction or message. Answers whether the effect hung.
    func hang(_ effect: Effect, _ reservation: PostgresModel.Reservation, from index: Int) -> Bool {
        let node = nodes[index]
        switch effect {
        case let .store(ticket, command):
            guard roll(.hang) else { return false }
            let happened = faultStreams[FaultKind.hang.index].chance(0.5)
            fired(.hang, "\(node.name) \(command.name) hangs until its deadline (\(happened ? "committed" : "not committed"))")
            if happened { _ = commit(command, reservation, by: node) }
            reply(to: index, incarnation: node.incarnation, .stored(ticket, .unknown), after: World.storeDeadline.microseconds)
            return true
        case let .publish(ticket, channel, rows):
            guard roll(.hang) else { return false }
            var written = 0
            for row in rows where faultStreams[FaultKind.hang.index].chance(0.5) && !oversized.contains(row.event.id) {
                written += 1
                if channel == .fulfilment {
                    if serviceBus.send(row.event, at: instant) != nil {
                        downstreamInFlight += 1
                        queue.schedule(at: now + latency(500...5_000), .downstream(copies: 1))
                    }
                } else {
                    appendToKafka(row.event)
                }
            }
            fired(.hang, "\(node.name) publish hangs until its deadline (\(written)/\(rows.count) written)")
            if channel == .orders { serveParkedFetches() }
            reply(
                to: index, incarnation: node.incarnation, .published(ticket, rows.map { _ in .unknown("no answer before the deadline") }), after: World.publishDeadline.microseconds
            )
            return true
        default:
            return false
        }
    }

    /// A result reaches its node after a network delay. Results on the consumer-group lane keep their order;
    /// every other result is independent, so the seed decides which of a node's concurrent effects answers first.
    func reply(to index: Int, incarnation: Int, _ input: consuming Input, after delay: Int64? = nil) {
        let node = nodes[index]
        var time = now + (delay ?? latency(100...1_000))
        switch input {
        case .fetched, .assigned, .offsetsCommitted:
            time = max(time, node.groupLane)
            node.groupLane = time
        default:
            break
        }
        queue.schedule(at: time, .deliver(node: index, incarnation: incarnation, input))
    }

    func performStore(_ command: StoreCommand, _ reservation: PostgresModel.Reservation, by node: Node) -> StoreResult {
        if isDown(.databaseOutage) {
            fired(.databaseOutage, "\(node.name) \(command.name) refused")
            history.record(now, node.name, .fail, command.name, "database unavailable")
            return .failed(.unavailable("connection refused"))
        }
        if roll(.storeFailure) {
            let failure: StoreFailure = [.conflict("could not serialize access"), .timedOut, .unavailable("server closed the connection unexpectedly")][
                Int(faultStreams[FaultKind.storeFailure.index].below(3))]
            fired(.storeFailure, "\(node.name) \(command.name): \(failure)")
            history.record(now, node.name, .fail, command.name, "\(failure)")
            return .failed(failure)
        }
        if roll(.commitUnknown) {
            let happened = faultStreams[FaultKind.commitUnknown.index].chance(0.5)
            fired(.commitUnknown, "\(node.name) \(command.name) \(happened ? "committed" : "rolled back")")
            if happened { _ = commit(command, reservation, by: node) }
            history.record(now, node.name, .info, command.name, "outcome unknown (\(happened ? "committed" : "not committed"))")
            return .unknown
        }
        let reply = commit(command, reservation, by: node)
        history.record(now, node.name, .ok, command.name, reply.summary)
        return .committed(reply)
    }

    func commit(_ command: StoreCommand, _ reservation: PostgresModel.Reservation, by node: Node) -> StoreReply {
        database.now = instant  // the database keeps true time; only the nodes' clocks are skewed
        let (storeReply, notify) = database.perform(command, reserved: reservation)
        if let kind = notify {
            // NOTIFY: every relay of that outbox that is listening wakes up.
            for (index, other) in nodes.enumerated() where other.alive && other.role == .relay(kind) {
                reply(to: index, incarnation: other.incarnation, .wake)
            }
        }
        return storeReply
    }

    func produce(_ rows: [OutboxMessage], by node: Node) -> [PublishOutcome] {
        // A fenced session answers at once, without reaching the broker, until its relay resets it (heal or not).
        if node.producerFenced {
            history.record(now, node.name, .fail, "publish", "producer session unusable")
            return rows.map { _ in .sessionUnusable("producer session unusable (Broker: Producer fenced)") }
        }
        if isPartitioned(nodes.firstIndex { $0 === node }!) {
            fired(.partialPartition, "\(node.name) cannot reach Kafka")
            return rows.map { _ in .unknown("message timed out: broker unreachable") }
        }
        if isDown(.kafkaOutage) {
            fired(.kafkaOutage, "\(node.name) produce refused")
            history.record(now, node.name, .fail, "publish", "broker unavailable")
            return rows.map { _ in .failed(retriable: true, reason: "broker unavailable") }
        }
        if roll(.producerFenced) {
            node.producerFenced = true
            fired(.producerFenced, "\(node.name)'s Kafka producer is fenced")
            history.record(now, node.name, .fail, "publish", "PRODUCER_FENCED")
            return rows.map { _ in .sessionUnusable("producer session unusable (Broker: Producer fenced)") }
        }
        if let outcomes = refuseOversized(rows, outbox: .kafka, by: node, deliver: { produce($0, by: node) }) { return outcomes }
        if roll(.transientRefusal) {
            let (condition, description) = World.transientKafkaRefusals[Int(faultStreams[FaultKind.transientRefusal.index].below(UInt64(World.transientKafkaRefusals.count)))]
            fired(.transientRefusal, "\(node.name) produce refused: \(condition)")
            history.record(now, node.name, .fail, "publish", "refused (\(condition))")
            return rows.map { _ in .refused(condition: condition, description: description) }
        }
        if roll(.produceTimeout) {
            var written: [String] = []
            for row in rows where faultStreams[FaultKind.produceTimeout.index].chance(0.5) {
                appendToKafka(row.event)
                written.append(row.event.summary)
            }
            fired(.produceTimeout, "\(node.name) produce timed out; written: \(written.count)/\(rows.count)")
            history.record(now, node.name, .info, "publish", "timed out; written: \(written.joined(separator: " "))")
            serveParkedFetches()
            return rows.map { _ in .unknown("delivery report timed out") }
        }
        // The delivery report names where each record went, as librdkafka's does.
        let positions = rows.map { appendToKafka($0.event) }
        history.record(now, node.name, .ok, "publish", rows.map(\.event.summary).joined(separator: " "))
        serveParkedFetches()
        return positions.map { .appended(RecordPosition(partition: $0.partition, offset: $0.offset)) }
    }

    @discardableResult
    func appendToKafka(_ event: PipelineEvent) -> ConsumedRecord {
        let record = kafka.append(event, at: instant)
        history.record(now, "kafka-p\(record.partition)", .ok, "append", "offset \(record.offset): \(event.summary)")
        return record
    }

    func sendToServiceBus(_ rows: [OutboxMessage], by node: Node) -> [PublishOutcome] {
        if isPartitioned(nodes.firstIndex { $0 === node }!) {
            fired(.partialPartition, "\(node.name) cannot reach Service Bus")
            return rows.map { _ in .failed(retriable: true, reason: "connection refused") }
        }
        if isDown(.serviceBusOutage) {
            fired(.serviceBusOutage, "\(node.name) send refused")
            history.record(now, node.name, .fail, "publish", "service bus unavailable")
            return rows.map { _ in .failed(retriable: true, reason: "service bus unavailable") }
        }
        if let outcomes = refuseOversized(rows, outbox: .serviceBus, by: node, deliver: { sendToServiceBus($0, by: node) }) { return outcomes }
        if roll(.transientRefusal) {
            let (condition, description) = World.transientRefusals[Int(faultStreams[FaultKind.transientRefusal.index].below(UInt64(World.transientRefusals.count)))]
            fired(.transientRefusal, "\(node.name) send refused: \(condition)")
            history.record(now, node.name, .fail, "publish", "refused (\(condition))")
            return rows.map { _ in .refused(condition: condition, description: description) }
        }
        let timedOut = roll(.sendTimeout)
        var outcomes: [PublishOutcome] = []
        for row in rows {
            if timedOut && faultStreams[FaultKind.sendTimeout.index].chance(0.5) {
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

    func fetch(_ ticket: Ticket, max: Int, for index: Int) -> Input? {
        let node = nodes[index]
        if isDown(.kafkaOutage) {
            fired(.kafkaOutage, "\(node.name) fetch refused")
            reply(to: index, incarnation: node.incarnation, .fetched(ticket, []), after: 500_000)
            return nil
        }
        if roll(.duplicateDelivery) {
            let partition = Int(faultStreams[FaultKind.duplicateDelivery.index].below(UInt64(kafka.partitionCount)))
            if kafka.rewind(member: index, partition: partition, by: faultStreams[FaultKind.duplicateDelivery.index].int(in: 1...3)) {
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

    func serveParkedFetches() {
        for index in parkedFetch.keys.sorted() where kafka.hasRecords(for: index) {
            guard let parked = parkedFetch.removeValue(forKey: index) else { continue }
            let records = kafka.fetch(member: index, max: 20)
            history.record(now, nodes[index].name, .ok, "fetch", records.map { "\($0.partition)@\($0.offset)" }.joined(separator: " "))
            reply(to: index, incarnation: parked.incarnation, .fetched(parked.ticket, records))
        }
    }

}
