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

    /// One 64-byte block. The message schedule is kept as a ring of 16 words, each replaced as it is used up.
    private mutating func compress(_ chunk: UnsafeRawBufferPointer) {
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 16) { w in
            for i in 0..<16 { w[i] = UInt32(bigEndian: chunk.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)) }
            var (a, b, c, d, e) = h
            @inline(__always) func word(_ i: Int) -> UInt32 {
                guard i >= 16 else { return w[i] }
                let next = Self.rotl(w[(i - 3) & 15] ^ w[(i - 8) & 15] ^ w[(i - 14) & 15] ^ w[i & 15], 1)
                w[i & 15] = next
                return next
            }
            for i in 0..<20 {
                let t = Self.rotl(a, 5) &+ ((b & c) | (~b & d)) &+ e &+ 0x5A82_7999 &+ word(i)
                (e, d, c, b, a) = (d, c, Self.rotl(b, 30), a, t)
            }
            for i in 20..<40 {
                let t = Self.rotl(a, 5) &+ (b ^ c ^ d) &+ e &+ 0x6ED9_EBA1 &+ word(i)
                (e, d, c, b, a) = (d, c, Self.rotl(b, 30), a, t)
            }
            for i in 40..<60 {
                let t = Self.rotl(a, 5) &+ ((b & c) | (b & d) | (c & d)) &+ e &+ 0x8F1B_BCDC &+ word(i)
                (e, d, c, b, a) = (d, c, Self.rotl(b, 30), a, t)
            }
            for i in 60..<80 {
                let t = Self.rotl(a, 5) &+ (b ^ c ^ d) &+ e &+ 0xCA62_C1D6 &+ word(i)
                (e, d, c, b, a) = (d, c, Self.rotl(b, 30), a, t)
            }
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
