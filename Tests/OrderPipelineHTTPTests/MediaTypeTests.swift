import Testing

@testable import OrderPipelineHTTP

/// The `Content-Type` check of POST and PATCH, read as bytes: the same verdicts as "trim, lower-case, compare".
@Suite("JSON media type")
struct MediaTypeTests {
    @Test(
        "JSON types are accepted, in any case, with parameters and blanks",
        arguments: [
            "application/json", "Application/JSON", "application/json; charset=utf-8", " application/json ;charset=UTF-8",
            "\tapplication/json\t", "application/problem+json", "APPLICATION/VND.ORDERS+JSON; v=1", "application/+json",
        ])
    func accepted(_ value: String) {
        #expect(OrderAPI.isJSONMediaType(value))
    }

    @Test(
        "anything else is refused",
        arguments: [
            "", " ", ";", "text/plain", "text/json", "application/jsonx", "application/json5", "application/xml",
            "application/", "application/+jsonx", "application /json", "json", "+json", "text/+json", "application/jsön",
        ])
    func refused(_ value: String) {
        #expect(!OrderAPI.isJSONMediaType(value))
    }
}
