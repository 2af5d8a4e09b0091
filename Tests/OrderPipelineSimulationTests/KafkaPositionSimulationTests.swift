import OrderPipelineCore
import OrderPipelineSimulation
import Testing

/// The Kafka model reports where it appended each record, the relay carries that into its settlement, and the
/// PostgreSQL model stores it: every published row's position holds its own event, whatever the faults did.
@Suite struct KafkaPositionSimulationTests {
    @Test func everyStoredPositionHoldsItsRowsEvent() {
        var checked = 0
        for seed in UInt64(1)...30 {
            let world = World(options: options(seed: seed, orders: 60))
            world.run()
            for row in world.database.kafkaOutbox.rows where row.publishedAt != nil {
                guard let position = row.publishedPosition else { continue }
                let partition = world.kafka.partitions[Int(position.partition)]
                guard position.offset < partition.count else {
                    Issue.record("seed \(seed): row #\(row.sequence) stored \(position), past the partition's end")
                    continue
                }
                #expect(partition[Int(position.offset)].event?.id == row.event.id, "seed \(seed): row #\(row.sequence) at \(position)")
                checked += 1
            }
        }
        #expect(checked > 1_000, "positions were reported and stored (\(checked))")
    }
}
