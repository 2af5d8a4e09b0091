import Foundation
import Logging

/// What the tests read from their environment. `scripts/services env` sets the services' addresses; a suite whose
/// service is not set is skipped (`.enabled(if:)`), so a plain `swift test` needs none of them.
public enum TestEnvironment {
    public static let variables = ProcessInfo.processInfo.environment

    /// The variable's value; nil when it is unset or empty.
    public static func value(_ name: String) -> String? {
        guard let value = variables[name], !value.isEmpty else { return nil }
        return value
    }

    /// A logger for the code under test: warnings and errors only, so that a failing test's output shows why.
    public static func logger(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = .warning
        return logger
    }
}

/// A test's own error: says what did not happen.
public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Runs `body` with `fixture` and always tears the fixture down, also when `body` throws.
public func withTearDown<Fixture>(
    _ fixture: Fixture, tearDown: (Fixture) async -> Void, _ body: (Fixture) async throws -> Void
) async throws {
    do {
        try await body(fixture)
    } catch {
        await tearDown(fixture)
        throw error
    }
    await tearDown(fixture)
}
