import OrderPipelineCore

/// The run's history, Jepsen style: every operation as `invoke` then `ok`, `fail` (it did not happen) or `info`
/// (it may have happened), plus `info` lines for faults. Written as JSON lines by `--trace`; byte-identical for
/// the same seed.
public struct History: Sendable {
    public enum EntryType: String, Sendable {
        case invoke, ok, fail, info
    }

    public struct Entry: Sendable, Hashable {
        public var time: Int64
        public var process: String
        public var type: EntryType
        public var function: String
        public var value: String
    }

    public let enabled: Bool
    public private(set) var entries: [Entry] = []

    public init(enabled: Bool) { self.enabled = enabled }

    /// The texts are only made when the history is recorded, so a run without `--trace` pays nothing for them.
    mutating func record(
        _ time: Int64, _ process: @autoclosure () -> String, _ type: EntryType, _ function: @autoclosure () -> String, _ value: @autoclosure () -> String
    ) {
        guard enabled else { return }
        entries.append(Entry(time: time, process: process(), type: type, function: function(), value: value()))
    }

    /// One JSON object per line: `{"index","time","process","type","f","value"}`; time in virtual microseconds.
    public var jsonLines: String {
        var out = ""
        for (index, entry) in entries.enumerated() {
            var json = JSONWriter()
            json.object { json in
                json.field("index", index)
                json.field("time", entry.time)
                json.field("process", entry.process)
                json.field("type", entry.type.rawValue)
                json.field("f", entry.function)
                json.field("value", entry.value)
            }
            out += json.string
            out += "\n"
        }
        return out
    }
}
