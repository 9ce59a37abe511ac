import CHiredis
#if canImport(Glibc)
import Glibc
#endif

/// The process's C heap, set up for a SwiftNIO server: buffers are allocated on one thread (an event loop reading
/// a reply) and freed on another (the task that used it). glibc gives each thread its own arena and, by default,
/// hands the free top of an arena back to the kernel once it passes 128 KB: under load the same pages were
/// returned and faulted in again all the time — 0.1–0.35 page faults per 6 KB `GET`, ~15 % of the client's CPU
/// in `bench/redis` with 2 event loops (bench/HISTORY.md, "The Redis client"). Keeping a few MB per arena stops that
/// for the cost of that much resident memory per busy arena.
package enum ProcessHeap {
    /// Keeps up to `trimThreshold` bytes free at the top of each arena, grows arenas by `topPad` extra bytes, and
    /// takes allocations under `mmapThreshold` from the arenas (glibc stops adapting its own 128 KB threshold once
    /// the others are set; it raises it up to 32 MB by itself otherwise, so large buffers stay out of `mmap`).
    /// Does nothing where the heap is not glibc's, or when the operator set any of these (`GLIBC_TUNABLES`'
    /// `glibc.malloc.*` or `MALLOC_*_` variables): their choice wins. Call once, at start.
    package static func keepFreedMemory(trimThreshold: Int32 = 4 << 20, topPad: Int32 = 1 << 20,
                                        mmapThreshold: Int32 = 4 << 20) {
        #if canImport(Glibc)
        if let tunables = getenv("GLIBC_TUNABLES"), String(cString: tunables).contains("glibc.malloc.") { return }
        for name in ["MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_"] where getenv(name) != nil {
            return
        }
        _ = kisgw_heap_keep_freed(trimThreshold, topPad, mmapThreshold)
        #endif
    }
}
