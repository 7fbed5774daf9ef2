//! Keep freed tensor buffers in the process instead of handing them back to the kernel.
//!
//! Flex allocates a fresh buffer for every intermediate tensor (megabytes each). With glibc's
//! defaults a freed block above the dynamic mmap threshold is unmapped, and free memory at the
//! top of the heap above the trim threshold is returned to the kernel, so the next op faults
//! every page in again and the kernel zeroes it: about 200 k page faults per forward pass of the
//! rollout bench's model, and 20–25 % of its time. Setting both thresholds keeps those pages
//! resident and reused (8.6 k faults per pass). Each setting alone is slower than the defaults:
//! fixing one turns off glibc's adjustment of the other.

use std::sync::Once;

/// Blocks up to this size come from the heap (glibc caps the setting at 32 MiB on 64-bit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of the heap is kept up to this much.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Applies the settings once per process (glibc only; elsewhere a no-op). Called when a model
/// is built on a CPU backend. It is process-wide: freed memory stays mapped for reuse, so the
/// resident size stays near its peak instead of shrinking between steps.
pub fn retain_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; both values are in glibc's range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    });
}
