import OrderPipelineCore
import Testing

@testable import OrderPipelinePostgres

@Suite("PostgreSQL: text[] literals", .enabled(if: TestDatabase.isConfigured, "DATABASE_URL is not set"), .timeLimit(.minutes(5)))
struct ArrayLiteralTests {
    @Test("quotes, backslashes, commas, braces, non-ASCII and empty elements come back as they went in; NUL is dropped")
    func roundTrip() throws {
        let elements = ["plain", "a \"quoted\" word", "back\\slash", "{braces},commas", "NULL", "", "é ü 注文 🚚", "x\u{0}y"]
        let connection = PostgresConnection(settings: PostgresConnection.Settings(url: TestDatabase.url!))
        defer { connection.close() }
        try connection.connect()
        let rows = try connection.query("SELECT e FROM unnest($1::text[]) WITH ORDINALITY AS a(e, n) ORDER BY n", [.text(SQL.arrayLiteral(elements))])
        #expect((0..<rows.count).map { rows.string($0, 0) } == elements.map { $0.replacingOccurrences(of: "\u{0}", with: "") })
    }
}
