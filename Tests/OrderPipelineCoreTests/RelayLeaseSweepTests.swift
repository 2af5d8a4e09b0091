import Testing

@testable import OrderPipelineCore

/// Expired leases are taken over by a claim about once per `leaseSweepInterval`, not by every claim: claimed rows
/// are out of the claim's index, and the walk of the claimed rows that finds the expired ones is paid once per
/// interval (`OutboxClaim.takeOverExpiredLeases`).
@Suite struct RelayLeaseSweepTests {
    static let interval = Duration.seconds(1)

    func relay() -> OutboxRelay {
        var configuration = OutboxRelay.Configuration(outbox: .kafka, owner: "relay-1")
        configuration.batchSize = 10
        configuration.gatherDelay = .zero
        configuration.leaseSweepInterval = Self.interval
        return OutboxRelay(configuration: configuration, seed: 1)
    }

    /// The claims among `effects`: ticket and whether it takes over expired leases.
    func claims(_ effects: [Effect]) -> [(Ticket, Bool)] {
        stores(effects).compactMap { if case .claimOutbox(let claim) = $0.1 { ($0.0, claim.takeOverExpiredLeases) } else { nil } }
    }

    func started(_ relay: inout OutboxRelay, at now: Instant) throws -> (Ticket, Bool) {
        let (release, _) = try #require(stores(relay.handle(.start, now: now)).first)
        return try #require(claims(relay.handle(.stored(release, .committed(.released(rows: 0))), now: now)).first)
    }

    @Test func theFirstClaimTakesOverThenOncePerInterval() throws {
        var relay = relay()
        let (first, takesOver) = try started(&relay, at: t0)
        #expect(takesOver, "a started relay looks for expired leases at once")
        // Empty claims, each followed by a NOTIFY: only the first claim past the interval takes over.
        var claim = first
        var sweeps: [Bool] = []
        for step in 1...6 {
            let now = t0 + .milliseconds(300 * step)
            #expect(relay.handle(.stored(claim, .committed(.claimed([]))), now: now).allSatisfy { !isClaim($0) })
            let next = try #require(claims(relay.handle(.wake, now: now)).first)
            claim = next.0
            sweeps.append(next.1)
        }
        // At 0.3, 0.6, 0.9 s: within the interval; 1.2 s: past it (next due 2.2 s); 1.5, 1.8 s: within.
        #expect(sweeps == [false, false, false, true, false, false])
    }

    @Test func aRestartedRelayTakesOverAtOnceAgain() throws {
        var relay = relay()
        _ = try started(&relay, at: t0)
        let (_, takesOver) = try started(&relay, at: t0 + .milliseconds(100))
        #expect(takesOver)
    }

    func isClaim(_ effect: Effect) -> Bool {
        if case .store(_, .claimOutbox) = effect { true } else { false }
    }
}

extension RelayLeaseSweepTests {
    /// Regression (found by the lab, swarm seed 5072, fixture replay-seed5072-lease-sweep-clock-step.json): the
    /// relay's own claim committed but its answer was lost, so its rows stayed leased to it; its host clock then
    /// stepped back 21 s, and the next take-over waited for that clock to reach the time it had planned, 21 s late.
    @Test func aClockSteppedBackDoesNotPostponeTheTakeOver() throws {
        var relay = relay()
        var (claim, _) = try started(&relay, at: t0 + .seconds(30))
        _ = relay.handle(.stored(claim, .committed(.claimed([]))), now: t0 + .seconds(30))
        // The clock steps back 21 s: the next claim still takes over.
        let next = try #require(claims(relay.handle(.wake, now: t0 + .seconds(9))).first)
        #expect(next.1)
        claim = next.0
        _ = relay.handle(.stored(claim, .committed(.claimed([]))), now: t0 + .seconds(9))
        // And the interval counts from there, on the new clock.
        #expect(try #require(claims(relay.handle(.wake, now: t0 + .seconds(9) + .milliseconds(500))).first).1 == false)
    }
}
