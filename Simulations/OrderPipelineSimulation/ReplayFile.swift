import Foundation
import OrderPipelineCore

/// A self-describing, versioned file that reruns one seed bit for bit: the seed, the world's shape, the faults,
/// and the verdict it is expected to give. `order-sim --replay FILE` runs it; `fixtures/` keeps them as regressions.
public struct ReplayFile: Codable, Sendable, Hashable {
    public static let currentFormat = "order-sim-replay/1"

    public var format = ReplayFile.currentFormat
    public var seed: UInt64
    public var orders: Int
    public var faults: [String]
    public var apiInstances: Int
    public var relays: Int
    public var serviceBusRelays: Int
    public var consumers: Int
    public var partitions: Int
    /// Reconciler nodes; absent in files written before the reconciler existed, which ran without one.
    public var reconcilers: Int?
    /// Fault rates and cancellation share (swarm seeds draw their own); absent in older files means defaults.
    public var rates: FaultRates?
    public var cancelShare: Double?
    public var invalidRequestShare: Double?
    /// Only these fault chances may strike (a shrunk schedule); absent: every chance the rates give.
    public var faultSchedule: [FaultReference]?
    /// The bug-zoo variant that ran, if any.
    public var bug: String?
    /// The invariant this run is expected to break, or nil when it is expected to pass.
    public var expectedViolation: String?
    public var note: String?

    public init(options: SimulationOptions, expectedViolation: Invariant?, note: String? = nil) {
        seed = options.seed
        orders = options.orders
        faults = options.faults.sorted().map(\.rawValue)
        apiInstances = options.apiInstances
        relays = options.relays
        serviceBusRelays = options.serviceBusRelays
        consumers = options.consumers
        partitions = options.partitions
        reconcilers = options.reconcilers
        rates = options.rates
        cancelShare = options.cancelShare
        invalidRequestShare = options.invalidRequestShare
        faultSchedule = options.faultSchedule?.sorted()
        bug = options.bug?.rawValue
        self.expectedViolation = expectedViolation?.rawValue
        self.note = note
    }

    public enum LoadError: Error, CustomStringConvertible {
        case unreadable(String, String)
        case unsupportedFormat(String)
        case unknownFault(String)
        case unknownInvariant(String)
        case unknownBug(String)

        public var description: String {
            switch self {
            case .unreadable(let path, let why): "cannot read replay file \(path): \(why)"
            case .unsupportedFormat(let format): "unsupported replay format \"\(format)\" (this order-sim reads \(ReplayFile.currentFormat))"
            case .unknownFault(let name): "unknown fault kind \"\(name)\" in replay file"
            case .unknownInvariant(let name): "unknown invariant \"\(name)\" in replay file"
            case .unknownBug(let name): "unknown bug \"\(name)\" in replay file (order-sim --list-bugs)"
            }
        }
    }

    public static func load(path: String) throws -> ReplayFile {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch { throw LoadError.unreadable(path, "\(error.localizedDescription)") }
        let file: ReplayFile
        do { file = try JSONDecoder().decode(ReplayFile.self, from: data) } catch { throw LoadError.unreadable(path, "not a replay file (\(error))") }
        guard file.format == currentFormat else { throw LoadError.unsupportedFormat(file.format) }
        if let name = file.expectedViolation, Invariant(rawValue: name) == nil { throw LoadError.unknownInvariant(name) }
        _ = try file.options()
        return file
    }

    public func options() throws -> SimulationOptions {
        var options = SimulationOptions()
        options.seed = seed
        options.orders = orders
        options.faults = try faults.map { name in
            guard let kind = FaultKind(rawValue: name) else { throw LoadError.unknownFault(name) }
            return kind
        }
        options.apiInstances = apiInstances
        options.relays = relays
        options.serviceBusRelays = serviceBusRelays
        options.consumers = consumers
        options.partitions = partitions
        options.reconcilers = reconcilers ?? 0
        if let rates { options.rates = rates }
        if let cancelShare { options.cancelShare = cancelShare }
        if let invalidRequestShare { options.invalidRequestShare = invalidRequestShare }
        if let faultSchedule { options.faultSchedule = Set(faultSchedule) }
        if let bug {
            guard let variant = ZooBug(rawValue: bug) else { throw LoadError.unknownBug(bug) }
            options.bug = variant
        }
        return options
    }

    public var expectedInvariant: Invariant? { expectedViolation.flatMap(Invariant.init(rawValue:)) }

    public func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }
}
