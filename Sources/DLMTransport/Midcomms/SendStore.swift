import NIOCore

/// Where `MidcommsPeer` keeps the encoded DLM_OPTS it has sent until they are acknowledged:
/// back to back in a few large buffers ("chunks"), so that a message costs no allocation of
/// its own. A message is known by its `Ref`; `bytes(_:)` gives a slice of its chunk (no copy).
///
/// Messages are encoded straight into the newest chunk (`tail`), which we own alone while
/// nobody holds a slice of it: a slice handed out in an action shares the chunk's storage, and
/// writing into shared storage would copy it (ByteBuffer copy-on-write; correct, only slow).
/// So `MidcommsPeer` takes the slices for its `.write` actions only at the end of `handle`,
/// after the last append of that call; a driver that carries out the actions and drops them
/// before its next `handle` (as lowcomms does: it copies frames into its write batch) keeps the
/// tail unshared. A driver that keeps frames longer only makes the next append copy the tail.
/// Should a slice of the tail be taken before an append all the same, that append starts a
/// new chunk instead.
struct SendStore: Sendable {
    /// A stored message: chunk serial number, offset and length in the chunk.
    struct Ref: Sendable {
        var chunk: Int
        var offset: UInt32
        var length: UInt32
    }

    /// A chunk stops taking messages at this size (then a new one starts).
    static let chunkLimit = 64 * 1024
    /// The first chunk's capacity; later ones start with their predecessor's.
    static let firstCapacity = 4 * 1024

    /// Full chunks still holding unacknowledged messages, oldest first.
    private var sealed = CircularBuffer<ByteBuffer>()
    /// Serial number of `sealed.first` (or of `tail` when `sealed` is empty).
    private var firstSerial = 0
    /// The chunk messages are appended to; its serial is `firstSerial + sealed.count`.
    private var tail: ByteBuffer
    /// A slice of `tail` was handed out since the last `beginHandling()`.
    private var tailShared = false
    private let allocator: ByteBufferAllocator

    init(allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.allocator = allocator
        tail = allocator.buffer(capacity: Self.firstCapacity)
    }

    private var tailSerial: Int { firstSerial + sealed.count }

    /// Called at the start of every event: slices handed out before are assumed dropped.
    @inline(__always)
    mutating func beginHandling() {
        tailShared = false
    }

    /// Appends one message written by `encode` (which appends to the buffer it is given).
    @inline(__always)
    mutating func append(reserving length: Int, _ encode: (inout ByteBuffer) -> Void) -> Ref {
        if tailShared || tail.writerIndex + length > Self.chunkLimit {
            if tail.writerIndex > 0 {
                let capacity = max(tail.capacity, length)
                sealed.append(tail)
                tail = allocator.buffer(capacity: capacity)
            }
            tailShared = false
        }
        let offset = tail.writerIndex
        encode(&tail)
        return Ref(chunk: tailSerial, offset: UInt32(offset), length: UInt32(tail.writerIndex - offset))
    }

    /// The bytes of a stored message (a slice sharing the chunk's storage).
    @inline(__always)
    mutating func bytes(_ ref: Ref) -> ByteBuffer {
        let chunk: ByteBuffer
        if ref.chunk == tailSerial {
            tailShared = true
            chunk = tail
        } else {
            chunk = sealed[sealed.index(sealed.startIndex, offsetBy: ref.chunk - firstSerial)]
        }
        return chunk.getSlice(at: Int(ref.offset), length: Int(ref.length)) ?? ByteBuffer()
    }

    /// Frees the chunks older than `oldest` (the oldest message still stored), or every
    /// message when `oldest` is nil.
    mutating func release(keeping oldest: Ref?) {
        guard let oldest else {
            firstSerial += sealed.count
            sealed.removeAll(keepingCapacity: true)
            tail.clear()
            tailShared = false
            return
        }
        while firstSerial < oldest.chunk, !sealed.isEmpty {
            sealed.removeFirst()
            firstSerial += 1
        }
    }

    /// Bytes held in chunks (for tests).
    var retainedBytes: Int { sealed.reduce(tail.writerIndex) { $0 + $1.writerIndex } }
    var chunkCount: Int { sealed.count + 1 }
}
