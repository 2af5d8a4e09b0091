/// The effect vocabulary shared by the four state machines.
///
/// A machine is driven by one call, `handle(_ input: Input, now:) -> [Effect]`. It never performs I/O: a shell
/// performs each effect and feeds the result back as an input carrying the same `Ticket`. In production the shells
/// use PostgreSQL, Kafka and Service Bus; in the simulator one seeded event loop plays them all.

/// Correlates an effect with its result; unique per machine instance.
public struct Ticket: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public static func < (lhs: Ticket, rhs: Ticket) -> Bool { lhs.raw < rhs.raw }
    public var description: String { "#\(raw)" }
}

/// Correlates an API request with its response; chosen by the shell.
public typealias RequestID = UInt64

/// The machines' timers. Each machine has at most one timer of each kind pending; setting it again moves it.
public enum TimerID: String, Hashable, Sendable {
    /// Relay: look for rows again (fallback for a missed NOTIFY) or after a backoff.
    case poll
    /// Any machine: re-issue an effect that failed, after its backoff.
    case retry
    /// Relay under load: the end of the short wait that lets a claim take the rows of several orders at once.
    case gather
    /// Consumer: the next offset commit is due (`FulfilmentConsumer.Configuration.commitInterval`).
    case commit
}

/// Where a message goes. The adapters map channels to names (`KAFKA_TOPIC`, its dead-letter topic, `SERVICEBUS_QUEUE`).
public enum Channel: String, Hashable, Sendable {
    /// The Kafka topic of order events; key = order id, headers `event-id` and `event-type`.
    case orders
    /// The Kafka dead-letter topic for poison records.
    case deadLetters = "dead-letters"
    /// The Service Bus queue of fulfilment events; MessageId = event id, Subject = event type.
    case fulfilment
}

public enum PublishOutcome: Hashable, Sendable {
    /// The broker acknowledged it (Service Bus `accepted`; a Kafka delivery report that names no position).
    case delivered
    /// Kafka acknowledged it and says where it is: the delivery report's partition and offset.
    case appended(RecordPosition)
    /// The broker refused it. Retriable failures (down, throttled, queue full) are retried forever with backoff;
    /// permanent ones (too large, rejected) dead-letter the row.
    case failed(retriable: Bool, reason: String)
    /// No answer in time: the broker may have taken it. Treated like a retriable failure; re-sent copies carry the
    /// same event id and are removed downstream.
    case unknown(String)
    /// The broker answered with a refusal and its condition (an AMQP `rejected` disposition's error condition).
    /// The adapter does not judge it: the relay classifies it (`Refusal.isTransient`).
    case refused(condition: String, description: String)
    /// Not delivered (or not known to be), and the publisher's session can send nothing more: a Kafka producer
    /// fenced (`PRODUCER_FENCED`), fatally failed, or an idempotent session that timed out. The adapter only reports
    /// it; the relay retries the row and resets the publisher (`.resetPublisher`) before its next publish.
    case sessionUnusable(String)
}

/// Where Kafka appended a record: `partition 2, offset 117`.
public struct RecordPosition: Hashable, Sendable, CustomStringConvertible {
    public var partition: Int32
    public var offset: Int64
    public init(partition: Int32, offset: Int64) {
        self.partition = partition
        self.offset = offset
    }
    public var description: String { "partition \(partition), offset \(offset)" }
}

extension PublishOutcome {
    /// The broker has it (with or without a position).
    public var isDelivered: Bool {
        switch self {
        case .delivered, .appended: true
        case .failed, .unknown, .refused, .sessionUnusable: false
        }
    }

    public var isSessionUnusable: Bool {
        if case .sessionUnusable = self { true } else { false }
    }
}

/// How a relay judges a broker's refusal (AMQP error conditions, and Kafka error names as `kafka:<NAME>`).
/// Azure Service Bus refuses for reasons that pass — the service is busy, a
/// quota is momentarily exceeded, a token expired and is being refreshed, an internal error or timeout — and for
/// reasons that do not — the message is too large, the entity does not exist or is disabled, the operation is not
/// allowed. Only the second kind dead-letters a row; an unknown condition is retried (a row parked by mistake
/// would need a manual replay, possibly outside the duplicate-detection window).
public enum Refusal {
    public static let permanentConditions: [String] = [
        "amqp:link:message-size-exceeded", "amqp:not-allowed", "amqp:not-found", "amqp:decode-error",
        "amqp:invalid-field", "amqp:not-implemented", "com.microsoft:entity-disabled", "com.microsoft:message-lock-lost",
        // Kafka: the record itself is unacceptable; everything else (leader moves, not enough replicas, throttling,
        // an ACL being fixed) passes.
        "kafka:MSG_SIZE_TOO_LARGE", "kafka:INVALID_RECORD", "kafka:RECORD_LIST_TOO_LARGE", "kafka:INVALID_MSG_SIZE",
    ]

    public static func isTransient(_ condition: String) -> Bool { !permanentConditions.contains(condition) }
}

/// A record as the consumer receives it from Kafka.
public struct ConsumedRecord: Hashable, Sendable {
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    public var headers: [Header]
    public var value: [UInt8]

    public struct Header: Hashable, Sendable {
        public var name: String
        public var value: [UInt8]
        public init(name: String, value: [UInt8]) {
            self.name = name
            self.value = value
        }
    }

    public init(partition: Int32, offset: Int64, key: [UInt8]?, headers: [Header], value: [UInt8]) {
        self.partition = partition
        self.offset = offset
        self.key = key
        self.headers = headers
        self.value = value
    }

