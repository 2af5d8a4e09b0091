/// The one runner of every machine, in production and in the simulator.
///
/// A machine returns effects; the runner hands each to the performer of its family and keeps the timer
/// bookkeeping (a timer set again moves it, a cancelled or moved timer never fires). Results come back as inputs
/// through `handle` — in production from the tasks that performed them, in the simulator from its event queue —
/// in whatever order they complete. Nothing else calls a machine's `handle`.
public struct MachineRunner<Machine: PipelineMachine>: Sendable {
    public private(set) var machine: Machine
    /// The current token of each timer; a firing with an older token was moved or cancelled.
    private var timerTokens: [TimerID: UInt64] = [:]

    public init(_ machine: Machine) {
        self.machine = machine
    }

    /// Feeds one input to the machine and hands every effect it returns to `performers`.
    public mutating func handle<P: EffectPerformers>(_ input: Input, now: Instant, performers: inout P) {
        for effect in machine.handle(input, now: now) {
            switch effect {
            case let .store(ticket, command): performers.store(command, ticket: ticket)
            case let .publish(ticket, channel, messages): performers.publish(messages, to: channel, ticket: ticket)
            case let .forwardDeadLetter(ticket, record, reason): performers.forwardDeadLetter(record, reason: reason, ticket: ticket)
            case let .fetch(ticket, max): performers.fetch(max: max, ticket: ticket)
            case let .commitOffsets(ticket, offsets, generation): performers.commit(offsets, generation: generation, ticket: ticket)
            case let .resetPublisher(channel): performers.resetPublisher(channel)
            case let .setTimer(id, at):
                let token = (timerTokens[id] ?? 0) + 1
                timerTokens[id] = token
                performers.setTimer(id, at: at, token: token)
            case let .cancelTimer(id):
                timerTokens[id] = (timerTokens[id] ?? 0) + 1
            case let .respond(request, response): performers.respond(response, to: request)
            case let .note(note): performers.observe(note)
            }
        }
    }

    /// A timer armed with `token` went off: delivered as `.timer(id)` unless it was moved or cancelled since.
    public mutating func timerFired<P: EffectPerformers>(_ id: TimerID, token: UInt64, now: Instant, performers: inout P) {
        guard timerTokens[id] == token else { return }
        handle(.timer(id), now: now, performers: &performers)
    }

    /// Forgets every armed timer (the machine restarts from durable state).
    public mutating func restart(with machine: Machine) {
        self.machine = machine
        timerTokens = [:]
    }
}

/// Where a runner sends each family of effects. Production implements the families with libpq, librdkafka,
/// qpid-proton and sleeping tasks; the simulator with its models and its event queue. A family a role never uses
/// keeps the default, which reports the effect as unexpected (a violation in the simulator, an error in the log).
public protocol EffectPerformers {
    /// A store transaction; answer with `.stored(ticket, result)`.
    mutating func store(_ command: StoreCommand, ticket: Ticket)
    /// Messages to a channel; answer with `.published(ticket, outcomes)`, one outcome per message, same order.
    mutating func publish(_ messages: [OutboxMessage], to channel: Channel, ticket: Ticket)
    /// A poison record to the dead-letter topic; answer with `.published(ticket, [outcome])`.
    mutating func forwardDeadLetter(_ record: ConsumedRecord, reason: String, ticket: Ticket)
    /// Records of the assigned partitions; answer with `.fetched(ticket, records)`.
    mutating func fetch(max: Int, ticket: Ticket)
    /// The group's offsets; answer with `.offsetsCommitted(ticket, outcome)`.
    mutating func commit(_ offsets: [PartitionOffset], generation: Int64, ticket: Ticket)
    /// Replace the channel's publisher session, synchronously: publishes performed after this use the new one.
    mutating func resetPublisher(_ channel: Channel)
    /// Call the runner's `timerFired(id, token:)` once the clock reads `at`.
    mutating func setTimer(_ id: TimerID, at: Instant, token: UInt64)
    /// The API's answer to a request.
    mutating func respond(_ response: IntakeResponse, to request: RequestID)
    /// Logs, metrics, the simulator's recovery counts.
    mutating func observe(_ note: Note)
}

extension EffectPerformers {
    public mutating func store(_ command: StoreCommand, ticket: Ticket) { observe(.unexpected("store \(command.name)")) }
    public mutating func publish(_ messages: [OutboxMessage], to channel: Channel, ticket: Ticket) { observe(.unexpected("publish to \(channel.rawValue)")) }
    public mutating func forwardDeadLetter(_ record: ConsumedRecord, reason: String, ticket: Ticket) { observe(.unexpected("forwardDeadLetter")) }
    public mutating func fetch(max: Int, ticket: Ticket) { observe(.unexpected("fetch")) }
    public mutating func commit(_ offsets: [PartitionOffset], generation: Int64, ticket: Ticket) { observe(.unexpected("commitOffsets")) }
    public mutating func resetPublisher(_ channel: Channel) { observe(.unexpected("resetPublisher \(channel.rawValue)")) }
    public mutating func setTimer(_ id: TimerID, at: Instant, token: UInt64) { observe(.unexpected("setTimer \(id.rawValue)")) }
    public mutating func respond(_ response: IntakeResponse, to request: RequestID) { observe(.unexpected("respond")) }
}

/// Type erasure for the simulator, which runs production machines and the bug zoo's wrappers side by side.
public struct AnyPipelineMachine: PipelineMachine {
    public var base: any PipelineMachine
    public init(_ base: any PipelineMachine) { self.base = base }
    public mutating func handle(_ input: Input, now: Instant) -> [Effect] { base.handle(input, now: now) }
}
