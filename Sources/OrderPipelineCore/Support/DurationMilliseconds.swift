extension Duration {
    /// Whole milliseconds (truncated toward zero): what the C libraries' timeouts and logs take.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000 + attoseconds / 1_000_000_000_000_000
    }
}
