import Foundation
import OrderPipelineCore

/// The oracle for a run of the REAL pipeline (scripts/chaos): the same invariants as `Checker`, read from a history
/// in the same JSON-lines format (`History.jsonLines`) instead of a `World`. The chaos harness records what clients
/// were told (`createOrder` invoke/ok/fail/info per Idempotency-Key), the nemesis (`crash`, `freeze`,
/// `pg-restart`), and after the heal what the database holds (`postgres` ok `order`, `idempotency-key`,
/// `transition`, `dead-letter`) and what the queue delivered (`downstream` ok `receive`).
public enum HistoryCheck {
    public struct Entry: Decodable, Sendable {
        public var index: Int
        public var time: Int64
        public var process: String
        public var type: String
        public var f: String
        public var value: String
    }

    public struct Report: Sendable {
        public var violations: [Violation] = []
        public var orders = 0, acknowledged = 0, kills = 0, freezes = 0, postgresRestarts = 0, lost = 0, doubled = 0
        public var seconds: Int64 = 0

        public var summary: String {
            "chaos: orders=\(orders) acknowledged=\(acknowledged) kill9=\(kills) freezes=\(freezes) pg-restarts=\(postgresRestarts) lost=\(lost) doubled=\(doubled) duration=\(seconds)s"
        }
    }

    public static func parse(jsonLines: String) throws -> [Entry] {
        let decoder = JSONDecoder()
        return try jsonLines.split(separator: "\n").map { try decoder.decode(Entry.self, from: Data($0.utf8)) }
    }

    /// `"order=… status=…"` → ["order": …, "status": …].
    static func fields(_ value: String) -> [String: String] {
        var out: [String: String] = [:]
        for part in value.split(separator: " ") {
            guard let eq = part.firstIndex(of: "=") else { continue }
            out[String(part[..<eq])] = String(part[part.index(after: eq)...])
        }
        return out
    }

