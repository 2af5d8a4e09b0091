import Testing

@testable import OrderPipelineCore

/// Under load the relay gathers: when its latest claim found several rows (but not a full batch), the next claim
/// waits `gatherDelay` so that it takes more rows at once. At a low rate, and in a backlog, it claims at once.
@Suite struct RelayGatherTests {
    static let delay = Duration.milliseconds(5)

    func started(gatherDelay: Duration = delay) throws -> (OutboxRelay, Ticket) {
        var configuration = OutboxRelay.Configuration(outbox: .kafka, owner: "relay-1")
        configuration.batchSize = 10
        configuration.gatherAfterRows = 4
        configuration.gatherDelay = gatherDelay
        var relay = OutboxRelay(configuration: configuration, seed: 1)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let (claim, _) = try #require(stores(relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0)).first)
        return (relay, claim)
    }

    func rows(_ sequences: ClosedRange<Int64>) -> [OutboxMessage] {
        sequences.map { row($0, OrderID(UUID128(high: 2, low: UInt64($0)))) }
    }

    func claims(_ effects: [Effect]) -> [Ticket] {
        stores(effects).compactMap { if case .claimOutbox = $0.1 { $0.0 } else { nil } }
    }

    func publishes(_ effects: [Effect]) -> [Ticket] {
        effects.compactMap { if case .publish(let ticket, _, _) = $0 { ticket } else { nil } }
    }

    /// Answers `claim` with `rows`, publishes them and settles them; returns the effects of the settle's reply.
    func complete(_ relay: inout OutboxRelay, claim: Ticket, _ claimed: [OutboxMessage], now: Instant = t0) throws -> [Effect] {
        let effects = relay.handle(.stored(claim, .committed(.claimed(claimed))), now: now)
        let publish = try #require(publishes(effects).first)
        let outcomes = Array(repeating: PublishOutcome.delivered, count: claimed.count)
        let (settle, _) = try #require(stores(relay.handle(.published(publish, outcomes), now: now)).first)
        return relay.handle(.stored(settle, .committed(.settled(rows: claimed.count))), now: now)
    }

    @Test func afterAClaimOfSeveralRowsANotifyWaitsForTheGatherTimerThenClaims() throws {
        var (relay, claim) = try started()
        let first = relay.handle(.stored(claim, .committed(.claimed(rows(1...4)))), now: t0)
        #expect(publishes(first).count == 1 && claims(first).isEmpty)
        let woken = relay.handle(.wake, now: t0 + .milliseconds(1))
        #expect(woken == [.setTimer(.gather, at: t0 + .milliseconds(1) + Self.delay)], "under load: gather instead of claiming")
        #expect(relay.handle(.wake, now: t0 + .milliseconds(2)).isEmpty, "more NOTIFYs join the same wait")
        #expect(!relay.isIdle)
        let fired = relay.handle(.timer(.gather), now: t0 + .milliseconds(6))
        #expect(claims(fired).count == 1, "the wait is over: one claim takes what gathered")
        #expect(relay.handle(.timer(.gather), now: t0 + .milliseconds(7)).isEmpty, "a stale timer claims nothing more")
    }

    @Test func atALowRateANotifyClaimsAtOnce() throws {
        var (relay, claim) = try started()
        let first = relay.handle(.stored(claim, .committed(.claimed(rows(1...3)))), now: t0)
        #expect(publishes(first).count == 1)
        #expect(claims(relay.handle(.wake, now: t0)).count == 1, "three rows are below the load signal: no wait")
    }

    @Test func aFullBatchIsFollowedAtOnceByTheNextClaim() throws {
        var (relay, claim) = try started()
        let first = relay.handle(.stored(claim, .committed(.claimed(rows(1...10)))), now: t0)
        #expect(claims(first).count == 1, "a backlog: no wait between full claims")
    }

    @Test func aGatheredClaimWaitsForAFreeSlotAndThenGoesOutWithoutWaitingAgain() throws {
        var configuration = OutboxRelay.Configuration(outbox: .kafka, owner: "relay-1")
        configuration.batchSize = 10
        configuration.pipelineDepth = 1
        var relay = OutboxRelay(configuration: configuration, seed: 1)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let claim = try #require(claims(relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0)).first)
        let first = relay.handle(.stored(claim, .committed(.claimed(rows(1...5)))), now: t0)
        let publish = try #require(publishes(first).first)
        #expect(relay.handle(.wake, now: t0).isEmpty, "the only slot is busy: the NOTIFY waits for it")
        let (settle, _) = try #require(stores(relay.handle(.published(publish, Array(repeating: .delivered, count: 5)), now: t0)).first)
        let freed = relay.handle(.stored(settle, .committed(.settled(rows: 5))), now: t0 + .milliseconds(1))
        #expect(freed == [.setTimer(.gather, at: t0 + .milliseconds(1) + configuration.gatherDelay)])
        #expect(claims(relay.handle(.timer(.gather), now: t0 + .milliseconds(6))).count == 1)
    }

    @Test func anIdleRelayWokenUnderLoadCancelsItsPollAndGathers() throws {
        var (relay, claim) = try started()
        let idle = try complete(&relay, claim: claim, rows(1...6))
        #expect(idle == [.setTimer(.poll, at: t0 + relay.configuration.pollInterval)])
        let woken = relay.handle(.wake, now: t0 + .milliseconds(1))
        #expect(woken == [.cancelTimer(.poll), .setTimer(.gather, at: t0 + .milliseconds(1) + Self.delay)])
        let claim2 = try #require(claims(relay.handle(.timer(.gather), now: t0 + .milliseconds(6))).first)
        // The gathered claim found one row: the load is gone, the next NOTIFY claims at once.
        let after = try complete(&relay, claim: claim2, rows(7...7), now: t0 + .milliseconds(6))
        #expect(after == [.setTimer(.poll, at: t0 + .milliseconds(6) + relay.configuration.pollInterval)], "idle again: polling")
        #expect(claims(relay.handle(.wake, now: t0 + .milliseconds(8))).count == 1)
    }

    @Test func aZeroDelayNeverGathers() throws {
        var (relay, claim) = try started(gatherDelay: .zero)
        _ = relay.handle(.stored(claim, .committed(.claimed(rows(1...6)))), now: t0)
        #expect(claims(relay.handle(.wake, now: t0)).count == 1)
    }

    @Test func aRestartForgetsTheLoad() throws {
        var (relay, claim) = try started()
        _ = relay.handle(.stored(claim, .committed(.claimed(rows(1...6)))), now: t0)
        _ = relay.handle(.wake, now: t0)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0 + .milliseconds(1))).first)
        #expect(relay.handle(.timer(.gather), now: t0 + .milliseconds(6)).isEmpty, "the past life's timer does nothing")
        let restarted = relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0 + .milliseconds(6))
        #expect(claims(restarted).count == 1, "a fresh start claims at once")
    }
}
