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

/// Unmaps the pages of the binary's machine code and read-only data, and of the shared libraries', from the
/// process once start-up is over, and drops the binary's from the page cache. Configuration, migrations, session
/// restore and the first syncs touch much code and data that a running bot never uses again, and the kernel keeps
/// every page touched in the process's resident set until memory runs short.
///
/// What is dropped: the non-writable `PT_LOAD` segments of every loaded object (`dl_iterate_phdr`, under the
/// loader's lock, so no object comes or goes meanwhile), where `smaps` shows the file mapping under them holds
/// no page of its own, neither in memory (`Anonymous`) nor swapped out (`Swap`). Such pages are the file's, and
/// the kernel's own reclaim drops them whenever memory runs short: nothing can come back that reclaim could not
/// bring back too (a package upgrade writes a new file and renames it; the mapping keeps the old one). The
/// relocated data (RELRO) belongs to a writable segment and is never touched: dropping it would bring back the
/// file's unrelocated bytes. Three steps:
///
/// - `MADV_DONTNEED`: the pages leave the resident set;
/// - `POSIX_FADV_DONTNEED` on the binary: its pages that no process maps any more leave the page cache too. A
///   later fault reads its page from disk again, and the kernel's fault-around (which maps up to 64 KiB of
///   *cached* pages around every fault) finds fewer neighbours to map. Those pages were also charged to the
///   service's cgroup (systemd's `MemoryCurrent`);
/// - `MADV_RANDOM`: on kernels that honour it for code, a fault reads only its own page. Linux 6.18 does not: a
///   fault in an executable mapping reads a whole readahead window around it (measured: 8 MiB windows on a
///   disk with `read_ahead_kb` 8192), which is why the code a running bot uses is linked in one place
///   (scripts/link-order.rs; docs/benchmark.md).
///
/// The cost: the first use of cold code after READY (a management API call, a plugin's first job) reads it from
/// disk. Pages another process maps (a second daemon of the same binary, other programs' libc) stay in memory:
/// for those, only this process's RSS goes down. A debugger's or uprobe's breakpoints set before READY are lost
/// with the pages.
pub fn release_startup_code() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
        let clean = clean_file_mappings(&smaps);
        for_each_read_only_segment(|start, end| {
            for mapping in &clean {
                let (from, to) = (start.max(mapping.start), end.min(mapping.start + mapping.len));
                if from < to {
                    // SAFETY: [from, to) lies in a non-writable segment of a loaded object and in a private
                    // file mapping with no page of its own (above); a read-only mapping cannot gain one without
                    // an mprotect, which this program does not make after start-up. Dropping the pages only
                    // makes the next access fault them in again from the same file; MADV_RANDOM only changes
                    // how much the kernel reads ahead on such a fault.
                    unsafe {
                        libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED);
                        libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_RANDOM);
                    }
                }
            }
        });
        drop_unmapped_pages_of(std::path::Path::new("/proc/self/exe"));
    }
}

/// Calls `each(start, end)` with the page-aligned ranges of the non-writable `PT_LOAD` segments of every loaded
/// object (the binary, its libraries, the vDSO), under the dynamic loader's lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn for_each_read_only_segment(mut each: impl FnMut(usize, usize)) {
    unsafe extern "C" fn visit(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut libc::c_void) -> i32 {
        // SAFETY: the loader passes a valid `info` whose `dlpi_phdr` points at `dlpi_phnum` headers, and `data`
        // is the `&mut dyn FnMut` passed below, alive for the whole dl_iterate_phdr call.
        let (info, each) = unsafe { (&*info, &mut *(data as *mut &mut dyn FnMut(usize, usize))) };
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        // SAFETY: sysconf only reads a system constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        for header in headers.iter().filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0) {
            let start = (info.dlpi_addr + header.p_vaddr) as usize;
            let end = start + header.p_memsz as usize;
            // Whole pages inside the segment only.
            let (start, end) = (start.div_ceil(page) * page, end / page * page);
            if start < end {
                each(start, end);
            }
        }
        0
    }
    let mut each: &mut dyn FnMut(usize, usize) = &mut each;
    // SAFETY: `visit` only reads the loader's headers and calls `each`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), &mut each as *mut &mut dyn FnMut(usize, usize) as *mut libc::c_void);
    }
}

/// A mapping `release_startup_code` may drop.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    len: usize,
}

