import Metrics
import Synchronization

/// The pool's admission metrics, through swift-metrics (the binary bootstraps it to its Prometheus registry):
/// `orderpipeline_db_queue_depth`, `orderpipeline_db_queue_wait_seconds` (a histogram),
/// `orderpipeline_db_rejected_total{reason=queue_full|deadline|stalled}` and `orderpipeline_db_no_answer_total`
/// (statements abandoned at their deadline), each labelled with the pool's name. Also counted here for tests.
public final class PoolMetrics: Sendable {
    /// Why admission refused a job (the `reason` label).
    public enum Rejection: String, Sendable, CaseIterable {
        /// `DB_QUEUE_LIMIT` jobs were already waiting.
        case queueFull = "queue_full"
        /// The job waited in the queue until its deadline.
        case deadline
        /// PostgreSQL recently failed to answer before a deadline: refused without trying.
        case stalled
    }

    /// What admission refused since the pool started.
    public struct Statistics: Sendable, Hashable {
        public var rejectedQueueFull = 0
        public var rejectedDeadline = 0
        public var rejectedStalled = 0
        /// Statements abandoned because PostgreSQL did not answer before the deadline.
        public var noAnswer = 0
        public var rejected: Int { rejectedQueueFull + rejectedDeadline + rejectedStalled }
    }

    private let depthGauge: Gauge
    private let waitTimer: Metrics.Timer
    private let rejections: [Rejection: Counter]
    private let noAnswerCounter: Counter
    private let counts = Mutex(Statistics())

    init(pool: String) {
        depthGauge = Gauge(label: "orderpipeline_db_queue_depth", dimensions: [("pool", pool)])
        waitTimer = Metrics.Timer(label: "orderpipeline_db_queue_wait_seconds", dimensions: [("pool", pool)])
        var rejections: [Rejection: Counter] = [:]
        for reason in Rejection.allCases {
            rejections[reason] = Counter(label: "orderpipeline_db_rejected_total", dimensions: [("pool", pool), ("reason", reason.rawValue)])
        }
        self.rejections = rejections
        noAnswerCounter = Counter(label: "orderpipeline_db_no_answer_total", dimensions: [("pool", pool)])
    }

    func depth(_ depth: Int) { depthGauge.record(depth) }

    func waited(_ wait: Duration, depth: Int) {
        let (seconds, attoseconds) = wait.components
        waitTimer.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        depthGauge.record(depth)
    }

    func rejected(_ reason: Rejection) {
        rejections[reason]?.increment()
        counts.withLock { counts in
            switch reason {
            case .queueFull: counts.rejectedQueueFull += 1
            case .deadline: counts.rejectedDeadline += 1
            case .stalled: counts.rejectedStalled += 1
            }
        }
    }

    func noAnswer() {
        noAnswerCounter.increment()
        counts.withLock { $0.noAnswer += 1 }
    }

    var statistics: Statistics { counts.withLock { $0 } }
}
