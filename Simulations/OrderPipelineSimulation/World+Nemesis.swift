import OrderPipelineCore

/// The nemesis: the consumer group, crashes and restarts, fault rolls and outage windows, the heal and the
/// liveness check.
extension World {
    // MARK: - Group, crashes, restarts

    func rebalance(asFault: Bool) {
        let members = nodes.indices.filter { nodes[$0].role == .consumer && nodes[$0].alive }
        let assignments = kafka.rebalance(members: members)
        if asFault { fired(.rebalance, "generation \(kafka.generation)") }
        history.record(
            now, "kafka", .info, "rebalance", "generation \(kafka.generation): \(assignments.map { "\(nodes[$0.member].name)=\($0.partitions)" }.joined(separator: " "))")
        for (member, partitions) in assignments {
            reply(to: member, incarnation: nodes[member].incarnation, .assigned(generation: kafka.generation, partitions: partitions))
        }
        serveParkedFetches()
    }

    func crash(_ index: Int) {
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

    func restart(_ index: Int) {
        let node = nodes[index]
        node.restartPending = false
        guard !node.alive else { return }
        node.alive = true
        node.producerFenced = false  // a new process, a new producer
        node.runner.restart(with: AnyPipelineMachine(makeMachine(node.role, name: node.name)))
        history.record(now, node.name, .info, "restart", "incarnation \(node.incarnation)")
        deliver(.start, to: index)
        if node.role == .consumer { queue.schedule(at: now + latency(50_000...300_000), .rebalance(fault: false)) }
    }

    // MARK: - Faults

    func roll(_ kind: FaultKind) -> Bool {
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
        case .storeFailure: p = rates.storeFailure
        case .transientRefusal: p = rates.transientRefusal
        case .hang: p = rates.hang
        case .producerFenced: p = rates.producerFenced
        case .databaseOutage, .kafkaOutage, .serviceBusOutage, .poison, .clockSkew, .deadLetterTopicDown, .partialPartition, .recordLoss: p = 0
        }
        return faultStreams[kind.index].chance(p) && permit(kind)
    }

    /// Numbers every chance a fault kind gets; with a fault schedule (shrinking, replay) only the listed chances
    /// may strike. Every chance that strikes is recorded, so a run's schedule can be replayed or shrunk.
    func permit(_ kind: FaultKind) -> Bool {
        let index = faultChances[kind.index]
        faultChances[kind.index] += 1
        let reference = FaultReference(kind: kind, index: index)
        if let schedule = options.faultSchedule, !schedule.contains(reference) { return false }
        schedule.append(reference)
        return true
    }

    func isDown(_ kind: FaultKind) -> Bool {
        guard !inLiveness, let windows = outages[kind] else { return false }
        return windows.contains { $0.start <= now && now < $0.end }
    }

    func fired(_ kind: FaultKind, _ detail: @autoclosure () -> String) {
        faultsFired[kind.index] += 1
        history.record(now, "nemesis", .info, kind.rawValue, detail())
    }

    func latency(_ range: ClosedRange<Int64>) -> Int64 { latencyRandom.int(in: range) }

    // MARK: - Liveness

