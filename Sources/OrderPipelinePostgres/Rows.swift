import CLibPQ

/// A query result; owns the `PGresult` and clears it when released. Values are read in text format.
public final class PostgresRows {
    private let handle: OpaquePointer

    init(_ handle: OpaquePointer) { self.handle = handle }
    deinit { PQclear(handle) }

    /// Rows returned.
    public var count: Int { Int(PQntuples(handle)) }
    /// Columns of each row.
    public var columns: Int { Int(PQnfields(handle)) }
    /// Rows changed by an INSERT/UPDATE/DELETE.
    public var affected: Int { Int(String(cString: PQcmdTuples(handle))) ?? 0 }

    /// Whether the value is SQL NULL.
    public func isNull(_ row: Int, _ column: Int) -> Bool { PQgetisnull(handle, Int32(row), Int32(column)) == 1 }

    /// The value as PostgreSQL prints it; nil for NULL or a row or column out of range.
    public func string(_ row: Int, _ column: Int) -> String? {
        guard row < count, column < columns, !isNull(row, column) else { return nil }
        return String(cString: PQgetvalue(handle, Int32(row), Int32(column)))
    }

    /// The value as an integer; nil for NULL, out of range, or not an integer.
    public func int(_ row: Int, _ column: Int) -> Int64? { string(row, column).flatMap { Int64($0) } }

    /// A `bytea` column read in text format. Every session pins `bytea_output = hex`; the `escape` format is
    /// decoded as well, so a session that sets it anyway still reads the exact bytes.
    public func bytes(_ row: Int, _ column: Int) -> [UInt8]? {
        guard row < count, column < columns, !isNull(row, column) else { return nil }
        let value = PQgetvalue(handle, Int32(row), Int32(column))!
        let length = Int(PQgetlength(handle, Int32(row), Int32(column)))
        return value.withMemoryRebound(to: UInt8.self, capacity: length) { pointer in
            ByteaText.decode(UnsafeBufferPointer(start: pointer, count: length))
        }
    }
}

/// The two text forms of `bytea` (https://www.postgresql.org/docs/current/datatype-binary.html).
enum ByteaText {
    static func decode(_ text: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        if text.count >= 2, text[0] == UInt8(ascii: "\\"), text[1] == UInt8(ascii: "x") { return hex(text) }
        return escape(text)
    }

    /// `\x` followed by two hex digits per byte.
    static func hex(_ text: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        guard text.count >= 2, text.count % 2 == 0 else { return nil }
        // Written in place (the relay's claim decodes every payload it publishes).
        var valid = true
        let out = [UInt8](unsafeUninitializedCapacity: (text.count - 2) / 2) { buffer, initialized in
            Self.nibbles.withUnsafeBufferPointer { nibbles in
                for index in 0..<buffer.count {
                    let high = nibbles[Int(text[2 + 2 * index])], low = nibbles[Int(text[3 + 2 * index])]
                    guard (high | low) < 16 else {
                        valid = false
                        return
                    }
                    buffer[index] = high << 4 | low
                    initialized = index + 1
                }
            }
        }
        return valid ? out : nil
    }

    /// Each byte's value as a hex digit, 0xFF for a byte that is not one.
    private static let nibbles: [UInt8] = (0...255).map { nibble(UInt8($0)) ?? 0xFF }

    /// Printable bytes as themselves, `\\` for a backslash, `\ooo` (three octal digits) for any other byte.
    static func escape(_ text: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var index = 0
        while index < text.count {
            let byte = text[index]
            guard byte == UInt8(ascii: "\\") else {
                out.append(byte)
                index += 1
                continue
            }
            if index + 1 < text.count, text[index + 1] == UInt8(ascii: "\\") {
                out.append(byte)
                index += 2
                continue
            }
            guard index + 3 < text.count, let a = octal(text[index + 1]), let b = octal(text[index + 2]), let c = octal(text[index + 3]),
                a <= 3
            else { return nil }
            out.append(a << 6 | b << 3 | c)
            index += 4
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private static func octal(_ c: UInt8) -> UInt8? {
        (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(c) ? c - UInt8(ascii: "0") : nil
    }
}
