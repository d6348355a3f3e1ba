// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "dlm-peer",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "DLMTransport", targets: ["DLMTransport"]),
        .library(name: "DLMNode", targets: ["DLMNode"]),
        .executable(name: "dlm-peer", targets: ["dlm-peer"]),
        .executable(name: "dlm-fuzz", targets: ["DLMFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        // Allocation counting for `dlm-peer bench` (LD_PRELOADed, never linked into the node).
        .package(url: "https://github.com/ordo-one/malloc-interposer.git", from: "1.6.1"),
    ],
    targets: [
        .target(
            name: "DLMTransport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [
                // All of a node's transport state lives on one event loop; the compiler's static
                // exclusivity checks stay on, the per-access runtime checks (~6% of the message
                // path in profiles) are dropped in release builds.
                .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))
            ]
        ),
        // pcap/pcapng reading, TCP/SCTP reassembly and pcap writing, for `decode` and tests.
        .target(
            name: "DLMCapture",
            dependencies: [
                "DLMTransport",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "DLMNode",
            dependencies: [
                "DLMTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "dlm-peer",
            dependencies: [
                "DLMTransport",
                "DLMCapture",
                "DLMNode",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // libFuzzer target over framer + decoder (`scripts/fuzz` builds it with
        // --sanitize=fuzzer); a plain build gives a reproducer for saved inputs.
        .executableTarget(
            name: "DLMFuzz",
            dependencies: [
                "DLMTransport",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Fuzz/DLMFuzz"
        ),
        .testTarget(
            name: "DLMTransportTests",
            dependencies: [
                "DLMTransport",
                "DLMCapture",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "DLMNodeTests",
            dependencies: [
                "DLMNode",
                "DLMTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                // Real PeerNodes on loopback (PeerNodeRecoveryLoopbackTests).
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
