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
        .library(name: "OrderPipelinePostgres", targets: ["OrderPipelinePostgres"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.0"),
        // The production side (PostgreSQL adapter); not in order-sim's dependency closure.
        .package(url: "https://github.com/apple/swift-log.git", from: "1.5.0"),
    ],
    targets: [
        .target(name: "OrderPipelineCore"),
        .target(
            name: "OrderPipelineSimulation",
            dependencies: ["OrderPipelineCore"],
            path: "Simulations/OrderPipelineSimulation"
        ),
        .executableTarget(
            name: "order-sim",
            dependencies: [
                "OrderPipelineSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Simulations/order-sim"
        ),
        .testTarget(name: "OrderPipelineCoreTests", dependencies: ["OrderPipelineCore"]),

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
            ]
        ),
        .testTarget(
            name: "OrderPipelinePostgresTests",
            dependencies: ["OrderPipelineCore", "OrderPipelinePostgres"]
        ),
        .testTarget(
            name: "OrderPipelineSimulationTests",
            dependencies: [
                "OrderPipelineSimulation",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
        ),
    ],
    swiftLanguageModes: [.v6]
)
