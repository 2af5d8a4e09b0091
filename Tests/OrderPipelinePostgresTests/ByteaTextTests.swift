import Testing

@testable import OrderPipelinePostgres

@Suite("bytea text decoding")
struct ByteaTextTests {
    static func decode(_ text: String) -> [UInt8]? {
        Array(text.utf8).withUnsafeBufferPointer { ByteaText.decode($0) }
    }

    @Test("hex: every byte value, either case, and the empty value")
    func hex() {
        let all = (0...255).map { UInt8($0) }
        let digits = all.map { byte in String(byte, radix: 16).count == 1 ? "0" + String(byte, radix: 16) : String(byte, radix: 16) }.joined()
        #expect(Self.decode("\\x" + digits) == all)
        #expect(Self.decode("\\x" + digits.uppercased()) == all)
        #expect(Self.decode("\\x") == [])
    }

    @Test("hex: a digit that is not one, or an odd length, is refused")
    func hexRefused() {
        #expect(Self.decode("\\x0g") == nil)
        #expect(Self.decode("\\xg0") == nil)
        #expect(Self.decode("\\x0") == nil)
        #expect(Self.decode("\\x00 1") == nil)
    }
}
