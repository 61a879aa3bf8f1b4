//! The embedded store: all state in memory, every mutation appended to a log.
//!
//! # Design
//!
//! Like Redis with an append-only file: the whole state (users, groups,
//! tokens, un-acked inboxes) lives in memory, and every mutation is first
//! appended as one record to a log file in the data dir, then applied. At
//! open the log is replayed. IM state is small and hot, so reads are free
//! (a hash lookup under a mutex) and a write is one `write(2)`; it also
//! mirrors the Redis backend, so both behave alike.
//!
//! # Concurrency
//!
//! One [`Mutex`] guards the state and the log writer together, so the log
//! order is the apply order. Inside it a call validates, serialises its
//! record into a reused buffer, writes it and applies it; readers take the
//! same lock. The tokens are the exception: they have a lock of their own
//! (`state::Tokens`, an `RwLock`), changed only by callers that also hold
//! the state's lock, and a token check (every authenticated call) takes
//! that one alone, so it never waits behind a commit group's write.
//!
//! Message appends (`append`, `append_once`: every chat message) go
//! through group commit, a leader/follower scheme like LevelDB's writer
//! queue: a caller finding no leader becomes the leader at once, with its
//! own request (borrowed: the uncontended path copies nothing); otherwise
//! it puts an owned copy of its request in a small commit queue. The
//! leader takes the state lock, then every request queued by then (those
//! that arrived while it waited), validates its own and those in order
//! (each against the state as the earlier ones will leave it: msgids
//! follow on, a `cmsgid` sent earlier in the group is a retry or reused),
//! serialises the valid ones into one buffer and writes it with one
//! `write(2)`, applies the group in the same order, releases the lock and
//! hands every caller its own answer. The others sleep on a condvar until
//! their answer is posted; one of those still queued then leads the next
//! group. A request that fails validation fails alone.
//!
//! Under [`Fsync::Always`] the leader writes without the lock, since the
//! `fdatasync` is slow: it sets `writing`, releases the lock, writes the
//! buffer and fsyncs once, then takes the lock again, clears `writing` and
//! applies the group. Readers go on meanwhile (they see the group's
//! messages only once applied, after the fsync: never a message that is
//! not in the log); every other mutation (and a compaction's switch of
//! files) waits for `writing` to clear, so the state the group was
//! validated against is the one it is applied to, and no other record can
//! land between a failed write and its cut. Other mutations write one
//! record each, and fsync it, with the lock held throughout. Under
//! [`Fsync::EverySec`] the group's write is done with the lock held, like
//! any other (a `write(2)` to the page cache is quick).
//!
//! Under [`Fsync::EverySec`] a background thread fsyncs once a second if
//! anything was written, outside the lock. [`EmbeddedStore::log_writes`]
//! and [`EmbeddedStore::log_fsyncs`] count the writer's writes and fsyncs.
//!
//! # On-disk format
//!
//! The data dir holds `log`, `LOCK` and, during a compaction, `log.tmp`.
//! `log` is one JSON record per line (`\n`-terminated), tagged by `op`:
//!
//! | op      | fields                                     | meaning                                   |
//! |---------|--------------------------------------------|-------------------------------------------|
//! | `user`  | `a` appid, `u` uid, `n` name, `p` pass hash | user created                              |
//! | `group` | `a`, `g` gid, `o` owner, `n` name, `m` members | group created                           |
//! | `tok`   | `s` selector, `v` verifier, `a`, `u`, `e` expires_at | token stored                    |
//! | `untok` | `s`                                        | token deleted                             |
//! | `msg`   | `a`, `to` uids, `ids` msgids, `f` fromid, `t` toid, `d` datatype, `c` content | one message appended to every `to[i]` as `ids[i]` |
//! | `ack`   | `a`, `u`, `id`                             | ack position moved forward to `id`        |
//! | `seq`   | `a`, `u`, `n`, optional `e` epoch          | next msgid is at least `n` (compaction; a reader found ahead of the counter), epoch at least `e` |
//!
//! e.g. `{"op":"msg","a":"test","to":[2,3],"ids":[5,9],"f":1,"t":7,"d":2,"c":"hi"}`.
//! A group append is one record, so it is atomic; replay gives all its
//! receivers one shared `Arc<str>` content. Ids are written explicitly and
//! replay checks them (uids/gids dense from 1, msgids never going back).
//!
//! # Durability
//!
//! A mutation's record is written with a single `write_all` to the log
//! (opened `O_APPEND`) before the state changes and before the call returns
//! `Ok`, so anything answered ok survives `kill -9`; a group of appends is
//! one `write_all` of all its records, so they reach the log together or
//! not at all. [`Fsync::Always`] also `fdatasync`s before returning
//! (survives power loss); [`Fsync::EverySec`] loses at most about a second
//! on power loss. [`Store::flush`] fsyncs now.
//!
//! If a write (or an `Always` fsync) fails, e.g. disk full, the file is cut
//! back to its previous length, the state is left untouched and the call
//! returns [`StoreError::Unavailable`]; for a group, every request whose
//! record was in the write gets it, and so does one answered from an
//! earlier request of the same group (a retry of it), while one that
//! failed validation keeps its own error. If that cut fails too, or a
//! background/`flush` fsync fails, the store stops accepting writes
//! (`Unavailable`; reads still work) until it is reopened, since the log
//! can no longer be trusted to match the state.
//!
//! # Replay
//!
//! The log is read line by line. A torn last line (no trailing `\n`, or not
//! parsable, at EOF only: a write cut short by a crash) is truncated away.
//! An unparsable line before the end, or a record inconsistent with the
//! state before it, fails [`EmbeddedStore::open`] with `Unavailable` naming
//! the line number.
//!
//! # Compaction
//!
//! When the log grows past max([`Options::compact_min_bytes`], 2 x its size
//! after the last open/compaction), it is rewritten as a snapshot of the
//! live state in the same format (users, groups, tokens, un-acked messages,
//! `seq` for fully acked inboxes, acks) into `log.tmp`, which is fsynced,
//! renamed over `log`, and the dir fsynced. Tokens that expired more than a
//! day ago are dropped. The write that crossed the threshold takes a
//! snapshot of the state under the lock and starts a compaction thread,
//! which writes it without the lock, then copies onto it what was logged
//! meanwhile, also without the lock, round after round until a round has
//! little left ([`log::catch_up`]). Only then does it lock again, to copy
//! that little and switch files; under [`Fsync::Always`] it fsyncs them
//! there too, under [`Fsync::EverySec`] just after it lets go of the lock
//! (those fsyncs took 5 to 20 ms under load, every writer waiting; what
//! they cover is under a second old). It closes the old log only after
//! letting go too: the file system frees a large file's blocks on that
//! close, which held every writer up to 35 ms. Taking the snapshot copies no
//! inbox: users are shared with it, and one written meanwhile is copied
//! then, alone (copy on write, like the pages of Redis's forked child),
//! and of its inbox only the list of its shared chunks and the newest
//! messages, fewer than 64 (`inbox.rs`). Copied whole, the first write to each
//! of 1,000 users holding 10,000 messages took 0.28 to 0.56 s in all,
//! under the lock, in the commit groups just after a compaction began;
//! now 2 to 4 ms. It
//! copies the tokens and the remembered `cmsgid`s, in proportion to the
//! users, not to the messages. A failed compaction leaves the old log in
//! place and is retried once the log has doubled again.
//!
//! # Retention
//!
//! Acked messages are dropped from memory (and from the next snapshot);
//! `read` skips them.
//!
//! # Exclusivity
//!
//! `open` takes an exclusive `flock` on `LOCK`, so a second server (or a
//! second open in the same process) cannot use the same data dir.

