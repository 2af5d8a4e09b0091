import Crypto
import Foundation

/// Azure Service Bus SAS tokens, as the CBS put-token carries them:
/// `SharedAccessSignature sr=<enc resource>&sig=<enc base64 HMAC-SHA256(key, enc resource + "\n" + expiry)>&se=<expiry>&skn=<key name>`.
/// The key is the UTF-8 bytes of `SharedAccessKey` as written in the connection string (not base64-decoded).
public enum SharedAccessSignature {
    /// - Parameters:
    ///   - resource: The audience, e.g. `sb://NAME.servicebus.windows.net/QUEUE`.
    ///   - keyName: `SharedAccessKeyName`.
    ///   - key: `SharedAccessKey`, as written in the connection string.
    ///   - expiry: Unix seconds after which the token is refused.
    /// - Returns: The token for a CBS put-token.
    public static func token(resource: String, keyName: String, key: String, expiry: Int64) -> String {
        let encodedResource = percentEncoded(resource)
        let toSign = encodedResource + "\n" + String(expiry)
        let mac = HMAC<SHA256>.authenticationCode(for: Data(toSign.utf8), using: SymmetricKey(data: Data(key.utf8)))
        let signature = Data(mac).base64EncodedString()
        return "SharedAccessSignature sr=\(encodedResource)&sig=\(percentEncoded(signature))&se=\(expiry)&skn=\(percentEncoded(keyName))"
    }

    /// Percent-encoding of everything but the RFC 3986 unreserved characters.
    public static func percentEncoded(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                result.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                result += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return result
    }
}