    public static func check(_ entries: [Entry]) -> Report {
        var report = Report()
        var acked: [(key: String, order: OrderID)] = []
        var keys = Set<String>()
        var status: [OrderID: OrderStatus] = [:]
        var keyOrder: [String: OrderID] = [:]
        var transitions: [(order: OrderID, from: OrderStatus?, to: OrderStatus)] = []
        var received: [(order: OrderID?, messageID: String)] = []
        var deadLetters: [String] = []
        func bad(_ invariant: Invariant, _ detail: String) { report.violations.append(Violation(invariant, detail)) }

        for entry in entries {
            let field = fields(entry.value)
            switch (entry.process, entry.type, entry.f) {
            case (_, "invoke", "createOrder"): keys.insert(entry.process)
            case (_, "ok", "createOrder"):
                guard let order = field["order"].flatMap(OrderID.init) else { bad(.noUnexpectedBranch, "unreadable ack \(entry.value)"); continue }
                acked.append((entry.process, order))
            case (_, "info", "crash"): report.kills += 1
            case ("nemesis", "info", "freeze"): report.freezes += 1
            case ("nemesis", "info", "pg-restart"): report.postgresRestarts += 1
            case ("postgres", "ok", "order"):
                if let order = field["order"].flatMap(OrderID.init), let s = field["status"].flatMap(OrderStatus.init(rawValue:)) { status[order] = s }
            case ("postgres", "ok", "idempotency-key"):
                if let key = field["key"], let order = field["order"].flatMap(OrderID.init) { keyOrder[key] = order }
            case ("postgres", "ok", "transition"):
                if let order = field["order"].flatMap(OrderID.init), let to = field["to"].flatMap(OrderStatus.init(rawValue:)) {
                    transitions.append((order, field["from"].flatMap(OrderStatus.init(rawValue:)), to))
                }
            case ("postgres", "ok", "dead-letter"): deadLetters.append(entry.value)
            case ("downstream", "ok", "receive"):
                received.append((field["order"].flatMap(OrderID.init), field["messageId"] ?? ""))
            default: break
            }
            report.seconds = max(report.seconds, entry.time / 1_000_000)
        }
        report.orders = status.count
        report.acknowledged = acked.count
        var lost = Set<OrderID>(), doubled = Set<OrderID>()

        // Acknowledged orders exist; each key holds the order its client was told; no more orders than keys.
        for (key, order) in acked {
            if status[order] == nil { bad(.acknowledgedOrderLost, "\(key) was told \(order) was created, but it is not in the database"); lost.insert(order) }
            if let stored = keyOrder[key], stored != order { bad(.idempotency, "\(key) was told \(order), its key holds \(stored)"); doubled.insert(order) }
        }
        if status.count > keys.count { bad(.idempotency, "\(status.count) orders stored for \(keys.count) idempotency keys") }

        // Status history: created Pending, then only legal, contiguous moves; exactly one Fulfilled move.
        var last: [OrderID: OrderStatus] = [:]
        var fulfilments: [OrderID: Int] = [:]
        for t in transitions {
            if let from = t.from {
                if last[t.order] != from || !from.canMove(to: t.to) {
                    bad(.statusNeverBackwards, "\(t.order) moved \(from.rawValue) → \(t.to.rawValue) while it was \(last[t.order]?.rawValue ?? "absent")")
                }
            } else if t.to != .pending {
                bad(.statusNeverBackwards, "\(t.order) was created \(t.to.rawValue)")
            }
            last[t.order] = t.to
            if t.to == .fulfilled { fulfilments[t.order, default: 0] += 1 }
        }

        // Downstream: one distinct, derived MessageId per order; none for an order that does not exist.
        var messageIDs: [OrderID: [String]] = [:]
        for message in received {
            guard let order = message.order else { bad(.downstreamExactlyOnce, "a message without a readable order id (\(message.messageID))"); continue }
            if !(messageIDs[order]?.contains(message.messageID) ?? false) { messageIDs[order, default: []].append(message.messageID) }
        }
        for order in messageIDs.keys.sorted() {
            let ids = messageIDs[order]!
            if status[order] == nil {
                bad(.downstreamExactlyOnce, "downstream got a fulfilment of \(order), which was never committed")
            } else if ids.count > 1 {
                bad(.downstreamExactlyOnce, "downstream got \(ids.count) distinct MessageIds for \(order): \(ids.joined(separator: ", "))"); doubled.insert(order)
            } else if ids[0] != EventID.derived(order: order, type: .orderFulfilled).description {
                bad(.downstreamExactlyOnce, "\(order)'s fulfilment MessageId \(ids[0]) is not the derived one")
            }
        }
        for letter in deadLetters { bad(.deadLettersOnlyPoison, "\(letter) was dead-lettered (the chaos run sends no poison)") }

        // After the heal every order ends Fulfilled (once, one message downstream) or Failed (no message).
        for order in status.keys.sorted() {
            let fulfilled = status[order] == .fulfilled, count = fulfilments[order] ?? 0
            if count > 1 { bad(.exactlyOneFulfilment, "\(order) was fulfilled \(count) times"); doubled.insert(order) }
            if fulfilled, count == 0 { bad(.exactlyOneFulfilment, "\(order) is Fulfilled without a Fulfilled transition") }
            if !fulfilled, count > 0 { bad(.statusNeverBackwards, "\(order) was fulfilled and is now \(status[order]!.rawValue)") }
            if fulfilled, messageIDs[order] == nil { bad(.downstreamExactlyOnce, "downstream never got a fulfilment of \(order)"); lost.insert(order) }
            if !fulfilled, messageIDs[order] != nil { bad(.downstreamExactlyOnce, "downstream got a fulfilment of \(order), which is \(status[order]!.rawValue)") }
            if status[order] == .pending || status[order] == .processing { bad(.nothingPending, "\(order) is still \(status[order]!.rawValue)"); lost.insert(order) }
        }
        report.lost = lost.count
        report.doubled = doubled.count
        return report
    }
}