mod commit;
mod inbox;
mod log;
mod state;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

use self::commit::{Committer, Outcome};
/// Replay's reader on plain bytes, for the fuzz targets in `tests/fuzz`.
#[doc(hidden)]
pub use self::log::{scan_bytes, Scanned};
use self::log::{Log, Record};
use self::state::{State, Tokens};
use super::{
    fingerprint, unix_now, Append, Fingerprint, Gid, Limit, MsgId, NewMessage, Once, Outcomes,
    Page, Result, Store, StoreError, TokenInfo, TokenRef, Uid,
};

/// When the log is fsynced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fsync {
    /// Before every mutating call returns (durable across power loss).
    Always,
    /// Once a second from a background thread, if anything was written.
    #[default]
    EverySec,
}

/// Log size below which no compaction happens (see [`Options::compact_min_bytes`]).
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 64 << 20;

/// How to open an [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct Options {
    /// The data dir; created if missing.
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// The log is compacted once it exceeds max(this, 2 x its size after the
    /// last open or compaction). [`DEFAULT_COMPACT_MIN_BYTES`] by default.
    pub compact_min_bytes: u64,
    /// Most un-acked messages one inbox keeps (0: no limit); beyond it the
    /// oldest are dropped.
    pub inbox_cap: usize,
    /// Cut the log at a damaged record in its middle instead of refusing
    /// to start (everything before it is kept).
    pub repair: bool,
}

