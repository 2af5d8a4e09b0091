import OrderPipelineCore
import Testing

@Suite("W3C traceparent")
struct TraceParentTests {
    @Test("valid values parse and print back; invalid ones are refused")
    func parse() throws {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let trace = try #require(TraceParent(text))
        #expect(trace.traceID == "4bf92f3577b34da6a3ce929d0e0e4736" && trace.parentID == "00f067aa0ba902b7" && trace.flags == "01")
        #expect(trace.description == text)
        // A future version is read by its first four fields.
        #expect(TraceParent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next")?.traceID == trace.traceID)
        for bad in [
            "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            #expect(TraceParent(bad) == nil, "\(bad)")
        }
    }

    @Test("children keep the trace and flags; a derived child is the same every time")
    func children() throws {
        let trace = try #require(TraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"))
        var random = SplitMix64(seed: 7)
        let child = trace.child(using: &random)
        #expect(child.traceID == trace.traceID && child.flags == "00" && child.parentID != trace.parentID)
        let event = EventID.derived(order: OrderID(UUID128(high: 1, low: 2)), type: .orderFulfilled)
        #expect(trace.child(derivedFrom: event.uuid) == trace.child(derivedFrom: event.uuid))
        #expect(TraceParent(trace.child(derivedFrom: event.uuid).description) != nil)
        let fresh = TraceParent.newTrace(using: &random)
        #expect(TraceParent(fresh.description) == fresh && fresh.flags == "01")
    }

    @Test("the consumer continues a record's trace in its fulfilment; a record without one gives none")
    func consumerCarriesTrace() throws {
        let order = OrderID(UUID128(high: 3, low: 4))
        let event = PipelineEvent(type: .orderCreated, orderID: order, at: Instant(microseconds: 1), status: .pending)
        let header = ConsumedRecord.Header(name: "traceparent", value: Array("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".utf8))
        for (headers, expected) in [([header], "4bf92f3577b34da6a3ce929d0e0e4736"), ([], nil)] as [([ConsumedRecord.Header], String?)] {
            var consumer = FulfilmentConsumer(seed: 1)
            let fetch = try #require(
                consumer.handle(.assigned(generation: 1, partitions: [0]), now: Instant(microseconds: 2)).compactMap { effect -> Ticket? in
                    if case .fetch(let ticket, _) = effect { return ticket } else { return nil }
                }.first)
            let record = ConsumedRecord(partition: 0, offset: 0, key: nil, headers: headers, value: event.payload)
            let fulfilment = try #require(
                consumer.handle(.fetched(fetch, [record]), now: Instant(microseconds: 3)).compactMap { effect -> Fulfilment? in
                    if case .store(_, .fulfil(let batch)) = effect { return batch.first } else { return nil }
                }.first)
            #expect(fulfilment.fulfilmentEvent.traceParent?.traceID == expected)
            if expected != nil {
                #expect(fulfilment.fulfilmentEvent.traceParent?.parentID != "00f067aa0ba902b7", "the consumer's own span")
                #expect(fulfilment.fulfilmentEvent.traceParent == record.traceParent?.child(derivedFrom: fulfilment.fulfilmentEvent.id.uuid))
            }
        }
    }

    @Test("the intake machine puts the request's trace on the order's event and on a status change")
    func intakeCarriesTrace() throws {
        let trace = try #require(TraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        let order = OrderID(UUID128(high: 5, low: 6))
        var intake = OrderIntake()
        let created = intake.handle(.createOrder(1, body: seedBody, idempotencyKey: nil, newOrderID: order, trace: trace), now: Instant(microseconds: 1))
        let new = try #require(
            created.compactMap { effect -> NewOrder? in
                if case .store(_, .createOrders(let batch)) = effect { return batch.first } else { return nil }
            }.first)
        #expect(new.event.traceParent == trace)
        let changed = intake.handle(.changeStatus(2, order, body: Array(#"{"status":"Failed"}"#.utf8), trace: trace), now: Instant(microseconds: 2))
        let transition = try #require(
            changed.compactMap { effect -> OrderTransition? in
                if case .store(_, .transition(let transition)) = effect { return transition } else { return nil }
            }.first)
        #expect(transition.traceParent == trace)
        // The shell's rule: the caller's trace continued by a new span, or a new trace.
        var random = SplitMix64(seed: 3)
        let continued = TraceParent.forRequest(trace, using: &random)
        #expect(continued.traceID == trace.traceID && continued.parentID != trace.parentID)
        #expect(TraceParent.forRequest(nil, using: &random).traceID != trace.traceID)
    }
}
