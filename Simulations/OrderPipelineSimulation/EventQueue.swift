import OrderPipelineCore

/// The simulator's agenda: a binary min-heap ordered by (time, sequence). The sequence number makes ties
/// deterministic: two events at the same instant run in the order they were scheduled.
///
/// The heap holds only small keys; payloads (large enums) sit in a slot array and are moved, never copied, so
/// sifting costs no reference counting.
struct EventQueue<Payload> {
    private struct Key {
        var time: Int64
        var sequence: UInt64
        var slot: Int32
        @inline(__always) func precedes(_ other: Key) -> Bool {
            time != other.time ? time < other.time : sequence < other.sequence
        }
    }

    private var heap: [Key] = []
    private var slots: [Payload?] = []
    private var freeSlots: [Int32] = []
    private var nextSequence: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    /// `consuming`: the caller's payload is moved in, not copied and released.
    mutating func schedule(at time: Int64, _ payload: consuming Payload) {
        nextSequence += 1
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
            slots[Int(free)] = payload
        } else {
            slot = Int32(slots.count)
            slots.append(payload)
        }
        heap.append(Key(time: time, sequence: nextSequence, slot: slot))
        var child = heap.count - 1
        let key = heap[child]
        while child > 0 {
            let parent = (child - 1) / 2
            guard key.precedes(heap[parent]) else { break }
            heap[child] = heap[parent]
            child = parent
        }
        heap[child] = key
    }

    mutating func pop() -> (time: Int64, payload: Payload)? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            var parent = 0
            while true {
                let left = 2 * parent + 1
                guard left < heap.count else { break }
                let right = left + 1
                let smaller = right < heap.count && heap[right].precedes(heap[left]) ? right : left
                guard heap[smaller].precedes(last) else { break }
                heap[parent] = heap[smaller]
                parent = smaller
            }
            heap[parent] = last
        }
        let payload = slots[Int(top.slot)].take()!
        freeSlots.append(top.slot)
        return (top.time, payload)
    }
}