impl Options {
    /// `dir` with [`Fsync::EverySec`] and the default compaction threshold.
    pub fn new(dir: impl Into<PathBuf>) -> Options {
        Options {
            dir: dir.into(),
            fsync: Fsync::default(),
            compact_min_bytes: DEFAULT_COMPACT_MIN_BYTES,
            inbox_cap: 0,
            repair: false,
        }
    }
}

struct Inner {
    state: State,
    log: Log,
    /// Why writes are refused, once the log cannot be trusted.
    broken: Option<String>,
    /// The last automatic compaction failure, if the last attempt failed.
    compaction_error: Option<String>,
    /// Expired `cmsgid`s are purged when this many are remembered.
    once_purge_at: usize,
    /// The background compaction under way, if any.
    compaction: Option<JoinHandle<()>>,
    /// Compactions finished since open (for tests and diagnostics).
    compactions: u64,
    /// A commit group's write (and fsync) is under way without the lock:
    /// no other mutation may start until it ends (see [`Core::idle`]).
    writing: bool,
    /// Callers waiting on [`Core::idle`] (woken only if any).
    idle_waiters: usize,
    /// A commit group's outcomes, kept for the buffer's capacity.
    outcomes: Vec<Outcome>,
    /// A commit group's msgids, which its outcomes give ranges of; kept
    /// for the buffer's capacity.
    group_ids: Vec<MsgId>,
    /// A commit group's next msgid by receiver, kept for its capacity
    /// (see `commit::Pending`).
    group_next: HashMap<Uid, MsgId>,
    /// The `Core` holding this `Inner`, for the compaction thread to lock
    /// when done.
    me: Weak<Core>,
}

/// The state lock, and what waits on it.
struct Core {
    inner: Mutex<Inner>,
    /// Notified when a commit group's write ends ([`Inner::writing`]).
    idle: Condvar,
    /// Runs in a commit group's leader just before its write, without the
    /// state lock: lets a test act while the write is under way.
    #[cfg(test)]
    before_write: Mutex<Option<Box<dyn FnMut() + Send>>>,
}

impl Core {
    /// Refuses every write from now on: an fsync of the log, made without
    /// the lock, failed (`what`), so the log cannot be trusted.
    fn fsync_failed(&self, what: &str, e: &io::Error) {
        if let Ok(mut inner) = self.lock() {
            inner.broken = Some(format!("{what} failed: {e}; reopen the store"));
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| unavailable("store state poisoned by a panic"))
    }

    /// Waits, if a commit group's write is under way, until it has ended:
    /// every mutation other than a group's starts only then, so that the
    /// log order stays the apply order.
    fn wait_idle<'a>(&self, mut inner: MutexGuard<'a, Inner>) -> Result<MutexGuard<'a, Inner>> {
        while inner.writing {
            inner.idle_waiters += 1;
            inner = self
                .idle
                .wait(inner)
                .map_err(|_| unavailable("store state poisoned by a panic"))?;
            inner.idle_waiters -= 1;
        }
        Ok(inner)
    }

    /// The lock, for a mutation: once no commit group is writing.
    fn lock_idle(&self) -> Result<MutexGuard<'_, Inner>> {
        self.wait_idle(self.lock()?)
    }
}

