//! How the CPU backend's memory is kept between ops.
//!
//! burn-flex allocates a fresh buffer for every op's output and frees it when the last tensor using it
//! is dropped. glibc's malloc serves blocks above its mmap threshold (128 KiB, raised as blocks are
//! freed, at most 32 MiB) with their own `mmap`, returns them to the kernel on `free`, and trims the
//! heap's top above 128 KiB: every training step's activations, gradients and logits were
//! page-faulted and zeroed by the kernel again. Kept in the heap, the next step reuses the same
//! memory, and the peak does not grow (measured: see docs/performance.md). The cost: a
//! process keeps up to the trim threshold of freed memory instead of returning it (a long-running
//! `rlhf serve` included).

/// Blocks up to this size come from the heap (larger ones still get their own mapping).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 30;
/// Free memory at the heap's top is returned to the kernel only above this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;
/// The heap grows by this much beyond each request, so growing is rare.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: libc::c_int = 256 << 20;

/// Makes glibc keep freed memory for reuse (see the module docs); once per process, CPU runs only.
/// Elsewhere (other C libraries, other systems) the allocator is left as it is.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only sets the allocator's tuning parameters, under its own lock; a value it
        // refuses leaves that parameter as it was.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        });
    }
}
