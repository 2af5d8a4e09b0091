/// SplitMix64 (Steele, Lea, Flood 2014): the one pseudo-random algorithm of the project.
///
/// State machines never draw entropy from the system. They take a generator seeded by their shell: the
/// production shell seeds it once from the operating system, the simulator from the seed of the run, so the same
/// seed always gives the same jitter.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform value in `0..<bound` without modulo bias worth caring about (Lemire's multiply-shift).
    public mutating func below(_ bound: UInt64) -> UInt64 {
        precondition(bound > 0)
        return next().multipliedFullWidth(by: bound).high
    }

    /// A value in `range`, inclusive.
    public mutating func int(in range: ClosedRange<Int64>) -> Int64 {
        let span = UInt64(bitPattern: range.upperBound &- range.lowerBound) &+ 1
        if span == 0 { return Int64(bitPattern: next()) }
        return range.lowerBound &+ Int64(bitPattern: below(span))
    }

    /// True with probability `p` (0...1).
    public mutating func chance(_ p: Double) -> Bool {
        guard p > 0 else { return false }
        return unitInterval() < p
    }

    /// A value in [0, 1) with 53 bits of precision.
    public mutating func unitInterval() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    /// A new, independent generator; used to give each component its own stream.
    public mutating func split() -> SplitMix64 { SplitMix64(seed: next()) }
}
