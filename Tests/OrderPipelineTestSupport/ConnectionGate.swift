import Foundation
import OrderPipelinePostgres

/// The whole test run shares PostgreSQL's connections (100 by default) and the PostgreSQL suites alone reach ~96
/// while their tests run in parallel, so tests that need many connections of their own wait, once per test process,
/// until those are done: sessions named `test_…` (PostgresUnderTest names its sessions after its schema) were seen
/// and are gone, with at most 30 client sessions in all, for 3 polls in a row (1 s apart) — or none was seen within
/// 20 s (a filtered run). At most 180 s, then go on. Each poll is a connection of its own, closed at once.
public enum ConnectionGate {
    static let once = Task {
        guard let url = TestEnvironment.value("DATABASE_URL") else { return }
        let start = Date()
        var seen = false
        var calm = 0
        while Date() < start.addingTimeInterval(180) {
            let connection = PostgresConnection(settings: .init(url: url))
            var tests: Int64 = -1
            var total: Int64 = 100
            if (try? connection.connect()) != nil,
                let rows = try? connection.query(
                    """
                    SELECT count(*) FILTER (WHERE application_name LIKE 'test\\_%'), count(*)
                    FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                    """)
            {
                tests = rows.int(0, 0) ?? -1
                total = rows.int(0, 1) ?? 100
            }
            connection.close()
            if tests > 0 { seen = true }
            calm = tests == 0 && total <= 30 ? calm + 1 : 0
            if calm >= 3, seen || Date() > start.addingTimeInterval(20) { return }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Returns once PostgreSQL's connections are free enough (see above); at once after the first call finished.
    public static func wait() async { await once.value }
}
