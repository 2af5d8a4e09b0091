// swift-tools-version:6.1
import PackageDescription

// Layout (see docs/ARCHITECTURE.md):
//   Sources/OrderPipelineCore        pure domain + the sans-IO state machines (no I/O, no C)
//   Simulations/OrderPipelineSimulation  the deterministic world that drives those machines
//   Simulations/order-sim            the simulator CLI (no C library in its closure)
let package = Package(
    name: "OrderPipeline",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "order-sim", targets: ["order-sim"]),
        .library(name: "OrderPipelineCore", targets: ["OrderPipelineCore"]),
        .executable(name: "orderpipeline", targets: ["orderpipeline"]),
        .library(name: "OrderPipelinePostgres", targets: ["OrderPipelinePostgres"]),
        .library(name: "OrderPipelineRuntime", targets: ["OrderPipelineRuntime"]),
        .library(name: "OrderPipelineHTTP", targets: ["OrderPipelineHTTP"]),
        .library(name: "OrderPipelineKafka", targets: ["OrderPipelineKafka"]),
        .library(name: "OrderPipelineServiceBus", targets: ["OrderPipelineServiceBus"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.0"),
        // The production side (PostgreSQL adapter, HTTP API, the `orderpipeline` binary); none of these is in
        // order-sim's dependency closure.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        // Already in the graph through Hummingbird; the binary runs Swift concurrency on its event loops.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.65.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.4.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        // Spans at the pipeline's hops (docs/TRACING.md); already in the graph through Hummingbird.
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        // HMAC-SHA256 of Azure SAS tokens (Service Bus adapter only; never in order-sim's closure).
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
    ],
    targets: [
        .target(name: "OrderPipelineCore"),
        .target(
            name: "OrderPipelineSimulation",
            dependencies: ["OrderPipelineCore"],
            path: "Simulations/OrderPipelineSimulation",
            // Single-threaded: release builds skip the runtime exclusivity checks on the world's properties (3% of a
            // seed's time); debug builds, which run the tests, keep them.
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "order-sim",
            dependencies: [
                "OrderPipelineSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Simulations/order-sim"
        ),
        .testTarget(name: "OrderPipelineCoreTests", dependencies: ["OrderPipelineCore", "OrderPipelineTestSupport"]),
        // The production shells (MachineLoop, IntakeShell) driven with fake performers: no services needed.
        .testTarget(name: "OrderPipelineRuntimeTests", dependencies: ["OrderPipelineCore", "OrderPipelineRuntime", "OrderPipelineTestSupport"]),
        // What every test target shares: fakes, sample data, the test environment, the AMQP test receiver, the scripted
        // AMQP peer and the PostgreSQL connection gate. A library (not a test target) so that test targets can use it.
        .target(
            name: "OrderPipelineTestSupport",
            dependencies: [
                "OrderPipelineCore",
                "OrderPipelinePostgres",
                "OrderPipelineRuntime",
                "OrderPipelineServiceBus",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            path: "Tests/OrderPipelineTestSupport",
            exclude: ["Peers"]
        ),

        // --- PostgreSQL (libpq) adapter, runtime shells, HTTP API, the deployable binary -------------------
        .systemLibrary(
            name: "CLibPQ",
            path: "Sources/CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .target(
            name: "OrderPipelinePostgres",
            dependencies: [
                "OrderPipelineCore",
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "OrderPipelineRuntime",
            dependencies: [
                "OrderPipelineCore",
                "OrderPipelinePostgres",
                "OrderPipelineKafka",
                "OrderPipelineServiceBus",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        .target(
            name: "OrderPipelineHTTP",
            dependencies: [
                "OrderPipelineCore",
                "OrderPipelineRuntime",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["openapi.json"]
        ),
        .executableTarget(
            name: "orderpipeline",
            dependencies: [
                "OrderPipelineCore",
                "OrderPipelinePostgres",
                "OrderPipelineRuntime",
                "OrderPipelineHTTP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "OrderPipelinePostgresTests",
            dependencies: ["OrderPipelineCore", "OrderPipelinePostgres", "OrderPipelineSimulation", "OrderPipelineTestSupport"]
        ),
        .testTarget(
            name: "OrderPipelineHTTPTests",
            dependencies: [
                "OrderPipelineCore",
                "OrderPipelinePostgres",
                "OrderPipelineRuntime",
                "OrderPipelineHTTP",
                "OrderPipelineServiceBus",
                "OrderPipelineTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        .testTarget(
            name: "OrderPipelineSimulationTests",
            dependencies: [
                "OrderPipelineSimulation",
                "OrderPipelineTestSupport",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
        ),

        // --- Kafka (librdkafka) and Service Bus / AMQP 1.0 (qpid-proton) adapters --------------------------
        .systemLibrary(
            name: "CRdKafka",
            path: "Sources/CRdKafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        .target(
            name: "OrderPipelineKafka",
            dependencies: [
                "OrderPipelineCore",
                "CRdKafka",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .systemLibrary(
            name: "CQpidProton",
            path: "Sources/CQpidProton",
            pkgConfig: "libqpid-proton",
            providers: [.apt(["libqpid-proton11-dev"])]
        ),
        .target(
            name: "OrderPipelineServiceBus",
            dependencies: [
                "OrderPipelineCore",
                "CQpidProton",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "OrderPipelineKafkaTests",
            dependencies: ["OrderPipelineCore", "OrderPipelineKafka", "OrderPipelineTestSupport"]
        ),
        .testTarget(
            name: "OrderPipelineServiceBusTests",
            dependencies: ["OrderPipelineCore", "OrderPipelineServiceBus", "OrderPipelineTestSupport"]
        ),
        .testTarget(
            name: "OrderPipelineEndToEndTests",
            dependencies: [
                "OrderPipelineCore",
                "OrderPipelinePostgres",
                "OrderPipelineRuntime",
                "OrderPipelineKafka",
                "OrderPipelineServiceBus",
                "OrderPipelineTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
