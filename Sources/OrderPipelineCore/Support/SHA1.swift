/// SHA-1 (FIPS 180-4), only for name-based UUIDs (RFC 9562 version 5) and request fingerprints.
///
/// Why not swift-crypto: the core and the simulator must build with nothing but the Swift toolchain (swift-crypto
/// compiles BoringSSL on Linux), and UUIDv5 needs SHA-1, not a secure hash. Tested against the FIPS vectors.
///
/// Hashes in pieces (`update` as often as needed, then `finish`) without allocating: every event id is one of
/// these, so the pipeline and the simulator's checker run it many times per order.
public struct SHA1 {
    private var h: (UInt32, UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0)
    /// Bytes not yet hashed (fewer than 64), in `block`.
    private var block: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    private var buffered = 0
    private var length: UInt64 = 0

    public init() {}

    public static func hash<Bytes: Sequence<UInt8>>(_ input: Bytes) -> [UInt8] {
        var sha = SHA1()
        if input.withContiguousStorageIfAvailable({ sha.update(UnsafeRawBufferPointer($0)) }) == nil {
            Array(input).withUnsafeBytes { sha.update($0) }
        }
        return sha.finish()
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var next = bytes.baseAddress, !bytes.isEmpty else { return }
        length &+= UInt64(bytes.count)
        var left = bytes.count
        if buffered > 0 {
            let taken = min(64 - buffered, left)
            withUnsafeMutableBytes(of: &block) { $0.baseAddress!.advanced(by: buffered).copyMemory(from: next, byteCount: taken) }
            buffered += taken
            next += taken
            left -= taken
            guard buffered == 64 else { return }
            let full = block
            withUnsafeBytes(of: full) { compress($0) }
            buffered = 0
        }
        while left >= 64 {
            compress(UnsafeRawBufferPointer(start: next, count: 64))
            next += 64
            left -= 64
        }
        if left > 0 {
            withUnsafeMutableBytes(of: &block) { $0.baseAddress!.copyMemory(from: next, byteCount: left) }
            buffered = left
        }
    }

    /// Pads, hashes what is left and returns the 20-byte digest.
    public mutating func finish() -> [UInt8] {
        let (h0, h1, h2, h3, h4) = finishWords()
        var digest: [UInt8] = []
        digest.reserveCapacity(20)
        for word in [h0, h1, h2, h3, h4] {
            for shift in stride(from: 24, through: 0, by: -8) { digest.append(UInt8(truncatingIfNeeded: word >> UInt32(shift))) }
        }
        return digest
    }

    /// `finish` as the five big-endian words of the digest (no array).
    public mutating func finishWords() -> (UInt32, UInt32, UInt32, UInt32, UInt32) {
        let bitLength = length &* 8
        var padding: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0x80, 0, 0, 0, 0, 0, 0, 0, 0)
        // 0x80, zeros up to 56 mod 64, then the length in bits, big-endian.
        let zeros = (buffered < 56 ? 55 : 119) - buffered
        withUnsafeMutableBytes(of: &padding) { padding in
            let end = 1 + zeros
            for index in 0..<8 { padding[end + index] = UInt8(truncatingIfNeeded: bitLength >> UInt64(56 - 8 * index)) }
            let saved = length
            update(UnsafeRawBufferPointer(rebasing: padding[..<(end + 8)]))
            length = saved
        }
        return h
    }

    /// One 64-byte block: the whole message schedule first, then the rounds five at a time, the working variables
    /// taking each other's roles rather than moving each round.
    private mutating func compress(_ chunk: UnsafeRawBufferPointer) {
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 80) { w in
            for i in 0..<16 { w[i] = UInt32(bigEndian: chunk.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)) }
            for i in 16..<80 { w[i] = Self.rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1) }
            var (a, b, c, d, e) = h
            // Round i adds rotl(a, 5) + f(b, c, d) + k + w[i] to e, which becomes the next round's a, and turns b.
            @inline(__always) func rounds(from first: Int, _ k: UInt32, _ f: (UInt32, UInt32, UInt32) -> UInt32) {
                for i in stride(from: first, to: first + 20, by: 5) {
                    e = e &+ Self.rotl(a, 5) &+ f(b, c, d) &+ k &+ w[i]
                    b = Self.rotl(b, 30)
                    d = d &+ Self.rotl(e, 5) &+ f(a, b, c) &+ k &+ w[i + 1]
                    a = Self.rotl(a, 30)
                    c = c &+ Self.rotl(d, 5) &+ f(e, a, b) &+ k &+ w[i + 2]
                    e = Self.rotl(e, 30)
                    b = b &+ Self.rotl(c, 5) &+ f(d, e, a) &+ k &+ w[i + 3]
                    d = Self.rotl(d, 30)
                    a = a &+ Self.rotl(b, 5) &+ f(c, d, e) &+ k &+ w[i + 4]
                    c = Self.rotl(c, 30)
                }
            }
            rounds(from: 0, 0x5A82_7999) { b, c, d in (b & c) | (~b & d) }
            rounds(from: 20, 0x6ED9_EBA1) { b, c, d in b ^ c ^ d }
            rounds(from: 40, 0x8F1B_BCDC) { b, c, d in (b & c) | (b & d) | (c & d) }
            rounds(from: 60, 0xCA62_C1D6) { b, c, d in b ^ c ^ d }
            h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e)
        }
    }

    private static func rotl(_ x: UInt32, _ n: UInt32) -> UInt32 { (x << n) | (x >> (32 - n)) }
}

extension Sequence<UInt8> {
    /// Lower-case hexadecimal.
    public var hexString: String {
        let bytes = Array(self)
        return String(unsafeUninitializedCapacity: bytes.count * 2) { text in
            for (index, byte) in bytes.enumerated() {
                text[2 * index] = hexDigit(byte >> 4)
                text[2 * index + 1] = hexDigit(byte & 0x0F)
            }
            return bytes.count * 2
        }
    }
}

/// The lower-case hexadecimal digit of a nibble (0…15).
@inline(__always)
func hexDigit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") - 10 + nibble }
