import Testing

@testable import OrderPipelineCore

/// The relay decides when its publisher's session is replaced: the adapter only reports `.sessionUnusable`.
@Suite struct RelayPublisherResetTests {
    let fenced = PublishOutcome.sessionUnusable("producer session unusable (Broker: Producer fenced)")

    func rows(_ sequences: ClosedRange<Int64>) -> [OutboxMessage] {
        sequences.map { row($0, OrderID(UUID128(high: 2, low: UInt64($0)))) }
    }

    func publishes(_ effects: [Effect]) -> [Ticket] {
        effects.compactMap { if case .publish(let ticket, _, _) = $0 { ticket } else { nil } }
    }

    func claims(_ effects: [Effect]) -> [Ticket] {
        stores(effects).compactMap { if case .claimOutbox = $0.1 { $0.0 } else { nil } }
    }

    func resets(_ effects: [Effect]) -> Int {
        effects.filter { $0 == .resetPublisher(.orders) }.count
    }

    @Test func aBrokenSessionIsResetOnceJustBeforeTheNextPublishAndItsRowsAreRetried() throws {
        var configuration = OutboxRelay.Configuration(outbox: .kafka, owner: "relay-1")
        configuration.batchSize = 3
        var relay = OutboxRelay(configuration: configuration, seed: 1)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let claim1 = try #require(claims(relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0)).first)
        let first = relay.handle(.stored(claim1, .committed(.claimed(rows(1...3)))), now: t0)
        let publish1 = try #require(publishes(first).first)
        let claim2 = try #require(claims(first).first)
        let publish2 = try #require(publishes(relay.handle(.stored(claim2, .committed(.claimed(rows(4...6)))), now: t0)).first)

        // The session breaks in the middle of the first batch: the rows not delivered are retried; no reset yet.
        let answered1 = relay.handle(.published(publish1, [.appended(RecordPosition(partition: 0, offset: 7)), fenced, fenced]), now: t0)
        #expect(resets(answered1) == 0, "the reset waits for the next publish")
        let (settle1, command1) = try #require(stores(answered1).first)
        guard case .settleOutbox(let settlement1) = command1 else { Issue.record("expected a settlement"); return }
        #expect(settlement1.published == [1])
        #expect(settlement1.retries.map(\.sequence) == [2, 3], "same rows, same event ids: retried, not dead-lettered")
        #expect(settlement1.rejections.isEmpty)

        // The next publish is preceded by exactly one reset of the orders publisher.
        let claim3 = try #require(claims(relay.handle(.stored(settle1, .committed(.settled(rows: 3))), now: t0)).first)
        let third = relay.handle(.stored(claim3, .committed(.claimed(rows(7...9)))), now: t0)
        #expect(third.first == .resetPublisher(.orders), "reset first, then the publish")
        #expect(resets(third) == 1)
        let publish3 = try #require(publishes(third).first)

        // The second batch went out on the old session: its failure is stale and asks for no second reset.
        let (settle2, _) = try #require(stores(relay.handle(.published(publish2, Array(repeating: fenced, count: 3)), now: t0)).first)
        _ = relay.handle(.stored(settle2, .committed(.settled(rows: 3))), now: t0)
        let (settle3, _) = try #require(stores(relay.handle(.published(publish3, Array(repeating: .delivered, count: 3)), now: t0)).first)
        let claim4 = try #require(claims(relay.handle(.stored(settle3, .committed(.settled(rows: 3))), now: t0)).first)
        let fourth = relay.handle(.stored(claim4, .committed(.claimed(rows(2...3)))), now: t0)
        #expect(publishes(fourth).count == 1, "publishes again")
        #expect(resets(fourth) == 0, "the session was replaced once; a stale failure does not replace the new one")

        // The new session breaks too: reset again before the publish after that.
        let publish4 = try #require(publishes(fourth).first)
        let (settle4, _) = try #require(stores(relay.handle(.published(publish4, [fenced, fenced]), now: t0)).first)
        let paused = relay.handle(.stored(settle4, .committed(.settled(rows: 2))), now: t0)
        guard case .setTimer(.retry, let at)? = paused.last else { Issue.record("nothing delivered: a broker backoff"); return }
        let claim5 = try #require(claims(relay.handle(.timer(.retry), now: at)).first)
        let fifth = relay.handle(.stored(claim5, .committed(.claimed(rows(2...2)))), now: at)
        #expect(fifth.first == .resetPublisher(.orders))
        #expect(publishes(fifth).count == 1)
    }

    @Test func aRestartedRelayStartsWithAFreshPublisher() throws {
        var relay = OutboxRelay(configuration: .init(outbox: .kafka, owner: "relay-1"), seed: 1)
        let (release, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let claim1 = try #require(claims(relay.handle(.stored(release, .committed(.released(rows: 0))), now: t0)).first)
        let publish1 = try #require(publishes(relay.handle(.stored(claim1, .committed(.claimed(rows(1...1)))), now: t0)).first)
        _ = relay.handle(.published(publish1, [fenced]), now: t0)
        let (release2, _) = try #require(stores(relay.handle(.start, now: t0)).first)
        let claim2 = try #require(claims(relay.handle(.stored(release2, .committed(.released(rows: 1))), now: t0)).first)
        let again = relay.handle(.stored(claim2, .committed(.claimed(rows(1...1)))), now: t0)
        #expect(resets(again) == 0)
        #expect(publishes(again).count == 1)
    }

    @Test func theConsumerResetsAFencedDeadLetterProducerBeforeItsNextCopy() throws {
        var consumer = FulfilmentConsumer(seed: 1)
        _ = consumer.handle(.start, now: t0)
        let fetch = try #require(
            consumer.handle(.assigned(generation: 1, partitions: [2]), now: t0).compactMap { effect -> Ticket? in
                if case .fetch(let ticket, _) = effect { ticket } else { nil }
            }.first)
        let poison = ConsumedRecord(partition: 2, offset: 9, key: nil, headers: [], value: Array("garbage".utf8))
        let (ticket, _) = try #require(stores(consumer.handle(.fetched(fetch, [poison]), now: t0)).first)
        guard case .forwardDeadLetter(let forward, _, _)? = consumer.handle(.stored(ticket, .committed(.deadLettered)), now: t0).first else {
            Issue.record("expected the dead-letter topic"); return
        }
        let failed = consumer.handle(.published(forward, [fenced]), now: t0)
        #expect(failed.first == .resetPublisher(.deadLetters), "the dead-letter producer is replaced before the retry")
        #expect(failed.filter { $0 == .resetPublisher(.deadLetters) }.count == 1)
        guard case .setTimer(.retry, let at)? = failed.last else { Issue.record("expected a retry"); return }
        guard case .forwardDeadLetter = consumer.handle(.timer(.retry), now: at).first else { Issue.record("expected a second copy"); return }
    }
}
