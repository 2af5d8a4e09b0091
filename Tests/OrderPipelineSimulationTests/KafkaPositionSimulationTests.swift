import OrderPipelineCore
import OrderPipelineSimulation
import OrderPipelineTestSupport
import Testing

/// The Kafka model reports where it appended each record, the relay carries that into its settlement, and the
/// PostgreSQL model stores it: every published row's position holds its own event, whatever the faults did.
@Suite struct KafkaPositionSimulationTests {
    @Test func everyStoredPositionHoldsItsRowsEvent() async {
        var checked = 0
        for seed in UInt64(1)...30 {
            // The world stays on its own thread (`compute`); what it found comes back.
            let (count, mismatches) = await compute { () -> (Int, [String]) in
                let world = World(options: options(seed: seed, orders: 60))
                world.run()
                var count = 0
                var mismatches: [String] = []
                for row in world.database.kafkaOutbox.rows where row.publishedAt != nil {
                    guard let position = row.publishedPosition else { continue }
                    let partition = world.kafka.partitions[Int(position.partition)]
                    if position.offset >= partition.count {
                        mismatches.append("seed \(seed): row #\(row.sequence) stored \(position), past the partition's end")
                    } else if partition[Int(position.offset)].event?.id != row.event.id {
                        mismatches.append("seed \(seed): row #\(row.sequence) at \(position) holds another event")
                    } else {
                        count += 1
                    }
                }
                return (count, mismatches)
            }
            #expect(mismatches.isEmpty, "\(mismatches.prefix(3))")
            checked += count
        }
        #expect(checked > 1_000, "positions were reported and stored (\(checked))")
    }
}