/// Remembered `cmsgid`s below which no purge runs.
const ONCE_PURGE_MIN: usize = 4096;

type Shared = Arc<Core>;

/// The embedded, log-backed [`Store`]. See the module doc.
pub struct EmbeddedStore {
    inner: Shared,
    /// The commit queue of `append` and `append_once`.
    commits: Committer,
    dir: PathBuf,
    /// Stops (by being dropped) and joins the fsync thread.
    syncer: Option<(Sender<()>, JoinHandle<()>)>,
    /// Holds the `flock` on `LOCK` until the store is dropped.
    _lock: File,
    fsync: Fsync,
    /// The state's tokens, checked without the state's lock.
    tokens: Tokens,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn unavailable(msg: impl Into<String>) -> StoreError {
    StoreError::Unavailable(msg.into())
}

/// Takes an exclusive, non-blocking `flock` on `dir/LOCK`.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock takes a plain fd and no pointers; `file` owns the fd and
    // keeps it open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(unavailable(if e.kind() == io::ErrorKind::WouldBlock {
            format!(
                "data dir {} is already in use by another haoshuo server (lock on {} is held)",
                dir.display(),
                path.display()
            )
        } else {
            format!("cannot lock {}: {e}", path.display())
        }));
    }
    Ok(file)
}

/// Fsyncs the log if anything was written since the last sync.
fn sync_dirty(core: &Core) {
    let Ok(mut guard) = core.lock() else { return };
    let Some(file) = guard.log.take_dirty() else {
        return;
    };
    drop(guard);
    if let Err(e) = file.sync_data() {
        core.fsync_failed("log fsync", &e);
    }
}

fn sync_loop(inner: Shared, stop: crossbeam_channel::Receiver<()>) {
    loop {
        let stopping = !matches!(
            stop.recv_timeout(Duration::from_secs(1)),
            Err(RecvTimeoutError::Timeout)
        );
        sync_dirty(&inner);
        if stopping {
            return;
        }
    }
}

impl EmbeddedStore {
    /// Opens the store in `opts.dir` (creating it), locks it and replays the log.
    pub fn open(opts: Options) -> Result<EmbeddedStore> {
        fs::create_dir_all(&opts.dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", opts.dir.display())))?;
        let lock = lock_dir(&opts.dir)?;
        let mut state = State::with_inbox_cap(opts.inbox_cap);
        let log::Replayed { file, len, cut } =
            log::replay(&opts.dir, opts.repair, |rec, _line| state.apply(rec))
                .map_err(unavailable)?;
        if let Some(cut) = cut {
            // Once, at start: what the operator must know was lost.
            warn!("{cut}");
        }
        let log = Log::new(
            opts.dir.clone(),
            file,
            len,
            opts.fsync,
            opts.compact_min_bytes,
        );
        let tokens = state.tokens();
        let inner = Arc::new_cyclic(|me| Core {
            inner: Mutex::new(Inner {
                state,
                log,
                broken: None,
                compaction_error: None,
                once_purge_at: ONCE_PURGE_MIN,
                compaction: None,
                compactions: 0,
                writing: false,
                idle_waiters: 0,
                outcomes: Vec::new(),
                group_ids: Vec::new(),
                group_next: HashMap::new(),
                me: me.clone(),
            }),
            idle: Condvar::new(),
            #[cfg(test)]
            before_write: Mutex::new(None),
        });
        let syncer = match opts.fsync {
            Fsync::Always => None,
            Fsync::EverySec => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let shared = Arc::clone(&inner);
                let handle = std::thread::Builder::new()
                    .name("store-fsync".into())
                    .spawn(move || sync_loop(shared, rx))
                    .map_err(|e| unavailable(format!("cannot start the fsync thread: {e}")))?;
                Some((tx, handle))
            }
        };
        Ok(EmbeddedStore {
            inner,
            commits: Committer::default(),
            dir: opts.dir,
            syncer,
            _lock: lock,
            fsync: opts.fsync,
            tokens,
        })
    }

