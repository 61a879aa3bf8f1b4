//! Giving freed heap back to the system.
//!
//! glibc's allocator keeps what a thread frees in that thread's arena for
//! the next allocation, and returns it to the system only from the top of
//! an arena. A burst leaves its memory behind: a connect storm's request
//! buffers, the tables the router outgrew, a bulk provisioning's bodies.
//! Measured on one process that took 18,500 streams in five seconds: 29.9
//! MB resident, 10.3 MB after one `malloc_trim(0)` (docs/c1m.md). Resident
//! memory is the figure operators size hosts by, so a thread here trims
//! the heap once what it freed since it last did (or since the heap's
//! low point) is a sixty-fourth of the process, 256 KiB at least: at
//! 500,000 streams over 26 processes, a looser bound (an eighth, a MiB at
//! least) left 68 bytes a stream resident (docs/c1m.md).
//!
//! What is in use and what is held free are scraped live
//! (`haoshuo_heap_*` in docs/API.md); on other C libraries nothing is
//! trimmed and those gauges are absent.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

/// Freed heap below which a trim is not worth its walk over the arenas.
const MIN_FREE: u64 = 256 << 10;
/// A trim waits for freed heap of this share of the process (1/64): one
/// walk per so much given back.
const SHARE: u64 = 64;

/// The allocator's account of the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heap {
    /// Bytes handed out and not freed (mmapped blocks included).
    pub in_use: u64,
    /// Bytes freed and kept by the allocator for later (resident or not).
    pub free: u64,
}

/// The heap's account now, if the C library gives one.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap() -> Option<Heap> {
    // SAFETY: mallinfo2 reads the allocator's statistics and has no
    // preconditions.
    let m = unsafe { libc::mallinfo2() };
    Some(Heap {
        in_use: (m.uordblks + m.hblkhd) as u64,
        free: (m.fordblks + m.fsmblks) as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap() -> Option<Heap> {
    None
}

/// Returns the whole free pages of every arena to the system; whether any
/// memory was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

/// This process's resident memory in bytes, from /proc/self/statm.
pub fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Whether to trim: the allocator holds `free` bytes now, and held `low`
/// at its lowest since the last trim (or the start); the process is
/// resident in `rss` bytes. What was freed since that low point is memory
/// the process touched and let go, resident until trimmed (what a trim
/// gave back stays counted as free, so it does not count again). A trim
/// is due once that is a sixty-fourth of the process (256 KiB at least): a
/// process whose heap holds steady or grows with what it holds costs no
/// walks over the arenas; one that held a burst and let it go gives it
/// back.
fn due(free: u64, low: u64, rss: u64) -> bool {
    free.saturating_sub(low) >= MIN_FREE.max(rss / SHARE)
}

/// What the trimmer did, for `/metrics`.
#[derive(Debug, Default)]
pub struct TrimStats {
    trims: AtomicU64,
    returned: AtomicU64,
    took_ns: AtomicU64,
}

impl TrimStats {
    /// Trims made.
    pub fn trims(&self) -> u64 {
        self.trims.load(Relaxed)
    }

    /// Resident bytes the trims gave back, summed.
    pub fn returned(&self) -> u64 {
        self.returned.load(Relaxed)
    }

    /// Time spent trimming (each trim holds an arena's lock while it
    /// walks it), summed.
    pub fn took(&self) -> Duration {
        Duration::from_nanos(self.took_ns.load(Relaxed))
    }
}

/// The thread that trims; it stops when dropped.
pub struct Trimmer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Trimmer {
    /// Looks every `every` whether a trim is due, and makes it.
    pub fn start(every: Duration, stats: Arc<TrimStats>) -> std::io::Result<Trimmer> {
        let (stop, stopped) = bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("haoshuo-trim".into())
            .spawn(move || {
                let now = || Some((resident()?, heap()?.free));
                // Without both figures (not glibc, no /proc) there is
                // nothing to go by.
                let Some((_, mut low)) = now() else { return };
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let Some((rss, free)) = now() else { return };
                    low = low.min(free);
                    if !due(free, low, rss) {
                        continue;
                    }
                    let started = Instant::now();
                    trim();
                    let took = started.elapsed();
                    let Some((trimmed, free)) = now() else { return };
                    low = free;
                    stats.trims.fetch_add(1, Relaxed);
                    let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
                    stats.took_ns.fetch_add(took, Relaxed);
                    stats
                        .returned
                        .fetch_add(rss.saturating_sub(trimmed), Relaxed);
                }
            })?;
        Ok(Trimmer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_trim_is_due_once_a_sixty_fourth_of_the_process_was_freed_since() {
        // A process of 640 MiB that freed 10 MiB since the heap's low point.
        assert!(due(15 * MIB, 5 * MIB, 640 * MIB));
        assert!(!due(15 * MIB - 1, 5 * MIB, 640 * MIB), "less than a 64th");
        // A small process: 256 KiB at least.
        assert!(!due(5 * MIB + MIB / 8, 5 * MIB, 8 * MIB));
        assert!(due(5 * MIB + MIB / 4, 5 * MIB, 8 * MIB));
        // Nothing freed since (a heap holding steady, or growing with what
        // it holds): nothing to give back, however much is free.
        assert!(!due(50 * MIB, 50 * MIB, 800 * MIB));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_shows_as_free_and_a_trim_gives_it_back() {
        // Many small blocks (below the mmap threshold, so from an arena),
        // every other one kept so the freed ones cannot merge into the
        // top of the heap and be returned by free() itself.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 8 * 1024]).collect();
        let (kept, freed): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        let before = heap().unwrap();
        drop(freed);
        let after = heap().unwrap();
        // 16 MiB went from in use to free; tests running beside this one
        // allocate and free too, hence the loose bounds.
        let (went, came) = (
            before.in_use.saturating_sub(after.in_use),
            after.free.saturating_sub(before.free),
        );
        for moved in [went, came] {
            assert!(
                (8 * MIB..32 * MIB).contains(&moved),
                "{before:?} -> {after:?}"
            );
        }
        // A block past the largest mmap threshold glibc moves to (32 MiB)
        // is mapped on its own, and counts as in use all the same.
        let mapped = std::hint::black_box(vec![0u8; 64 * MIB as usize]);
        let with = heap().unwrap();
        let grown = with.in_use.saturating_sub(after.in_use);
        assert!(
            (56 * MIB..80 * MIB).contains(&grown),
            "{after:?} -> {with:?}"
        );
        drop(mapped);
        // (What it does to resident memory is checked on a server of its
        // own, in tests/metrics.rs: tests running beside this one move it.)
        assert!(trim(), "free pages in the middle of the heap were returned");
        drop(kept);
    }
}
