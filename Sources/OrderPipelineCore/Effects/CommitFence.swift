extension CommitOutcome {
    /// The consumer group's fence on an offset commit, one rule for the Kafka adapter and the simulator's group
    /// model: a commit made for a generation other than the member's current one (a rebalance came in between), or
    /// naming a partition the member does not own in it, commits nothing and answers `.rebalanced`. Nil: commit.
    public static func fence(_ offsets: [PartitionOffset], generation claimed: Int64, current: Int64, owns: (Int32) -> Bool) -> CommitOutcome? {
        claimed == current && offsets.allSatisfy { owns($0.partition) } ? nil : .rebalanced
    }
}
