import OrderPipelineCore
import Testing

@Suite struct BlockingQueueTests {
    /// Something whose release can be seen from outside.
    final class Tracked: Sendable {}

    @Test("an item taken out is no longer held by the queue (a PostgreSQL job held its batch of orders for a thousand more jobs)")
    func takenItemsAreReleased() {
        let queue = BlockingQueue<Tracked>()
        weak var popped: Tracked?
        weak var drained: Tracked?
        do {
            let first = Tracked()
            let second = Tracked()
            popped = first
            drained = second
            queue.push(first)
            queue.push(second)
            queue.push(Tracked())
        }
        #expect(popped != nil && drained != nil, "queued items are held until taken")
        _ = queue.pop()
        #expect(popped == nil)
        #expect(drained != nil)
        _ = queue.popHead { _ in true }
        #expect(drained == nil)
        #expect(queue.depth == 0)
    }

    @Test("FIFO across compactions, with the head read in place")
    func orderAcrossCompactions() {
        let queue = BlockingQueue<Int>(limit: 3_000)
        var next = 0
        var expected = 0
        for round in 0..<5 {
            for _ in 0..<(700 + round * 300) {
                queue.push(next)
                next += 1
            }
            #expect(queue.peekHead { $0 } == expected)
            while queue.depth > 2, let item = queue.pop() {
                #expect(item == expected)
                expected += 1
            }
        }
        #expect(queue.popHead { $0 < expected + 1 } == [expected])
        #expect(queue.depth == 1)
    }
}
