import Testing

@testable import OrderPipelineCore

/// After a settle the relay claims again only when rows may be waiting: a NOTIFY came since its latest claim went
/// out, or that claim found rows held back behind this relay's own heads (which no NOTIFY announces once freed).
@Suite struct RelayClaimAfterSettleTests {
    func started(pipelineDepth: Int = 2) throws -> (OutboxRelay, Ticket) {
        var configuration = OutboxRelay.Configuration(outbox: .kafka, owner: "relay-1")
        configuration.batchSize = 3
        configuration.pipelineDepth = pipelineDepth
        var relay = OutboxRelay(configuration: configuration, seed: 1)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let (claim, _) = try #require(stores(relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0)).first)
        return (relay, claim)
    }

    func claims(_ effects: [Effect]) -> [Ticket] {
        stores(effects).compactMap { if case .claimOutbox = $0.1 { $0.0 } else { nil } }
    }

    /// Claims one row (a part batch) and publishes it; answers the settle's ticket.
    func publishOne(_ relay: inout OutboxRelay, claim: Ticket, heldBack: Bool = false) throws -> Ticket {
        let effects = relay.handle(.stored(claim, .committed(.claimed([row(1)], heldBack: heldBack))), now: t0)
        let publish = try #require(effects.compactMap { if case .publish(let ticket, _, _) = $0 { ticket } else { nil } }.first)
        #expect(claims(effects).isEmpty, "a part batch: no claim on its own")
        let (settle, _) = try #require(stores(relay.handle(.published(publish, [.delivered]), now: t0)).first)
        return settle
    }

    @Test func aSettleClaimsNothingWhenNothingCanBeWaiting() throws {
        var (relay, claim) = try started()
        let settle = try publishOne(&relay, claim: claim)
        let after = relay.handle(.stored(settle, .committed(.settled(rows: 1))), now: t0)
        #expect(after == [.setTimer(.poll, at: t0 + relay.configuration.pollInterval)], "no claim: idle on the poll")
        #expect(relay.isIdle)
    }

    @Test func aNotifyThatCameWhileNoSlotWasFreeClaimsAfterTheSettle() throws {
        var (relay, claim) = try started(pipelineDepth: 1)
        let settle = try publishOne(&relay, claim: claim)
        #expect(relay.handle(.wake, now: t0).isEmpty, "the only slot is taken: the NOTIFY waits")
        #expect(claims(relay.handle(.stored(settle, .committed(.settled(rows: 1))), now: t0)).count == 1)
    }

    @Test func rowsHeldBackBehindThisRelaysHeadAreClaimedAfterTheSettle() throws {
        var (relay, claim) = try started()
        let settle = try publishOne(&relay, claim: claim, heldBack: true)
        #expect(claims(relay.handle(.stored(settle, .committed(.settled(rows: 1))), now: t0)).count == 1)
    }

    @Test func aClaimThatSawRowsHeldBackWhileTheirHeadSettledClaimsAgain() throws {
        var (relay, claim1) = try started()
        let settle = try publishOne(&relay, claim: claim1)
        let claim2 = try #require(claims(relay.handle(.wake, now: t0)).first, "a NOTIFY claims while the batch is in the air")
        #expect(claims(relay.handle(.stored(settle, .committed(.settled(rows: 1))), now: t0)).isEmpty, "the claim out decides")
        // The claim ran before the settle committed: it saw row 1 still out and the order's next row held back.
        #expect(claims(relay.handle(.stored(claim2, .committed(.claimed([], heldBack: true))), now: t0)).count == 1)
    }

    @Test func aClaimThatSawNothingHeldBackWhileASettleCameBackGoesIdle() throws {
        var (relay, claim1) = try started()
        let settle = try publishOne(&relay, claim: claim1)
        let claim2 = try #require(claims(relay.handle(.wake, now: t0)).first)
        _ = relay.handle(.stored(settle, .committed(.settled(rows: 1))), now: t0)
        let idle = relay.handle(.stored(claim2, .committed(.claimed([]))), now: t0)
        #expect(idle == [.setTimer(.poll, at: t0 + relay.configuration.pollInterval)])
    }
}
