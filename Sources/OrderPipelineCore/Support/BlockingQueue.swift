import Foundation

/// A FIFO handing work to dedicated threads (a PostgreSQL connection's, the Kafka commit thread): `pop` blocks
/// while it is empty. The adapters' one blocking queue; it lives here because every adapter depends on the core.
/// Nothing in a machine or the simulator uses it.
///
/// Optionally bounded: past `limit` waiting items `push` refuses at once instead of blocking the caller.
public final class BlockingQueue<Element: Sendable>: @unchecked Sendable {  // every field is guarded by `condition`
    /// What `push` did with an item.
    public enum Admission: Sendable { case queued, full, closed }

    private let condition = NSCondition()
    /// Taken items leave a nil behind until the next compaction: a slot kept holding its item held a PostgreSQL job
    /// (its closure, with a batch of orders and their events) alive for up to a thousand more jobs.
    private var items: [Element?] = []
    private var head = 0
    private var closed = false
    /// Items that may wait at once; nil: unbounded.
    public let limit: Int?

    public init(limit: Int? = nil) { self.limit = limit }

    /// Appends `item` unless the queue is closed or full; wakes one waiting `pop`.
    @discardableResult
    public func push(_ item: Element) -> Admission {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return .closed }
        if let limit, items.count - head >= limit { return .full }
        items.append(item)
        condition.signal()
        return .queued
    }

    /// The next item; blocks while the queue is empty; nil once it is closed and drained.
    public func pop() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while head == items.count && !closed { condition.wait() }
        return takeHead()
    }

    /// Takes out the items at the head for which `take` holds, stopping at the first for which it does not.
    public func popHead(while take: (Element) -> Bool) -> [Element] {
        condition.lock()
        defer { condition.unlock() }
        var out: [Element] = []
        while head < items.count, let next = items[head], take(next), let item = takeHead() { out.append(item) }
        return out
    }

    /// Reads the oldest waiting item without taking it out; nil when none waits.
    public func peekHead<T>(_ read: (Element) -> T) -> T? {
        condition.lock()
        defer { condition.unlock() }
        return head < items.count ? items[head].map(read) : nil
    }

    /// Items waiting.
    public var depth: Int {
        condition.lock()
        defer { condition.unlock() }
        return items.count - head
    }

    /// Refuses further items and wakes every waiting `pop`; what is queued is still handed out.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    // Called with the lock held. A moving head keeps `pop` O(1); the array is compacted now and then.
    private func takeHead() -> Element? {
        guard head < items.count else { return nil }
        let item = items[head]
        items[head] = nil
        head += 1
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return item
    }
}
