// libFuzzer target over the framer and the decoder.
//
// Built by `scripts/fuzz` (`--sanitize=fuzzer --sanitize=address -DFUZZING`), libFuzzer
// drives it. Built normally (`swift build`), it is a reproducer: `dlm-fuzz FILE...` runs
// each file through the same checks, so a crash input can be replayed in a debugger.
//
// Checks, beyond "no crash, no trap, no sanitizer report":
// - the framer yields the same frames whatever the split of the input;
// - every frame that decodes re-encodes to the identical bytes;
// - describing a decoded message (text and fields) never fails.

import DLMTransport
import Foundation
import NIOCore

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard !bytes.isEmpty else { return }
    // The first byte picks the chunk size the stream is fed in (1...256).
    let chunk = Int(bytes[0]) + 1
    let input = ByteBuffer(bytes: bytes.dropFirst())

    var whole: [ByteBuffer] = []
    var wholeFramer = DLMFramer()
    let wholeOK = (try? wholeFramer.append(input) { whole.append($0) }) != nil

    var pieces: [ByteBuffer] = []
    var framer = DLMFramer()
    var offset = 0
    var piecesOK = true
    while offset < input.readableBytes, piecesOK {
        let n = min(chunk, input.readableBytes - offset)
        let slice = input.getSlice(at: input.readerIndex + offset, length: n)!
        piecesOK = (try? framer.append(slice) { pieces.append($0) }) != nil
        offset += n
    }
    // Frames up to the first framing error are the same however the bytes arrive.
    precondition(wholeOK == piecesOK, "framing outcome depends on how the input is split")
    precondition(whole == pieces, "frames depend on how the input is split")

    for frame in whole {
        do throws(WireError) {
            let packet = try DLMPacket.decode(frame)
            let again = packet.encoded()
            precondition(again == frame, "re-encoding a decoded message changed its bytes")
            _ = packet.line
            _ = packet.kind
        } catch {
            _ = error.description
        }
    }
}

#if FUZZING
// With --sanitize=fuzzer SwiftPM links libFuzzer's main, which calls this.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    fuzzOne(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
@main
struct Reproducer {
    static func main() {
        let files = CommandLine.arguments.dropFirst()
        if files.isEmpty {
            print("usage: dlm-fuzz FILE... (replays fuzzer inputs; scripts/fuzz builds the fuzzing binary)")
        }
        for path in files {
            guard let data = FileManager.default.contents(atPath: path) else {
                print("cannot read \(path)")
                continue
            }
            data.withUnsafeBytes { fuzzOne($0) }
            print("ok \(path) (\(data.count) bytes)")
        }
    }
}
#endif
