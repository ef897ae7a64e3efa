//! The `flowspect` binary: the desktop app (no arguments, or `flowspect gui`) and the
//! command line, both thin layers over the library.
mod cli;
mod gui;

fn main() {
    tune_allocator();
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Keep freed tensor buffers in the heap instead of giving them back to the kernel.
///
/// Every layer allocates and frees feature maps of several MiB. glibc's defaults hand
/// such blocks back (munmap, heap trim) and the next image faults the same pages in
/// again: at 512 px about 20,000 page faults per image, a third of the CPU time spent in
/// the kernel. Serving them from the heap (`flowspect bench` at 512 px, batch 1: BMR
/// about 75 -> 50 ms, post-processing 9 -> 3 ms) costs resident memory that would
/// be needed again by the next image anyway. When any `MALLOC_*` environment variable
/// is set, the user's allocator settings are left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    let user_set = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
    if user_set {
        return;
    }
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        // Blocks up to 32 MiB (glibc's maximum) come from the heap, not fresh mappings.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Return free memory at the top of the heap only beyond 1 GiB.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
