import OrderPipelineCore

/// Draws one seed's history as a self-contained HTML page: one lane per component (clients, each API instance,
/// relays, consumers, Service Bus relays, the database, each Kafka partition and the group, Service Bus,
/// downstream, the nemesis), every operation as a mark, faults in red, and the first violation pinned at the top
/// with the events of the order it names highlighted. Inline CSS, JS and SVG; no network; prints on paper.
public enum Timeline {
    struct Mark {
        var lane: Int
        var time: Int64
        var entry: History.Entry
        var highlighted: Bool
    }

    public static func html(for outcome: SeedOutcome) -> String {
        let entries = outcome.history.entries
        let lanes = laneNames(outcome)
        let laneIndex = Dictionary(uniqueKeysWithValues: lanes.enumerated().map { ($1, $0) })
        let violation = outcome.violations.first
        let focus = violation.flatMap { focusID(in: $0.detail) }

        var marks: [Mark] = []
        for entry in entries {
            let highlighted = focus.map { entry.value.contains($0) } ?? false
            if let lane = laneIndex[lane(of: entry.process)] {
                marks.append(Mark(lane: lane, time: entry.time, entry: entry, highlighted: highlighted))
            }
            // Store operations also show on the database lane when they complete.
            if entry.type != .invoke, isStoreFunction(entry.function), let db = laneIndex["database"] {
                marks.append(Mark(lane: db, time: entry.time, entry: entry, highlighted: highlighted))
            }
            // A fault also shows on the lane of the component it struck.
            if entry.process == "nemesis", let target = entry.value.split(separator: " ").first.map(String.init), let lane = laneIndex[target] {
                marks.append(Mark(lane: lane, time: entry.time, entry: entry, highlighted: highlighted))
            }
        }

        let end = max(entries.last?.time ?? 1, 1)
        let pxPerMs = 0.6
        let left = 130.0
        let laneHeight = 26.0
        let width = left + Double(end) / 1_000 * pxPerMs + 40
        let height = Double(lanes.count) * laneHeight + 40
        func x(_ time: Int64) -> Double { left + Double(time) / 1_000 * pxPerMs }

        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"monospace\" font-size=\"11\">"
        for (index, name) in lanes.enumerated() {
            let y = 20 + Double(index) * laneHeight
            svg += "<rect x=\"0\" y=\"\(y)\" width=\"\(Int(width))\" height=\"\(laneHeight)\" fill=\"\(index % 2 == 0 ? "#f6f7f9" : "#ffffff")\"/>"
            svg += "<text x=\"6\" y=\"\(y + 17)\" fill=\"#333\">\(escape(name))</text>"
        }
        var second: Int64 = 0
        while second <= end {
            let gx = x(second)
            svg += "<line x1=\"\(gx)\" y1=\"14\" x2=\"\(gx)\" y2=\"\(height - 20)\" stroke=\"#ccd\" stroke-dasharray=\"2,3\"/>"
            svg += "<text x=\"\(gx + 2)\" y=\"12\" fill=\"#667\">\(second / 1_000_000)s</text>"
            second += 1_000_000
        }
        for (index, mark) in marks.enumerated() {
            let y = 20 + Double(mark.lane) * laneHeight + laneHeight / 2
            let entry = mark.entry
            let color = mark.entry.process == "nemesis" ? "#d11" : colors[entry.type] ?? "#888"
            let radius = entry.process == "nemesis" ? 5.0 : (mark.highlighted ? 4.5 : 2.6)
            let stroke = mark.highlighted ? " stroke=\"#000\" stroke-width=\"1.5\"" : ""
            let tip = "t=\(formatSeconds(entry.time)) \(entry.process) \(entry.type.rawValue) \(entry.function) \(entry.value)"
            svg +=
                "<circle class=\"m\(mark.highlighted ? " hl" : "")\" data-i=\"\(index)\" cx=\"\(x(mark.time))\" cy=\"\(y)\" r=\"\(radius)\" fill=\"\(color)\"\(stroke)><title>\(escape(tip))</title></circle>"
        }
        svg += "</svg>"

        let pinned = marks.filter(\.highlighted).map(\.entry)
        var story = ""
        var seen = Set<String>()
        for entry in pinned {
            let line = "t=\(formatSeconds(entry.time))  \(entry.process)  \(entry.type.rawValue)  \(entry.function)  \(entry.value)"
            guard seen.insert(line).inserted else { continue }
            story += "<li class=\"\(entry.process == "nemesis" ? "fault" : entry.type.rawValue)\">\(escape(line))</li>"
        }
        let faults = entries.filter { $0.process == "nemesis" && $0.function != "heal" }.count
        let verdict =
            violation.map { "<div class=\"violation\"><b>\(escape($0.invariant.rawValue))</b>: \(escape($0.detail))</div>" }
            ?? "<div class=\"pass\">every invariant held</div>"
        let options = outcome.options

        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>order-sim seed \(outcome.seed)</title>
            <style>
            body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
            h1 { font-size: 18px; margin: 0 0 6px; }
            .meta { color: #555; margin-bottom: 8px; }
            .violation { background: #fde8e8; border-left: 4px solid #d11; padding: 8px; margin: 8px 0; }
            .pass { background: #e8f6ea; border-left: 4px solid #2a2; padding: 8px; margin: 8px 0; }
            .legend span { display: inline-block; margin-right: 14px; }
            .legend i { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 4px; vertical-align: middle; }
            #lanes { overflow-x: auto; border: 1px solid #ddd; }
            #detail { font-family: monospace; min-height: 1.4em; margin: 6px 0; color: #124; }
            ol { font-family: monospace; font-size: 12px; padding-left: 22px; }
            li.fault { color: #d11; font-weight: bold; } li.fail { color: #a60; } li.info { color: #557; }
            circle.m { cursor: pointer; }
            @media print { #lanes { overflow: visible; border: none; } svg { max-width: 100%; height: auto; } #detail { display: none; } }
            </style></head><body>
            <h1>order-sim — seed \(outcome.seed)</h1>
            <div class="meta">\(options.orders) orders · \(options.apiInstances) API · \(options.relays) relays · \(options.consumers) consumers · \(options.serviceBusRelays) Service Bus relays · \(options.partitions) partitions · \(faults) faults fired · \(formatSeconds(end)) simulated\(options.bug.map { " · bug: \($0.rawValue)" } ?? "")</div>
            \(verdict)
            <div class="legend"><span><i style="background:#36c"></i>invoke</span><span><i style="background:#2a2"></i>ok</span><span><i style="background:#e90"></i>fail</span><span><i style="background:#99a"></i>info</span><span><i style="background:#d11"></i>fault</span><span><i style="background:#fff;border:1.5px solid #000"></i>events of the order the violation names</span></div>
            <div id="detail">hover or click a mark</div>
            <div id="lanes">\(svg)</div>
            \(story.isEmpty ? "" : "<h2>Events that led to it</h2><ol>\(story)</ol>")
            <script>
            document.querySelectorAll('circle.m').forEach(function (c) {
              function show() { document.getElementById('detail').textContent = c.querySelector('title').textContent; }
              c.addEventListener('mouseenter', show); c.addEventListener('click', show);
            });
            </script>
            </body></html>
            """
    }

    static let colors: [History.EntryType: String] = [.invoke: "#36c", .ok: "#2a2", .fail: "#e90", .info: "#99a"]

    static func laneNames(_ outcome: SeedOutcome) -> [String] {
        let o = outcome.options
        var lanes = ["clients"]
        lanes += (1...max(1, o.apiInstances)).map { "api-\($0)" }
        lanes += (1...max(1, o.relays)).map { "relay-\($0)" }
        lanes += (1...max(1, o.consumers)).map { "consumer-\($0)" }
        lanes += (1...max(1, o.serviceBusRelays)).map { "sb-relay-\($0)" }
        lanes += ["database"]
        lanes += (0..<max(1, o.partitions)).map { "kafka-p\($0)" }
        lanes += ["kafka", "service-bus", "downstream", "nemesis"]
        return lanes
    }

    static func lane(of process: String) -> String { process.hasPrefix("client-") ? "clients" : process }

    static func isStoreFunction(_ name: String) -> Bool {
        ["createOrder", "transition", "claimOutbox", "settleOutbox", "releaseClaims", "fulfil", "deadLetter"].contains(name)
    }

    /// The first UUID in a violation's detail: the order (or event) the story is about.
    static func focusID(in detail: String) -> String? {
        let chars = Array(detail)
        guard chars.count >= 36 else { return nil }
        for start in 0...(chars.count - 36) where UUID128(String(chars[start..<(start + 36)])) != nil {
            return String(chars[start..<(start + 36)])
        }
        return nil
    }

    static func formatSeconds(_ micros: Int64) -> String {
        let millis = micros / 1_000
        let fraction = millis % 1_000
        return "\(millis / 1_000).\(fraction < 10 ? "00" : fraction < 100 ? "0" : "")\(fraction)s"
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for char in text {
            switch char {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            default: out.append(char)
            }
        }
        return out
    }
}
