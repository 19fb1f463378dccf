//! Process memory: glibc's allocator defaults suit programs with many busy threads, not a host of mostly idle
//! bots. Fewer arenas mean less fragmentation; after start-up (sessions restored, first syncs parsed) the freed
//! heap goes back to the system. Measured in docs/benchmark.md. No-ops where glibc is not the allocator.

/// One malloc arena for all threads (glibc's default is eight per core), set before any thread starts. The
/// daemon's threads are few and mostly idle, so they rarely contend for it.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// SQLite settings for many small databases (four per bot), made before any connection opens: no per-connection
/// lookaside buffers (about 30 KiB each, eight or more connections per bot), no up-front bulk allocation of
/// page-cache memory (pages are allocated as they are read, up to each connection's `cache_size`), and a soft
/// limit on SQLite's memory as a whole, so that page caches stop growing with the number of bots.
pub fn tune_sqlite() {
    use rusqlite::ffi;
    // SAFETY: sqlite3_config is called before SQLite is initialized (no connection exists yet), with the
    // argument types these options take. If it is too late, SQLite refuses (SQLITE_MISUSE) and changes nothing.
    unsafe {
        ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 0 as std::ffi::c_int, 0 as std::ffi::c_int);
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PAGECACHE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        );
        ffi::sqlite3_soft_heap_limit64(SQLITE_SOFT_HEAP_LIMIT);
    }
}

/// Above this much SQLite memory (all connections together), connections reuse their cached pages instead of
/// allocating more. Not a hard limit: SQLite still allocates what a statement needs.
pub const SQLITE_SOFT_HEAP_LIMIT: i64 = 1024 * 1024;

/// Returns free heap memory to the system (after start-up, which allocates and frees a lot).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory that is free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmaps the pages of the binary's own machine code from the process once start-up is over, and drops them
/// from the page cache. Configuration, migrations, session restore and the first syncs touch much code that a
/// running bot never uses again, and the kernel keeps every page touched in the process's resident set until
/// memory runs short. Three steps, on the executable mappings only:
///
/// - `MADV_DONTNEED`: the pages leave the resident set;
/// - `POSIX_FADV_DONTNEED` on the binary: its pages that no process maps any more leave the page cache too. A
///   later fault reads its page from disk again, and the kernel's fault-around (which maps up to 64 KiB of
///   *cached* pages around every fault) finds fewer neighbours to map. Those pages were also charged to the
///   service's cgroup (systemd's `MemoryCurrent`);
/// - `MADV_RANDOM`: on kernels that honour it for code, a fault reads only its own page. Linux 6.18 does not: a
///   fault in an executable mapping reads a whole readahead window around it (measured: 8 MiB windows on a
///   disk with `read_ahead_kb` 8192), which limits what the second step saves (docs/benchmark.md).
///
/// The cost: the first use of cold code after READY (a management API call, a plugin's first job) reads it from
/// disk. Pages another process maps (a second daemon of the same binary) stay where they are.
/// Safe for code pages only: they are never written, so mapping them again gives the same bytes (the read-only
/// data after relocation is not touched here). A debugger's or uprobe's breakpoints set before READY are lost
/// with the pages.
pub fn release_startup_code() {
    #[cfg(target_os = "linux")]
    {
        let (Ok(exe), Ok(maps)) = (std::fs::read_link("/proc/self/exe"), std::fs::read_to_string("/proc/self/maps"))
        else {
            return;
        };
        let Some(exe) = exe.to_str() else { return };
        for line in maps.lines() {
            // start-end perms offset dev inode path
            let mut fields = line.splitn(6, ' ');
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
            if perms != "r-xp" || fields.nth(3).map(str::trim_start) != Some(exe) {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else { continue };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                continue;
            };
            // SAFETY: the range is a private, never-written mapping of the executable file; dropping its pages
            // only makes the next access fault them in again from the same file, and MADV_RANDOM only changes
            // how much the kernel reads ahead on such a fault.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            }
        }
        drop_unmapped_pages_of(std::path::Path::new("/proc/self/exe"));
    }
}

/// Asks the kernel to drop the file's clean pages from the page cache where no process maps them.
#[cfg(target_os = "linux")]
fn drop_unmapped_pages_of(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else { return };
    // SAFETY: posix_fadvise only gives the kernel advice about the open file's cached pages.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Where the process's memory is, for /metrics and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set (VmRSS), and its anonymous part (heap, stacks).
    pub resident_bytes: u64,
    pub resident_anon_bytes: u64,
    /// Heap bytes handed out by malloc, and held free by it (fragmentation) — glibc only.
    pub heap_in_use_bytes: u64,
    pub heap_free_bytes: u64,
    /// Bytes SQLite holds: page caches, schemas, statements of every connection (the host database and every
    /// bot's stores).
    pub sqlite_bytes: u64,
}

pub fn usage() -> Usage {
    let mut usage = Usage::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let kib = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
            if line.starts_with("VmRSS:") {
                usage.resident_bytes = kib(line);
            } else if line.starts_with("RssAnon:") {
                usage.resident_anon_bytes = kib(line);
            }
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads allocator statistics.
        let info = unsafe { libc::mallinfo2() };
        usage.heap_in_use_bytes = (info.uordblks + info.hblkhd) as u64;
        usage.heap_free_bytes = info.fordblks as u64;
    }
    // SAFETY: sqlite3_memory_used reads a global counter.
    usage.sqlite_bytes = u64::try_from(unsafe { rusqlite::ffi::sqlite3_memory_used() }).unwrap_or(0);
    usage
}
