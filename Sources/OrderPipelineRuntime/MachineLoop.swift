import OrderPipelineCore
import OrderPipelineKafka
import OrderPipelinePostgres
import OrderPipelineServiceBus
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The wall clock as the machines see it: microseconds since the Unix epoch.
public enum WallClock {
    public static func now() -> Instant {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Instant(microseconds: Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1_000)
    }
}

// MARK: - Performer families

/// Performs store commands: the PostgreSQL adapter in production, fakes in tests.
public protocol StorePerforming: Sendable {
    func perform(_ command: StoreCommand) async -> StoreResult
    /// Performs `command` and hands its result to `completion`, on whatever thread finished it: the shells feed it
    /// straight to their machine. PostgreSQL calls it on the connection's thread; the default awaits `perform` in a
    /// task of its own, which costs two more thread switches.
    func perform(_ command: StoreCommand, then completion: @escaping @Sendable (StoreResult) -> Void)
}

extension StorePerforming {
    public func perform(_ command: StoreCommand, then completion: @escaping @Sendable (StoreResult) -> Void) {
        Task { completion(await perform(command)) }
    }
}

/// Sends a relay's batch to its broker; one outcome per message.
public protocol OutboxPublishing: Sendable {
    func publish(_ messages: [OutboxMessage]) async -> [PublishOutcome]
    /// Replaces the session that reported `.sessionUnusable` (the machine's `.resetPublisher`). Synchronous and
    /// quick: publishes started after it returns use the new session.
    func reset()
}

/// Copies a poison record to the dead-letter topic.
public protocol DeadLetterForwarding: Sendable {
    func forward(_ record: ConsumedRecord, reason: String) async -> PublishOutcome
    /// As `OutboxPublishing.reset()`, for the dead-letter producer.
    func reset()
}

/// A consumer-group member: answers fetches and commits, and reports assignments, through the loop's `deliver`.
public protocol GroupConsuming: Sendable {
    func fetch(_ ticket: Ticket, max: Int)
    func commit(_ ticket: Ticket, _ offsets: [PartitionOffset], generation: Int64)
}

extension PostgresStore: StorePerforming {}
extension KafkaProducer: OutboxPublishing, DeadLetterForwarding {}
extension ServiceBusSender: OutboxPublishing {
    /// Nothing to do: the AMQP engine reconnects a lost connection by itself, and no Service Bus send answers
    /// `.sessionUnusable`, so the relay never asks.
    public func reset() {}
}
extension KafkaConsumer: GroupConsuming {}

/// The adapters a machine's effects go to; a role leaves out the families it never uses.
public struct Performers: Sendable {
    public var store: (any StorePerforming)?
    public var publisher: (any OutboxPublishing)?
    public var deadLetters: (any DeadLetterForwarding)?
    public var group: (any GroupConsuming)?

    public init(
        store: (any StorePerforming)? = nil, publisher: (any OutboxPublishing)? = nil, deadLetters: (any DeadLetterForwarding)? = nil,
        group: (any GroupConsuming)? = nil
    ) {
        self.store = store
        self.publisher = publisher
        self.deadLetters = deadLetters
        self.group = group
    }
}

// MARK: - The loop

/// The production shell of a long-running machine (relays, consumer): one task feeds the `MachineRunner` its
/// inputs one at a time, and every effect that waits on I/O comes back as an input, in whatever order the results
/// complete: store calls straight from the connection's thread, the others from child tasks. Graceful shutdown ends
/// the input stream, cancels the timers and waits for the child tasks in flight (store calls finish in the pool).
public final class MachineLoop: Sendable {
    enum Event: Sendable {
        case input(Input)
        case timer(TimerID, token: UInt64)
    }

    private let events: AsyncStream<Event>
    private let continuation: AsyncStream<Event>.Continuation
    /// Last turn and requests awaited, for `/health/live` (the loop is listed in `Liveness.shared` while it runs).
    public let progress = LoopProgress()
    private let name: String

    public init(name: String = "machine") {
        self.name = name
        (events, continuation) = AsyncStream.makeStream(of: Event.self)
    }

    /// An input from outside the machine's own effects: a NOTIFY, the consumer group (assignments, fetches,
    /// commits). Safe from any thread.
    public func deliver(_ input: Input) { continuation.yield(.input(input)) }

