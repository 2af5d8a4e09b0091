import OrderPipelinePostgres

/// A database clock the differential suite sets, so that PostgreSQL's `now()` is exactly the model's `now` at
/// every step: leases and due times are then compared without any real time passing in between (no race with the
/// wall clock, nothing to normalise).
///
/// The recipes call unqualified `now()`. A test schema gets its own `now()`, reading a one-row table, and its
/// connections list `pg_catalog` explicitly *after* the schema in `search_path`, so the schema's function is found
/// first (PostgreSQL searches `pg_catalog` first only when the path does not name it). Only the differential
/// suite's scratch schemas have this; `Sources/` never sees it.
enum DatabaseClock {
    /// The `search_path` (given as `Settings.schema`, which the adapter passes to `-c search_path=`) that puts the
    /// schema's `now()` before `pg_catalog.now()`.
    static func searchPath(_ schema: String) -> String { "\(schema),pg_catalog" }

    /// Creates the clock table and the schema's `now()`, and proves that this connection's `now()` is that one.
    static func install(schema: String, on c: PostgresConnection) throws(PostgresError) {
        try c.execute(
            script: """
                CREATE TABLE \(schema).differential_clock (at timestamptz NOT NULL);
                INSERT INTO \(schema).differential_clock VALUES (timestamptz 'epoch');
                CREATE FUNCTION \(schema).now() RETURNS timestamptz LANGUAGE sql STABLE
                    AS 'SELECT at FROM \(schema).differential_clock';
                """)
        try set(12_345, c)
        let read = try c.query("SELECT (extract(epoch from now()) * 1000000)::int8").int(0, 0)
        guard read == Step.instant(12_345).microseconds else {
            throw PostgresError(code: .protocolViolation, message: "now() does not read the test clock (search_path \(searchPath(schema)))")
        }
        try reset(c)
    }

    /// Sets `now()` to `Step.instant(micros)` for every connection of the schema (its own transaction).
    static func set(_ micros: Int64, _ c: PostgresConnection) throws(PostgresError) {
        _ = try c.query(
            "UPDATE differential_clock SET at = timestamptz 'epoch' + $1::int8 * interval '1 microsecond'",
            [.int(Step.instant(micros).microseconds)])
    }

    /// Where a sequence starts (the model's clock starts there too: `Differential.runModel`).
    static func reset(_ c: PostgresConnection) throws(PostgresError) { try set(0, c) }
}
