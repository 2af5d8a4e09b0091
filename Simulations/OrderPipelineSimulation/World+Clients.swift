import OrderPipelineCore

/// The clients: they create orders with Idempotency-Keys, retry on silence or 503, and cancel some orders.
extension World {
    /// The PATCH body a cancelling client sends, as bytes: the intake machine parses it.
    static let cancelBody = Array(#"{"status":"Failed","reason":"cancelled by the customer"}"#.utf8)

    func send(_ client: Int) {
        clients[client].attempts += 1
        let attempt = clients[client].attempts
        let copies = attempt == 1 && roll(.duplicateRequest) ? 2 : 1
        if copies == 2 { fired(.duplicateRequest, "\(clients[client].key) submits twice") }
        for copy in 0..<copies {
            let api = apiNodes[Int(workloadRandom.below(UInt64(apiNodes.count)))]
            let requestID = RequestID(client) << 16 | RequestID(attempt)
            let orderID = OrderID(UUID128.random(using: &idRandom))
            history.record(now, clients[client].key, .invoke, "createOrder", "attempt \(attempt)\(copy > 0 ? " (copy)" : "") via \(nodes[api].name)")
            let trace = TraceParent.forRequest(clients[client].traceParent, using: &traceRandom)
            requestTraces[orderID] = trace
            let input = Input.createOrder(requestID, body: clients[client].body, idempotencyKey: clients[client].key, newOrderID: orderID, trace: trace)
            reply(to: api, incarnation: nodes[api].incarnation, input)
        }
        queue.schedule(at: now + 1_000_000, .clientTimeout(client: client, attempt: attempt))
    }

    func receive(_ response: IntakeResponse, client index: Int, attempt: Int) {
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

    func cancel(_ client: Int) {
        guard let order = clients[client].ackedOrder else { return }
        clients[client].cancelAttempts += 1
        let attempt = clients[client].cancelAttempts
        let api = apiNodes[Int(workloadRandom.below(UInt64(apiNodes.count)))]
        history.record(now, clients[client].key, .invoke, "cancelOrder", "order=\(order) attempt \(attempt) via \(nodes[api].name)")
        let requestID = RequestID(client) << 16 | RequestID(attempt | World.cancelFlag)
        let trace = TraceParent.forRequest(clients[client].traceParent, using: &traceRandom)
        reply(to: api, incarnation: nodes[api].incarnation, .changeStatus(requestID, order, body: World.cancelBody, trace: trace))
        queue.schedule(at: now + 1_000_000, .clientCancelTimeout(client: client, attempt: attempt))
    }

    func receiveCancel(_ response: IntakeResponse, client index: Int, attempt: Int) {
        guard !clients[index].cancelAnswered else { return }
        let key = clients[index].key
        switch response {
        case .statusChanged(let order):
            history.record(now, key, .ok, "cancelOrder", "order=\(order.id) now \(order.status.rawValue)")
            clients[index].cancelled = true
            clients[index].cancelAnswered = true
        case .illegalTransition(_, let from, _):
            // Too late: already processing or fulfilled. Only this client cancels its order, so "illegal from
            // Failed" means its own earlier attempt (or an unknown COMMIT re-issued) was applied and then refused.
            history.record(now, key, .fail, "cancelOrder", "illegal from \(from.rawValue)")
            if from == .failed {
                clients[index].cancelled = true
                clientViolations.append(Violation(.idempotency, "\(key): its cancellation was applied, yet a retry of it was answered 409"))
            }
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

}