    /// Runs `machine` from `.start` until graceful shutdown (or `stop()`).
    public func run<Machine: PipelineMachine>(
        _ machine: Machine, performers: Performers, observer: NoteObserver, clock: @escaping @Sendable () -> Instant = WallClock.now
    ) async {
        var runner = MachineRunner(machine)
        let continuation = self.continuation
        var live = LivePerformers(performers: performers, observer: observer, clock: clock, progress: progress) { continuation.yield($0) }
        let progress = self.progress
        Liveness.shared.register(name, progress)
        defer { Liveness.shared.unregister(progress) }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                func launch() {
                    for job in live.jobs { group.addTask { if let event = await job() { continuation.yield(event) } } }
                    live.jobs.removeAll()
                }
                runner.handle(.start, now: clock(), performers: &live)
                progress.turned(after: nil)
                launch()
                for await event in events {
                    switch event {
                    case .input(let input):
                        runner.handle(input, now: clock(), performers: &live)
                        progress.turned(after: input)
                    case let .timer(id, token):
                        runner.timerFired(id, token: token, now: clock(), performers: &live)
                        progress.turned(after: nil)
                    }
                    launch()
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            continuation.finish()
        }
    }

    /// Ends `run` (tests, and services that stop on their own).
    public func stop() { continuation.finish() }
}

/// The production performers: each effect that waits on I/O becomes a job for a child task of the loop, except
/// store calls, whose results the connection's thread hands straight to the loop (`deliver`).
struct LivePerformers: EffectPerformers {
    typealias Job = @Sendable () async -> MachineLoop.Event?
    let performers: Performers
    let observer: NoteObserver
    let clock: @Sendable () -> Instant
    let progress: LoopProgress
    let deliver: @Sendable (MachineLoop.Event) -> Void
    var jobs: [Job] = []

    /// Not a child task: a store call already ends on a connection's thread, and the task would add a thread switch
    /// at each end. Graceful shutdown does not wait for it; the pool finishes its queued work when it closes.
    mutating func store(_ command: StoreCommand, ticket: Ticket) {
        guard let store = performers.store else { return observe(.unexpected("store \(command.name): no store")) }
        progress.requested()
        let deliver = self.deliver
        store.perform(command) { deliver(.input(.stored(ticket, $0))) }
    }

    mutating func publish(_ messages: [OutboxMessage], to channel: Channel, ticket: Ticket) {
        guard let publisher = performers.publisher else { return observe(.unexpected("publish to \(channel.rawValue): no publisher")) }
        progress.requested()
        jobs.append { .input(.published(ticket, await publisher.publish(messages))) }
    }

    /// Done at once, on the loop: the publish the machine emitted right after it starts on the new session.
    mutating func resetPublisher(_ channel: Channel) {
        switch channel {
        case .deadLetters:
            guard let deadLetters = performers.deadLetters else { return observe(.unexpected("resetPublisher: no producer")) }
            deadLetters.reset()
        case .orders, .fulfilment:
            guard let publisher = performers.publisher else { return observe(.unexpected("resetPublisher: no publisher")) }
            publisher.reset()
        }
    }

    mutating func forwardDeadLetter(_ record: ConsumedRecord, reason: String, ticket: Ticket) {
        guard let deadLetters = performers.deadLetters else { return observe(.unexpected("forwardDeadLetter: no producer")) }
        progress.requested()
        jobs.append { .input(.published(ticket, [await deadLetters.forward(record, reason: reason)])) }
    }

    mutating func fetch(max: Int, ticket: Ticket) {
        guard let group = performers.group else { return observe(.unexpected("fetch: no consumer")) }
        progress.requested()
        group.fetch(ticket, max: max)
    }

    mutating func commit(_ offsets: [PartitionOffset], generation: Int64, ticket: Ticket) {
        guard let group = performers.group else { return observe(.unexpected("commitOffsets: no consumer")) }
        progress.requested()
        group.commit(ticket, offsets, generation: generation)
    }

    mutating func setTimer(_ id: TimerID, at: Instant, token: UInt64) {
        let delay = at - clock()
        jobs.append {
            if delay > .zero {
                do { try await Task.sleep(for: delay) } catch { return nil }  // cancelled: the loop is stopping
            }
            return .timer(id, token: token)
        }
    }

    mutating func observe(_ note: Note) { observer.observe(note) }
}