    /// Rewrites the log as a snapshot of the live state now, in the
    /// caller's thread (see the module doc); blocks every caller while it
    /// runs. Automatic compactions run in the background instead.
    pub fn compact(&self) -> Result<()> {
        self.wait_for_compaction()?;
        let mut inner = self.inner.lock_idle()?;
        if let Some(why) = &inner.broken {
            return Err(unavailable(why.clone()));
        }
        compact(&mut inner).map_err(|e| unavailable(format!("compaction failed: {e}")))
    }

    /// How many background compactions finished since the store was opened.
    pub fn compactions(&self) -> Result<u64> {
        Ok(self.lock()?.compactions)
    }

    /// Waits for a background compaction, if one is running.
    pub fn wait_for_compaction(&self) -> Result<()> {
        let running = self.lock()?.compaction.take();
        if let Some(handle) = running {
            let _ = handle.join();
        }
        Ok(())
    }

    /// Current size of the log file in bytes.
    pub fn log_len(&self) -> Result<u64> {
        Ok(self.lock()?.log.len())
    }

    /// How many times the log was written to (one `write(2)` per mutation
    /// or per commit group of appends) since the store was opened; failed
    /// writes count, compaction's do not. With [`EmbeddedStore::log_fsyncs`],
    /// for metrics and to see group commit at work.
    pub fn log_writes(&self) -> Result<u64> {
        Ok(self.lock()?.log.counts().0)
    }

    /// How many fsyncs the writers made under [`Fsync::Always`] (one per
    /// write) since the store was opened; the background fsyncs of
    /// [`Fsync::EverySec`] and [`Store::flush`] are not counted.
    pub fn log_fsyncs(&self) -> Result<u64> {
        Ok(self.lock()?.log.counts().1)
    }

    /// Why the last automatic compaction failed, if it did.
    pub fn compaction_error(&self) -> Result<Option<String>> {
        Ok(self.lock()?.compaction_error.clone())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock()
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // The data dir's lock is released with the store: no compaction may
        // still be writing in it then.
        let _ = self.wait_for_compaction();
        if let Some((stop, handle)) = self.syncer.take() {
            drop(stop); // disconnects: the thread syncs once more and exits
            let _ = handle.join();
        }
    }
}

fn compact(inner: &mut Inner) -> io::Result<()> {
    inner.state.purge_tokens(unix_now());
    let Inner { state, log, .. } = inner;
    log.rewrite(|emit| state.snapshot().write(emit))
}