/// The private read-only (`r--p`, `r-xp`) mappings of files in `/proc/self/smaps` text that hold no page of
/// their own: `Anonymous` (copy-on-write pages in memory) and `Swap` (those swapped out) are both 0.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn clean_file_mappings(smaps: &str) -> Vec<Mapping> {
    struct Candidate {
        mapping: Mapping,
        anonymous: Option<u64>,
        swap: Option<u64>,
    }
    fn keep(candidate: Option<Candidate>, found: &mut Vec<Mapping>) {
        if let Some(c) = candidate.filter(|c| c.anonymous == Some(0) && c.swap == Some(0)) {
            found.push(c.mapping);
        }
    }
    let mut found = Vec::new();
    let mut candidate: Option<Candidate> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(first), Some(second)) = (fields.next(), fields.next()) else { continue };
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // start-end perms offset dev inode path: a new mapping.
            keep(candidate.take(), &mut found);
            let path = fields.nth(3);
            if !matches!(second, "r--p" | "r-xp") || !path.is_some_and(|p| p.starts_with('/')) {
                continue;
            }
            if let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
                let mapping = Mapping { start, len: end.saturating_sub(start) };
                candidate = Some(Candidate { mapping, anonymous: None, swap: None });
            }
        } else if let Some(c) = candidate.as_mut() {
            match first {
                "Anonymous:" => c.anonymous = second.parse().ok(),
                "Swap:" => c.swap = second.parse().ok(),
                _ => {}
            }
        }
    }
    keep(candidate, &mut found);
    found
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

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55a0c0000000-55a0c0100000 r--p 00000000 fd:01 42     /usr/bin/maubot
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
Swap:                  0 kB
55a0c0100000-55a0c0300000 r-xp 00100000 fd:01 42     /usr/bin/maubot
Anonymous:             0 kB
Swap:                  0 kB
55a0c0300000-55a0c0310000 r--p 00300000 fd:01 42     /usr/bin/maubot
Anonymous:            64 kB
Swap:                  0 kB
55a0c0310000-55a0c0318000 r--p 00310000 fd:01 42     /usr/bin/maubot
Anonymous:             0 kB
Swap:                 32 kB
55a0c0318000-55a0c0319000 rw-p 00318000 fd:01 42     /usr/bin/maubot
Anonymous:             4 kB
Swap:                  0 kB
7f0000000000-7f0000001000 r--s 00000000 fd:01 77     /var/lib/maubot/bot/state.sqlite3-shm
Anonymous:             0 kB
Swap:                  0 kB
7f0000002000-7f0000003000 r--p 00000000 00:00 0 
Anonymous:             0 kB
Swap:                  0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0      [vdso]
Anonymous:             0 kB
Swap:                  0 kB
7ffd00004000-7ffd00005000 r--p 00000000 fd:01 43     /usr/lib/libfoo.so
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_file_mappings_without_pages_of_their_own_are_released() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            vec![Mapping { start: 0x55a0c0000000, len: 0x100000 }, Mapping { start: 0x55a0c0100000, len: 0x200000 },],
            "the relocated RELRO segment (pages in memory or swapped out), writable, shared, anonymous and vDSO \
             mappings stay, and so does a mapping whose swap is unknown"
        );
    }

    /// Resident KiB of the mapping that starts at `start`, from /proc/self/smaps.
    fn resident_kib(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|line| !line.starts_with(&header));
        lines.find_map(|line| line.strip_prefix("Rss:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    }

    static GREETINGS: [&(dyn Fn() -> String + Sync); 2] = [&|| "hello".to_string(), &|| format!("{}", 42)];

    #[test]
    fn released_pages_leave_the_resident_set_and_the_program_runs_on() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let released = clean_file_mappings(&smaps);
        // The test binary's read-only data (the segment before its code): every page touched, so all resident.
        let data = smaps
            .lines()
            .filter(|line| line.contains(" r--p 00000000 ") && line.ends_with(exe.to_str().unwrap()))
            .map(|line| usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap())
            .next()
            .expect("the binary's first mapping");
        let len = released.iter().find(|m| m.start == data).expect("it is released").len;
        let sum = (0..len).step_by(4096).map(|offset| {
            // SAFETY: inside a readable mapping of this process.
            unsafe { std::ptr::read_volatile((data + offset) as *const u8) as u64 }
        });
        std::hint::black_box(sum.sum::<u64>());
        let before = resident_kib(data);
        assert!(before * 1024 >= len as u64 * 9 / 10, "touched: {before} KiB of {len} bytes");

        release_startup_code();

        let after = resident_kib(data);
        assert!(after < before / 2, "resident after release: {after} KiB (before: {before} KiB)");
        // Code, vtables and relocated pointers (RELRO, left alone) still work.
        let greetings = std::hint::black_box(&GREETINGS);
        assert_eq!(greetings.iter().map(|greet| greet()).collect::<Vec<_>>(), ["hello", "42"]);
    }
}
