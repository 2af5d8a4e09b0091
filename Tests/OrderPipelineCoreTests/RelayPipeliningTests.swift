import Testing

@testable import OrderPipelineCore

/// The relay keeps up to `pipelineDepth` batches in the air: the next claim goes out while a batch is published.
@Suite struct RelayPipeliningTests {
    func started(batchSize: Int = 3) throws -> (OutboxRelay, Ticket) {
        var configuration = OutboxRelay.Configuration(outbox: .kafka, owner: "relay-1")
        configuration.batchSize = batchSize
        var relay = OutboxRelay(configuration: configuration, seed: 1)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let (claim, _) = try #require(stores(relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0)).first)
        return (relay, claim)
    }

    func rows(_ sequences: ClosedRange<Int64>) -> [OutboxMessage] {
        sequences.map { row($0, OrderID(UUID128(high: 1, low: UInt64($0)))) }
    }

    func publishes(_ effects: [Effect]) -> [(Ticket, [OutboxMessage])] {
        effects.compactMap { if case .publish(let ticket, _, let rows) = $0 { (ticket, rows) } else { nil } }
    }

    func claims(_ effects: [Effect]) -> [Ticket] {
        stores(effects).compactMap { if case .claimOutbox = $0.1 { $0.0 } else { nil } }
    }

    @Test func aFullBatchIsFollowedAtOnceByTheNextClaimAndTwoBatchesAtMostAreInTheAir() throws {
        var (relay, claim1) = try started()
        let first = relay.handle(.stored(claim1, .committed(.claimed(rows(1...3)))), now: t0)
        let (publish1, _) = try #require(publishes(first).first)
        let claim2 = try #require(claims(first).first, "the next claim goes out while the first batch is published")

        let second = relay.handle(.stored(claim2, .committed(.claimed(rows(4...6)))), now: t0)
        let (publish2, _) = try #require(publishes(second).first)
        #expect(claims(second).isEmpty, "two batches in the air: no third claim")
        #expect(relay.handle(.wake, now: t0).isEmpty, "a NOTIFY waits for a free slot")

        // The second batch is acknowledged first: results come back in any order.
        let (settle2, command) = try #require(stores(relay.handle(.published(publish2, Array(repeating: .delivered, count: 3)), now: t0)).first)
        guard case .settleOutbox(let s) = command else { Issue.record("expected a settlement"); return }
        #expect(s.published == [4, 5, 6])
        let afterSettle = relay.handle(.stored(settle2, .committed(.settled(rows: 3))), now: t0)
        #expect(claims(afterSettle).count == 1, "a settled batch frees a slot: claim again")
        #expect(stores(relay.handle(.published(publish1, Array(repeating: .delivered, count: 3)), now: t0)).count == 1)
    }

    @Test func aPartBatchWaitsForANotifyButClaimsOnOneWhileItIsPublished() throws {
        var (relay, claim1) = try started()
        let first = relay.handle(.stored(claim1, .committed(.claimed(rows(1...1)))), now: t0)
        #expect(publishes(first).count == 1)
        #expect(claims(first).isEmpty, "fewer rows than asked for: the outbox is drained for now")
        let woken = relay.handle(.wake, now: t0)
        #expect(claims(woken).count == 1, "a NOTIFY claims the new rows without waiting for the batch in the air")
        #expect(!woken.contains(.cancelTimer(.poll)))
    }

    @Test func theRelayGoesIdleOnlyWhenNothingIsInTheAir() throws {
        var (relay, claim1) = try started()
        let first = relay.handle(.stored(claim1, .committed(.claimed(rows(1...3)))), now: t0)
        let (publish1, _) = try #require(publishes(first).first)
        let claim2 = try #require(claims(first).first)
        #expect(relay.handle(.stored(claim2, .committed(.claimed([]))), now: t0).isEmpty, "a batch is still in the air: no poll timer yet")
        let (settle1, _) = try #require(stores(relay.handle(.published(publish1, Array(repeating: .delivered, count: 3)), now: t0)).first)
        // The empty claim ran after the full one: nothing can be waiting, so the settle claims nothing more.
        let idle = relay.handle(.stored(settle1, .committed(.settled(rows: 3))), now: t0)
        #expect(idle == [.setTimer(.poll, at: t0 + relay.configuration.pollInterval)])
        #expect(relay.isIdle)
    }

    @Test func aFailedSettlementIsRetriedWhileTheOtherBatchCarriesOn() throws {
        var (relay, claim1) = try started()
        let first = relay.handle(.stored(claim1, .committed(.claimed(rows(1...3)))), now: t0)
        let (publish1, _) = try #require(publishes(first).first)
        let claim2 = try #require(claims(first).first)
        let (publish2, _) = try #require(publishes(relay.handle(.stored(claim2, .committed(.claimed(rows(4...6)))), now: t0)).first)
        let (settle1, settlement1) = try #require(stores(relay.handle(.published(publish1, Array(repeating: .delivered, count: 3)), now: t0)).first)
        let failed = relay.handle(.stored(settle1, .failed(.unavailable("down"))), now: t0)
        guard case .setTimer(.retry, let at)? = failed.last else { Issue.record("expected a retry timer"); return }
        let (settle2, _) = try #require(stores(relay.handle(.published(publish2, Array(repeating: .delivered, count: 3)), now: t0)).first)
        #expect(
            claims(relay.handle(.stored(settle2, .committed(.settled(rows: 3))), now: t0)).count == 1,
            "the failed settlement holds one slot; the other is free")
        let retried = stores(relay.handle(.timer(.retry), now: at))
        #expect(retried.contains { $0.1 == settlement1 }, "the same settlement again")
    }

    @Test func kafkaPositionsGoWithTheSettlement() throws {
        var (relay, claim1) = try started()
        let effects = relay.handle(.stored(claim1, .committed(.claimed(rows(1...2)))), now: t0)
        let (publish, _) = try #require(publishes(effects).first)
        let outcomes: [PublishOutcome] = [.appended(RecordPosition(partition: 2, offset: 117)), .unknown("timed out")]
        let (_, command) = try #require(stores(relay.handle(.published(publish, outcomes), now: t0)).first)
        guard case .settleOutbox(let s) = command else { Issue.record("expected a settlement"); return }
        #expect(s.published == [1] && s.positions == [1: RecordPosition(partition: 2, offset: 117)])
        #expect(s.retries.map(\.sequence) == [2])
        #expect(RecordPosition(partition: 2, offset: 117).description == "partition 2, offset 117")
    }
}