    /// `orders/2@117`: where the record came from, unique within a topic.
    public func source(topic: String) -> String { "\(topic)/\(partition)@\(offset)" }
}

/// The next offset to read of one partition, as committed to the consumer group.
public struct PartitionOffset: Hashable, Sendable {
    public var partition: Int32
    public var offset: Int64
    public init(partition: Int32, offset: Int64) {
        self.partition = partition
        self.offset = offset
    }
}

public enum CommitOutcome: Hashable, Sendable {
    case committed
    /// The group moved on (a rebalance fenced this member's generation): nothing was committed.
    case rebalanced
    case failed(String)
}

public enum Input: Hashable, Sendable {
    /// The machine (re)starts from durable state.
    case start
    case timer(TimerID)
    /// A NOTIFY arrived: there may be new outbox rows.
    case wake
    case stored(Ticket, StoreResult)
    /// One outcome per message, in the order they were handed over.
    case published(Ticket, [PublishOutcome])
    case fetched(Ticket, [ConsumedRecord])
    /// The consumer group gave this member `partitions` in `generation` (an empty list revokes everything).
    case assigned(generation: Int64, partitions: [Int32])
    case offsetsCommitted(Ticket, CommitOutcome)
    /// `POST /api/orders`: the raw body, the optional Idempotency-Key, a fresh id the shell drew for the order, and
    /// the request's trace (`TraceParent.forRequest`), which the order's events carry from then on.
    case createOrder(RequestID, body: [UInt8], idempotencyKey: String?, newOrderID: OrderID, trace: TraceParent? = nil)
    /// `PATCH /api/orders/{id}/status`: the raw body (`StatusChangeRequest`) and the request's trace.
    case changeStatus(RequestID, OrderID, body: [UInt8], trace: TraceParent? = nil)
}

public enum Effect: Hashable, Sendable {
    case store(Ticket, StoreCommand)
    /// Send messages to a channel; answer with `.published` (one outcome per message, same order).
    case publish(Ticket, Channel, [OutboxMessage])
    /// Copy a poison record, as it was, to the dead-letter topic; answer with `.published` (one outcome).
    case forwardDeadLetter(Ticket, ConsumedRecord, reason: String)
    /// Ask for up to `max` records of the assigned partitions; answer with `.fetched` (possibly empty after a wait).
    case fetch(Ticket, max: Int)
    case commitOffsets(Ticket, [PartitionOffset], generation: Int64)
    /// Replace the channel's publisher session (a new Kafka producer) before the next publish: the last one reported
    /// `.sessionUnusable`. Done at once, in order with the effects around it; no answer.
    case resetPublisher(Channel)
    case setTimer(TimerID, at: Instant)
    case cancelTimer(TimerID)
    case respond(RequestID, IntakeResponse)
    /// Something worth a log line and a metric; changes nothing.
    case note(Note)
}

/// What the API answers (the HTTP shell maps these to status codes and problem+json bodies).
public enum IntakeResponse: Hashable, Sendable {
    case created(Order)
    case replayed(Order)
    case statusChanged(Order)
    case rejected(RequestError)
    case idempotencyKeyReused
    case notFound(OrderID)
    case illegalTransition(OrderID, from: OrderStatus, to: OrderStatus)
    case unavailable(String)
}

/// Observable moments, for logs, metrics and the simulator's coverage.
public enum Note: Hashable, Sendable {
    case orderAccepted(OrderID, replayed: Bool)
    case published(Channel, OutboxMessage)
    case publishRetry(Channel, sequence: Int64, reason: String)
    case deadLettered(Channel, sequence: Int64, reason: String)
    case leaseLost(OutboxKind, rows: Int)
    case consumed(ConsumedRecord)
    case fulfilled(OrderID)
    case redeliveryDeduplicated(EventID)
    case skipped(OrderID, OrderStatus)
    case poison(ConsumedRecord, reason: String)
    /// A poison record is in the dead-letters table but its copy to the dead-letter topic failed every attempt.
    case deadLetterCopySkipped(ConsumedRecord, reason: String)
    case storeRetry(String)
    case unknownOutcome(String)
    /// A request was refused at once, nothing written: too many were already waiting for the database.
    case requestShed(String)
    case offsetsFenced
    /// The reconciler found orders published but not fulfilled in time and sent their event again.
    case reannounced([OrderID])
    /// A branch the design says cannot be taken was taken: a violation in the simulator, an error in production.
    case unexpected(String)
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random, capped.
public struct Backoff: Hashable, Sendable {
    public var base: Duration
    public var cap: Duration

    public init(base: Duration = .milliseconds(50), cap: Duration = .seconds(10)) {
        self.base = base
        self.cap = cap
    }

    /// The delay before attempt `attempt + 1` (attempt counts from 1).
    public func delay(attempt: Int, using random: inout SplitMix64) -> Duration {
        let exponent = min(max(attempt - 1, 0), 30)
        let full = min(base.microseconds << Int64(exponent), cap.microseconds)
        let half = full / 2
        return .microseconds(half + Int64(random.below(UInt64(max(half, 1)))))
    }
}

/// What every state machine is: inputs in, effects out, nothing else. Shells (production and simulated) drive any
/// machine through this one method.
public protocol PipelineMachine: Sendable {
    mutating func handle(_ input: Input, now: Instant) -> [Effect]
}

extension OrderIntake: PipelineMachine {}
extension OutboxRelay: PipelineMachine {}
extension FulfilmentConsumer: PipelineMachine {}
extension Reconciler: PipelineMachine {}
