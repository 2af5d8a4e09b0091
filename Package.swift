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
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.0"),
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
