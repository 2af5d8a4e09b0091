import OrderPipelineCore
import OrderPipelineSimulation
import Testing

/// The chaos test's oracle (`order-sim --check-history`) on small hand-written histories of a real run.
@Suite("HistoryCheck: the Checker's invariants read from a real run's history")
struct HistoryCheckTests {
    static let order = OrderID("6f1c1d1e-0000-4000-8000-000000000001")!
    static let other = OrderID("6f1c1d1e-0000-4000-8000-000000000002")!

    static func line(_ i: Int, _ process: String, _ type: String, _ f: String, _ value: String) -> String {
        #"{"index":\#(i),"time":\#(i * 1_000_000),"process":"\#(process)","type":"\#(type)","f":"\#(f)","value":"\#(value)"}"#
    }

    /// One order, acknowledged after a lost answer, fulfilled once, its message delivered (twice, same MessageId).
    static func healthy(_ order: OrderID = order) -> [String] {
        let messageID = EventID.derived(order: order, type: .orderFulfilled)
        return [
            line(0, "k1", "invoke", "createOrder", "attempt 1 via api"),
            line(1, "k1", "info", "createOrder", "no answer (timed out)"),
            line(2, "api", "info", "crash", "kill -9"),
            line(3, "nemesis", "info", "freeze", "postgres for 2.0 s"),
            line(4, "k1", "invoke", "createOrder", "attempt 2 via api"),
            line(5, "k1", "ok", "createOrder", "order=\(order)"),
            line(6, "postgres", "ok", "order", "order=\(order) status=Fulfilled"),
            line(7, "postgres", "ok", "idempotency-key", "key=k1 order=\(order)"),
            line(8, "postgres", "ok", "transition", "order=\(order) from=- to=Pending"),
            line(9, "postgres", "ok", "transition", "order=\(order) from=Pending to=Processing"),
            line(10, "postgres", "ok", "transition", "order=\(order) from=Processing to=Fulfilled"),
            line(11, "downstream", "ok", "receive", "order=\(order) messageId=\(messageID)"),
            line(12, "downstream", "ok", "receive", "order=\(order) messageId=\(messageID)"),
        ]
    }

    static func check(_ lines: [String]) throws -> HistoryCheck.Report {
        HistoryCheck.check(try HistoryCheck.parse(jsonLines: lines.joined(separator: "\n")))
    }

    @Test func aHealthyRunPasses() throws {
        let report = try Self.check(Self.healthy())
        #expect(report.violations.isEmpty, "\(report.violations)")
        #expect(report.summary == "chaos: orders=1 acknowledged=1 kill9=1 freezes=1 pg-restarts=0 lost=0 doubled=0 duration=12s")
    }

    @Test func aSecondFulfilmentIsDoubled() throws {
        let report = try Self.check(Self.healthy() + [Self.line(13, "postgres", "ok", "transition", "order=\(Self.order) from=Processing to=Fulfilled")])
        #expect(report.doubled == 1)
        #expect(report.violations.contains { $0.invariant == .exactlyOneFulfilment })
    }

    @Test func aMissingMessageIsLost() throws {
        let report = try Self.check(Self.healthy().filter { !$0.contains("receive") })
        #expect(report.lost == 1)
        #expect(report.violations.contains { $0.invariant == .downstreamExactlyOnce })
    }

    @Test func anAcknowledgedOrderMissingFromTheDatabaseIsLost() throws {
        let report = try Self.check(Self.healthy().filter { !$0.contains(#""f":"order""#) })
        #expect(report.lost == 1)
        #expect(report.violations.contains { $0.invariant == .acknowledgedOrderLost })
    }

    @Test func aMessageOfAnUnknownOrderOrAnotherMessageIdIsCaught() throws {
        let stray = Self.line(13, "downstream", "ok", "receive", "order=\(Self.other) messageId=\(EventID.derived(order: Self.other, type: .orderFulfilled))")
        let second = Self.line(14, "downstream", "ok", "receive", "order=\(Self.order) messageId=\(Self.other)")
        let report = try Self.check(Self.healthy() + [stray, second])
        #expect(report.doubled == 1)
        #expect(report.violations.filter { $0.invariant == .downstreamExactlyOnce }.count == 2)
    }
}