    func heal() {
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

    /// Nil when nothing is pending anywhere; otherwise what is stuck where. Unless `described`, every entry is an
    /// empty string: the checks every 250 ms only ask whether anything is left, and only a report that is kept
    /// spells out each row and order (that text was most of what the checks cost).
    func quiescence(described: Bool) -> LivenessReport? {
        func text(_ make: @autoclosure () -> String) -> String { described ? make() : "" }
        var report = LivenessReport()
        for client in clients where !client.answered || (client.wantsCancel && client.ackedOrder != nil && !client.cancelAnswered) {
            report.unansweredClients.append(client.key)
        }
        report.kafkaOutbox = database.kafkaOutbox.pending.map { text(describe($0)) }
        report.serviceBusOutbox = database.serviceBusOutbox.pending.map { text(describe($0)) }
        for p in 0..<kafka.partitionCount where max(kafka.committed[p], kafka.logStart[p]) < kafka.partitions[p].count {
            let owner = kafka.owner[p] >= 0 ? nodes[kafka.owner[p]].name : "nobody"
            report.uncommittedPartitions.append(text("partition \(p): committed \(kafka.committed[p]) of \(kafka.partitions[p].count), owned by \(owner)"))
        }
        if serviceBus.backlog > 0 || downstreamInFlight > 0 { report.serviceBusBacklog = serviceBus.backlog + downstreamInFlight }
        // Every order is looked up only when nothing else is left, or for the report that is kept.
        for id in database.orderIDs where (described || report.isEmpty) && database.orders[id]?.status.isFinal != true {
            if parkedOrders.contains(id) { continue }  // its event was refused for good: parked for an operator
            report.unfulfilledOrders.append(text("\(id) is \(database.orders[id]!.status.rawValue)"))
        }
        return report.isEmpty ? nil : report
    }

    func describe(_ row: PostgresModel.OutboxRow) -> String {
        var text = "row \(row.sequence) (\(row.event.type.rawValue) of \(row.event.orderID), attempts \(row.attempts)"
        if let owner = row.claimedBy {
            text += ", claimed by \(owner) until \(row.claimedUntil.microseconds - World.epoch)"
        }
        if let error = row.lastError { text += ", last error: \(error)" }
        return text + ")"
    }

    /// The faults of a hostile world (docs/SIMULATION.md): skewed clocks, one relay cut from its broker, a
    /// dead-letter topic that cannot take records. Drawn whether or not the schedule allows them, so allowing fewer
    /// shifts nothing else.
    func drawHostileFaults() {
        let rates = options.rates
        if options.enabled(.clockSkew) {
            for index in nodes.indices where faultStreams[FaultKind.clockSkew.index].chance(rates.clockSkewedNodes) {
                let offset = faultStreams[FaultKind.clockSkew.index].int(in: 1_000_000...60_000_000) * (faultStreams[FaultKind.clockSkew.index].chance(0.5) ? 1 : -1)
                if permit(.clockSkew) {
                    nodes[index].clockOffset = offset
                    fired(.clockSkew, "\(nodes[index].name)'s clock is \(offset / 1_000_000) s off")
                }
            }
            for _ in 0..<rates.clockSteps {
                let at = faultStreams[FaultKind.clockSkew.index].int(in: 0...safetyEnd)
                let index = Int(faultStreams[FaultKind.clockSkew.index].below(UInt64(nodes.count)))
                let delta = faultStreams[FaultKind.clockSkew.index].int(in: 1_000_000...30_000_000) * (faultStreams[FaultKind.clockSkew.index].chance(0.5) ? 1 : -1)
                if permit(.clockSkew) { queue.schedule(at: at, .clockStep(node: index, delta: delta)) }
            }
        }
        if options.enabled(.partialPartition) {
            let relays = nodes.indices.filter { if case .relay = nodes[$0].role { true } else { false } }
            for window in 0..<rates.partialPartitions {
                let node = relays[Int(faultStreams[FaultKind.partialPartition.index].below(UInt64(relays.count)))]
                let start = faultStreams[FaultKind.partialPartition.index].int(in: 0...(safetyEnd - 500_000))
                let end = start + faultStreams[FaultKind.partialPartition.index].int(in: 1_000_000...10_000_000)
                // The first window outlives the heal when another relay of the same outbox can drain without it.
                let peers = relays.filter { nodes[$0].role == nodes[node].role }.count
                let lasting = window == 0 && peers > 1 && faultStreams[FaultKind.partialPartition.index].chance(0.5)
                if permit(.partialPartition) { partitions.append((node, start, lasting ? nil : end)) }
            }
        }
        if options.enabled(.deadLetterTopicDown), faultStreams[FaultKind.deadLetterTopicDown.index].chance(0.5), permit(.deadLetterTopicDown) {
            deadLetterTopicDown = true
        }
        if options.enabled(.recordLoss) {
            for _ in 0..<rates.recordLosses {
                let at = faultStreams[FaultKind.recordLoss.index].int(in: 0...safetyEnd)
                let partition = Int(faultStreams[FaultKind.recordLoss.index].below(UInt64(kafka.partitionCount)))
                if permit(.recordLoss) { queue.schedule(at: at, .loseRecords(partition: partition)) }
            }
        }
    }

    /// Whether `index` is cut from its broker now (partial partitions last into the liveness phase when open-ended).
    func isPartitioned(_ index: Int) -> Bool {
        partitions.contains { $0.node == index && $0.start <= now && (inLiveness ? $0.end == nil : now < ($0.end ?? .max)) }
    }
}
