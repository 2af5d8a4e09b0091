extension Migrations {
    /// Where Kafka appended each published row (the delivery report's partition and offset), for the live page and
    /// order lookups: nullable columns, no table rewrite; rows published before carry none. And the outbox triggers'
    /// NOTIFY can be switched off per session (`orderpipeline.notify=off`): PostgreSQL serialises every notifying
    /// commit on one database-wide lock held through the commit's WAL flush, so at a thousand orders a second the
    /// POSTs and fulfilments queue on it; `all` wakes its relays in-process instead.
    static let relay = Migration(
        version: 3, name: "Kafka positions of published outbox rows; NOTIFY switchable per session",
        sql: """
            ALTER TABLE kafka_outbox ADD COLUMN published_partition int, ADD COLUMN published_offset bigint;
            CREATE OR REPLACE FUNCTION orderpipeline_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF current_setting('orderpipeline.notify', true) IS DISTINCT FROM 'off' AND EXISTS (SELECT 1 FROM inserted) THEN
                    PERFORM pg_notify('orderpipeline_outbox', TG_ARGV[0]);
                END IF;
                RETURN NULL;
            END
            $$;
            """)
}
