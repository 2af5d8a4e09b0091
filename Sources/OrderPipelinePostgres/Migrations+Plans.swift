extension Migrations {
    /// Plans that stay index lookups on tables never analyzed. Until autovacuum's first analyze (up to a minute on a
    /// fresh database) the planner has no statistics for `published_at`, estimates a handful of unsettled rows, and
    /// costs every path over the two partial indexes alike. It then chose the `(sequence)` index for the
    /// head-of-line probe (`sequence < o.sequence`, filter `order_id`: every candidate walked the backlog before it)
    /// and for the settle (all unsettled rows, three times, each matched against the batch): with a 32,000-row
    /// backlog a 500-row claim took 145 ms and a settle 190 ms, the Kafka relay fell to 2,700 rows/s and its
    /// backlog grew. Two changes leave one sensible path whatever the estimates:
    /// - the claim's index also requires `next_attempt_at IS NOT NULL` (always true: the column is NOT NULL), which
    ///   the claim's `next_attempt_at <= now()` implies and the probes do not: the probes can only use
    ///   `(order_id, sequence)`;
    /// - a claim exists only on unsettled rows (the CHECK below), so the settle and the release fence on
    ///   `claimed_by` alone and no longer match the unsettled indexes: the batch's rows by primary key, or the
    ///   owner's few rows by `_claimed_by`.
    static let plans = Migration(
        version: 4, name: "claim index apart from the head-of-line probe; claims only on unsettled rows",
        sql: ["kafka_outbox", "service_bus_outbox"].map { table in
            """
            DROP INDEX \(table)_unsettled;
            CREATE INDEX \(table)_claimable ON \(table) (sequence)
                WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at IS NOT NULL;
            ALTER TABLE \(table) ADD CONSTRAINT \(table)_claimed_unsettled
                CHECK (claimed_by IS NULL OR (published_at IS NULL AND dead_lettered_at IS NULL)) NOT VALID;
            ALTER TABLE \(table) VALIDATE CONSTRAINT \(table)_claimed_unsettled;
            """
        }.joined(separator: "\n"))
}

extension Migrations {
    /// The reconciler's pending orders by an index of their own, oldest first (`SQL.pendingOrdersPage`): its round
    /// read every order before. An order enters it at creation and leaves it at its first status change.
    static let pendingOrders = Migration(
        version: 5, name: "index of pending orders for the reconciler",
        sql: "CREATE INDEX orders_pending ON orders (created_at, id) WHERE status = 'Pending';")
}

extension Migrations {
    /// Claimed rows leave the claim's index. A claim used to walk every row of every batch in flight, its own and
    /// the other relays' (unsettled, claimed, lease running: in `_claimable`, refused by the claim's filter one heap
    /// visit at a time), before the first free row: up to 1,500 rows per 500-row claim with two relays of two
    /// batches each. Now a claim takes only unclaimed rows, and expired leases are taken over apart, about once a
    /// second per relay (`SQL.takeOverExpired`), through `_lease`, the claimed rows by the end of their lease: a scan
    /// up to `now()` visits the expired ones, and the stale entries of rows settled since the last vacuum (which is
    /// why it is not done in every claim: stop 20 tried that, and each claim walked them, docs/ARCHITECTURE.md).
    /// `_claimed_by` could not serve it: with no condition on its column, the planner preferred a sequential scan
    /// of a table it had no statistics for.
    static let claimedRowsApart = Migration(
        version: 6, name: "claimed rows out of the claim index; expired leases by their own index",
        sql: ["kafka_outbox", "service_bus_outbox"].map { table in
            """
            DROP INDEX \(table)_claimable;
            CREATE INDEX \(table)_claimable ON \(table) (sequence)
                WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at IS NOT NULL AND claimed_by IS NULL;
            CREATE INDEX \(table)_lease ON \(table) (claimed_until, sequence) WHERE claimed_by IS NOT NULL;
            """
        }.joined(separator: "\n"))
}