impl Inner {
    /// Writes `rec` to the log; on failure nothing was written.
    fn commit(&mut self, rec: &Record<'_>) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(unavailable(why.clone()));
        }
        self.log.append(rec).map_err(|e| {
            if e.broken {
                self.broken = Some(format!("{}; reopen the store", e.msg));
            }
            unavailable(e.msg)
        })
    }

    /// Runs after a mutation was applied: once the log has grown enough,
    /// starts a compaction in the background, like Redis's
    /// BGREWRITEAOF. Under the lock it only takes a snapshot (no inbox is
    /// copied: see [`state::App`]) and notes the log's length; another
    /// thread writes the snapshot and copies what was logged meanwhile,
    /// then takes the lock again to copy the last few records and switch
    /// files. Writers wait for the snapshot to be taken and for those last
    /// records, not for the rewrite nor for the bulk of its tail.
    fn after_write(&mut self) {
        if self.compaction.as_ref().is_some_and(|h| !h.is_finished())
            || !self.log.wants_compaction()
        {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        self.state.purge_tokens(unix_now());
        let snapshot = self.state.snapshot();
        let from = self.log.len();
        let dir = self.log.dir().to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("haoshuo-compaction".into())
            .spawn(move || {
                let written = log::write_snapshot(&dir, |emit| snapshot.write(emit));
                drop(snapshot);
                let log_len = || match me.lock_idle() {
                    Ok(inner) => Ok(inner.log.len()),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                let written = written.and_then(|s| log::catch_up(&dir, s, from, log_len));
                let Ok(mut inner) = me.lock_idle() else {
                    return;
                };
                let done = written.and_then(|(s, from)| inner.log.finish_rewrite(s, from));
                let after = match done {
                    Ok(after) => {
                        inner.compaction_error = None;
                        inner.compactions += 1;
                        Some(after)
                    }
                    Err(e) => {
                        error!("compaction failed (retried when the log doubles again): {e}");
                        inner.log.postpone_compaction();
                        inner.compaction_error = Some(e.to_string());
                        None
                    }
                };
                // The switch's fsyncs and the old log's close, without the
                // lock: writers go on meanwhile.
                drop(inner);
                if let Err(e) = after.map_or(Ok(()), log::AfterSwitch::run) {
                    me.fsync_failed("log fsync after compaction", &e);
                }
            });
        match spawned {
            Ok(handle) => self.compaction = Some(handle),
            Err(e) => {
                error!("compaction could not start (retried when the log doubles again): {e}");
                self.log.postpone_compaction();
                self.compaction_error = Some(e.to_string());
            }
        }
    }
}

impl Store for EmbeddedStore {
    /// A write goes to the page cache; only [`Fsync::Always`] waits for
    /// the disk before answering.
    fn waits_on_io(&self) -> bool {
        self.fsync == Fsync::Always
    }

    fn create_user(&self, appid: &str, username: &str, pass_hash: &str) -> Result<Uid> {
        let mut inner = self.inner.lock_idle()?;
        let uid = inner.state.check_user(appid, username)?;
        inner.commit(&Record::User {
            a: Cow::Borrowed(appid),
            u: uid,
            n: Cow::Borrowed(username),
            p: Cow::Borrowed(pass_hash),
        })?;
        inner.state.add_user(appid, uid, username, pass_hash);
        inner.after_write();
        Ok(uid)
    }

    fn find_user(&self, appid: &str, username: &str) -> Result<Option<(Uid, String)>> {
        Ok(self.lock()?.state.find_user(appid, username))
    }

    fn user_exists(&self, appid: &str, uid: Uid) -> Result<bool> {
        Ok(self.lock()?.state.user_exists(appid, uid))
    }

    fn create_group(
        &self,
        appid: &str,
        owner: Uid,
        gname: &str,
        members: &[Uid],
        max_owned: usize,
    ) -> Result<Gid> {
        let mut inner = self.inner.lock_idle()?;
        let gid = inner.state.check_group(appid, owner, members, max_owned)?;
        inner.commit(&Record::Group {
            a: Cow::Borrowed(appid),
            g: gid,
            o: owner,
            n: Cow::Borrowed(gname),
            m: Cow::Borrowed(members),
        })?;
        inner.state.add_group(appid, gid, owner, gname, members);
        inner.after_write();
        Ok(gid)
    }

    fn group_members(&self, appid: &str, gid: Gid) -> Result<Option<Vec<Uid>>> {
        Ok(self.lock()?.state.group_members(appid, gid))
    }

    fn put_token(&self, selector: &str, info: &TokenInfo, keep: usize) -> Result<Vec<String>> {
        let mut inner = self.inner.lock_idle()?;
        if !inner.state.user_exists(&info.appid, info.uid) {
            return Err(StoreError::NoSuchUser(info.uid));
        }
        let revoked = inner.state.tokens_beyond(&info.appid, info.uid, keep);
        for s in &revoked {
            inner.commit(&Record::TokenDel {
                s: Cow::Borrowed(s),
            })?;
            inner.state.delete_token(s);
        }
        inner.commit(&Record::TokenPut {
            s: Cow::Borrowed(selector),
            v: Cow::Borrowed(&info.verifier),
            a: Cow::Borrowed(&info.appid),
            u: info.uid,
            e: info.expires_at,
        })?;
        inner.state.put_token(selector, info);
        inner.after_write();
        Ok(revoked)
    }

    fn get_token(&self, selector: &str) -> Result<Option<TokenInfo>> {
        Ok(self.tokens.get(selector))
    }

    /// Checked in place, under the tokens' own lock, not the state's: a
    /// compare, nothing copied, never behind a commit group's write.
    fn check_token(
        &self,
        selector: &str,
        check: &mut dyn FnMut(TokenRef<'_>) -> bool,
    ) -> Result<bool> {
        Ok(self.tokens.check(selector, check))
    }

    fn delete_token(&self, _appid: &str, _uid: Uid, selector: &str) -> Result<()> {
        let mut inner = self.inner.lock_idle()?;
        if !self.tokens.contains(selector) {
            return Ok(());
        }
        inner.commit(&Record::TokenDel {
            s: Cow::Borrowed(selector),
        })?;
        inner.state.delete_token(selector);
        inner.after_write();
        Ok(())
    }

    fn append(&self, appid: &str, to: &[Uid], msg: &NewMessage) -> Result<Vec<MsgId>> {
        let ids = self.submit(Append {
            appid,
            to,
            msg,
            once: None,
        })?;
        // Only a send with a cmsgid can be a retry (`None`).
        Ok(ids.unwrap_or_default())
    }

    fn append_once(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: &Once,
    ) -> Result<Vec<Option<MsgId>>> {
        let ids = self.submit(Append {
            appid,
            to,
            msg,
            once: Some(*once),
        })?;
        Ok(match ids {
            Some(ids) => ids.into_iter().map(Some).collect(),
            None => vec![None; to.len()],
        })
    }

    fn append_group(&self, group: &[Append<'_>], out: &mut Outcomes) {
        // One answer per send, in order (a panic while committing unwinds
        // through here instead).
        self.submit_group(group, &mut |i, answer| match answer {
            Ok(Some(ids)) => out.push_ok(ids.iter().copied().map(Some)),
            // A retry of a send stored before: every receiver has it.
            Ok(None) => out.push_ok(std::iter::repeat_n(None, group[i].to.len())),
            Err(e) => out.push_err(e),
        });
    }

    fn page(&self, appid: &str, uid: Uid, from: MsgId, limit: Limit) -> Result<Page> {
        let mut inner = self.lock()?;
        if inner.writing && inner.state.check_rebase(appid, uid, from)?.is_some() {
            // A write after all: not while a commit group is writing.
            inner = self.inner.wait_idle(inner)?;
        }
        let Some(reset) = inner.state.check_rebase(appid, uid, from)? else {
            return inner.state.page(appid, uid, from, limit);
        };
        inner.commit(&Record::Seq {
            a: Cow::Borrowed(appid),
            u: uid,
            n: from,
            e: Some(reset.epoch),
        })?;
        inner.state.set_seq(appid, uid, from, reset.epoch);
        inner.after_write();
        let mut page = inner.state.page(appid, uid, from, limit)?;
        page.reset = Some(reset);
        Ok(page)
    }

    fn ping(&self) -> Result<()> {
        match &self.lock()?.broken {
            Some(why) => Err(unavailable(why.clone())),
            None => Ok(()),
        }
    }

    fn acked(&self, appid: &str, uid: Uid) -> Result<MsgId> {
        self.lock()?.state.acked(appid, uid)
    }

    fn ack(&self, appid: &str, uid: Uid, endid: MsgId) -> Result<()> {
        let mut inner = self.inner.lock_idle()?;
        let Some(id) = inner.state.check_ack(appid, uid, endid)? else {
            return Ok(());
        };
        inner.commit(&Record::Ack {
            a: Cow::Borrowed(appid),
            u: uid,
            id,
        })?;
        inner.state.set_ack(appid, uid, id);
        inner.after_write();
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let file = self.lock()?.log.file();
        file.sync_data().map_err(|e| {
            self.inner.fsync_failed("log fsync", &e);
            unavailable(format!("log fsync failed: {e}"))
        })
    }
}
