//! The on-disk record log: the record format, the appending writer, the
//! replay reader and the snapshot rewrite used by compaction.
//!
//! One record is one line: the CRC-32 of its JSON as 8 hex digits, a space,
//! the JSON, `\n` (see the module doc of [`super`] for the record kinds).
//! Lines without the checksum (bare JSON, from before it) are still read.
//! The checksum tells a record that reached the disk whole from one that
//! was damaged after: a damaged last record is cut away with a warning; a
//! damaged one in the middle stops startup, and `--repair` keeps what came
//! before it.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::Fsync;
use crate::store::{Gid, MsgId, Uid};

/// Name of the log file inside the data dir.
pub(crate) const LOG_FILE: &str = "log";
/// Name of the snapshot being written by a compaction.
pub(crate) const TMP_FILE: &str = "log.tmp";

/// One mutation. Strings are `Cow` so the write path serialises borrowed
/// data without copying; replay always gets owned strings.
///
/// Records are read with serde and written by [`Record::write_json`], by
/// hand: every `/p` writes one, and every compaction one per message kept
/// (serde's derived map spent more on the keys than on the values). The
/// tests check the two agree byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(tag = "op")]
pub(crate) enum Record<'a> {
    /// A user was created: appid, uid, name, pass_hash.
    #[serde(rename = "user")]
    User {
        a: Cow<'a, str>,
        u: Uid,
        n: Cow<'a, str>,
        p: Cow<'a, str>,
    },
    /// A group was created: appid, gid, owner, name, members.
    #[serde(rename = "group")]
    Group {
        a: Cow<'a, str>,
        g: Gid,
        o: Uid,
        n: Cow<'a, str>,
        m: Cow<'a, [Uid]>,
    },
    /// A token was stored: selector, verifier, appid, uid, expires_at.
    #[serde(rename = "tok")]
    TokenPut {
        s: Cow<'a, str>,
        v: Cow<'a, str>,
        a: Cow<'a, str>,
        u: Uid,
        e: u64,
    },
    /// A token was forgotten: selector.
    #[serde(rename = "untok")]
    TokenDel { s: Cow<'a, str> },
    /// One message appended to several inboxes: appid, receivers, the msgid
    /// each receiver got, fromid, toid, datatype, content.
    #[serde(rename = "msg")]
    Msg {
        a: Cow<'a, str>,
        to: Cow<'a, [Uid]>,
        ids: Cow<'a, [MsgId]>,
        f: Uid,
        t: u64,
        d: u8,
        c: Cow<'a, str>,
        /// The sender's `cmsgid`, if it gave one, and until when a retry
        /// with it is recognised (unix seconds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        k: Option<Cow<'a, str>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x: Option<u64>,
        /// The message's fingerprint, with `k` (absent in logs written
        /// before cmsgids were checked against their message).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        h: Option<Cow<'a, str>>,
    },
    /// A send with `cmsgid` `k` from `f` is recognised until `x` (written
    /// by compaction, whose `msg` records carry no `k`).
    #[serde(rename = "once")]
    Once {
        a: Cow<'a, str>,
        f: Uid,
        k: Cow<'a, str>,
        x: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        h: Option<Cow<'a, str>>,
    },
    /// A user's ack position moved forward to `id`.
    #[serde(rename = "ack")]
    Ack { a: Cow<'a, str>, u: Uid, id: MsgId },
    /// A user's next msgid is at least `n` (written by compaction so msgids
    /// are never reused after a fully acked inbox was trimmed), and its
    /// inbox's epoch at least `e` (written when a reader was found ahead of
    /// the counter: see `Store::page`).
    #[serde(rename = "seq")]
    Seq {
        a: Cow<'a, str>,
        u: Uid,
        n: MsgId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e: Option<u64>,
    },
}

/// Serialises `rec` as one checksummed line (with its `\n`) into `buf`,
/// replacing its contents.
pub(crate) fn encode(rec: &Record<'_>, buf: &mut Vec<u8>) {
    buf.clear();
    encode_after(rec, buf);
}

/// Serialises `rec` as one checksummed line (with its `\n`) at the end of
/// `buf`, after what it holds.
fn encode_after(rec: &Record<'_>, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(b"00000000 ");
    rec.write_json(buf);
    let crc = crc32fast::hash(&buf[start + CRC_PREFIX..]);
    crate::auth::hex_in(&crc.to_be_bytes(), &mut buf[start..start + 8]);
    buf.push(b'\n');
}

impl Record<'_> {
    /// Appends the record's JSON object to `out`: the fields in the order
    /// they are declared, `op` first, an absent optional field left out (as
    /// serde would write it).
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = Object(out);
        match self {
            Record::User { a, u, n, p } => {
                o.op("user");
                o.str("a", a);
                o.int("u", *u);
                o.str("n", n);
                o.str("p", p);
            }
            Record::Group {
                a,
                g,
                o: owner,
                n,
                m,
            } => {
                o.op("group");
                o.str("a", a);
                o.int("g", *g);
                o.int("o", *owner);
                o.str("n", n);
                o.ints("m", m);
            }
            Record::TokenPut { s, v, a, u, e } => {
                o.op("tok");
                o.str("s", s);
                o.str("v", v);
                o.str("a", a);
                o.int("u", *u);
                o.int("e", *e);
            }
            Record::TokenDel { s } => {
                o.op("untok");
                o.str("s", s);
            }
            Record::Msg {
                a,
                to,
                ids,
                f,
                t,
                d,
                c,
                k,
                x,
                h,
            } => {
                o.op("msg");
                o.str("a", a);
                o.ints("to", to);
                o.ints("ids", ids);
                o.int("f", *f);
                o.int("t", *t);
                o.int("d", u64::from(*d));
                o.str("c", c);
                if let Some(k) = k {
                    o.str("k", k);
                }
                if let Some(x) = x {
                    o.int("x", *x);
                }
                if let Some(h) = h {
                    o.str("h", h);
                }
            }
            Record::Once { a, f, k, x, h } => {
                o.op("once");
                o.str("a", a);
                o.int("f", *f);
                o.str("k", k);
                o.int("x", *x);
                if let Some(h) = h {
                    o.str("h", h);
                }
            }
            Record::Ack { a, u, id } => {
                o.op("ack");
                o.str("a", a);
                o.int("u", *u);
                o.int("id", *id);
            }
            Record::Seq { a, u, n, e } => {
                o.op("seq");
                o.str("a", a);
                o.int("u", *u);
                o.int("n", *n);
                if let Some(e) = e {
                    o.int("e", *e);
                }
            }
        }
        o.0.push(b'}');
    }
}

/// A JSON object being written, its fields' keys plain ASCII (written
/// as they are), their values escaped by serde_json.
struct Object<'a>(&'a mut Vec<u8>);

impl Object<'_> {
    /// The first field: `{"op":"NAME"`.
    fn op(&mut self, name: &str) {
        self.0.extend_from_slice(b"{\"op\":\"");
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'"');
    }

    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        // Escaping a str into a Vec cannot fail.
        serde_json::to_writer(&mut *self.0, value).expect("a str always serialises");
    }

    fn int(&mut self, key: &str, value: u64) {
        self.key(key);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn ints(&mut self, key: &str, values: &[u64]) {
        self.key(key);
        self.0.push(b'[');
        let mut digits = itoa::Buffer::new();
        for (i, &v) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            self.0.extend_from_slice(digits.format(v).as_bytes());
        }
        self.0.push(b']');
    }
}

/// Bytes before a record's JSON: 8 hex digits and a space.
const CRC_PREFIX: usize = 9;

/// Reads one line (with or without its `\n`) back into a record.
pub fn decode(line: &[u8]) -> Result<Record<'static>, String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let json = match line.first() {
        // A record from before checksums.
        Some(b'{') => line,
        _ => {
            let (crc, json) = match line.split_at_checked(CRC_PREFIX) {
                Some((head, json)) if head[8] == b' ' => (&head[..8], json),
                _ => return Err("no checksum".into()),
            };
            let want = std::str::from_utf8(crc)
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or("a bad checksum field")?;
            if crc32fast::hash(json) != want {
                return Err("checksum mismatch".into());
            }
            json
        }
    };
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// Why an append failed.
pub(crate) struct AppendError {
    pub msg: String,
    /// The log could not be restored to its state before the append: it may
    /// hold a partial record, so no further write may follow it.
    pub broken: bool,
}

/// Staged records on their way to the log (see [`Log::begin_write`]).
pub(crate) struct StagedWrite {
    file: Arc<File>,
    buf: Vec<u8>,
    fsync: bool,
}

impl StagedWrite {
    /// One `write_all` of every record, then one fsync under [`Fsync::Always`].
    pub(crate) fn run(&self) -> io::Result<()> {
        (&*self.file).write_all(&self.buf)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// The open log file and its bookkeeping. Lives inside the store's mutex.
pub(crate) struct Log {
    dir: PathBuf,
    /// Shared with the fsync thread, which syncs it outside the lock.
    file: Arc<File>,
    fsync: Fsync,
    buf: Vec<u8>,
    /// Bytes in the file (everything written and kept).
    len: u64,
    /// Size right after the last open or compaction.
    base_len: u64,
    compact_min: u64,
    /// Written since the last fsync.
    dirty: bool,
    /// See [`Log::counts`].
    writes: u64,
    fsyncs: u64,
}

/// Capacity above which the write buffer is not kept for reuse.
const MAX_KEPT_BUF: usize = 1 << 20;

impl Log {
    pub(crate) fn new(dir: PathBuf, file: File, len: u64, fsync: Fsync, compact_min: u64) -> Log {
        Log {
            dir,
            file: Arc::new(file),
            fsync,
            buf: Vec::with_capacity(256),
            len,
            base_len: len,
            compact_min,
            dirty: false,
            writes: 0,
            fsyncs: 0,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends one record with a single `write_all`, then fsyncs it under
    /// [`Fsync::Always`]. On failure the file is cut back to its old length,
    /// so a failed record never stays in the log.
    pub(crate) fn append(&mut self, rec: &Record<'_>) -> Result<(), AppendError> {
        self.buf.clear();
        self.stage(rec);
        self.write_staged()
    }

    /// Adds `rec` to the records staged for the next [`Log::write_staged`].
    pub(crate) fn stage(&mut self, rec: &Record<'_>) {
        encode_after(rec, &mut self.buf);
    }

    /// Drops the staged records unwritten.
    pub(crate) fn discard_staged(&mut self) {
        self.buf.clear();
    }

    /// Whether every write is fsynced ([`Fsync::Always`]).
    pub(crate) fn fsyncs_each_write(&self) -> bool {
        self.fsync == Fsync::Always
    }

    /// Whether any record is staged.
    pub(crate) fn has_staged(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Writes every staged record with a single `write_all` (a commit
    /// group: all of them or none), then fsyncs once under
    /// [`Fsync::Always`]. On failure the file is cut back to its old
    /// length, so no record of a failed write stays in the log. The stage
    /// is empty afterwards either way.
    pub(crate) fn write_staged(&mut self) -> Result<(), AppendError> {
        let write = self.begin_write();
        let res = write.run();
        self.end_write(write, res)
    }

    /// Takes the staged records out, to be written by [`StagedWrite::run`]
    /// without the store's lock, then handed back to [`Log::end_write`].
    /// Nothing else may write to the log in between.
    pub(crate) fn begin_write(&mut self) -> StagedWrite {
        self.writes += 1;
        let fsync = self.fsync == Fsync::Always;
        if fsync {
            self.fsyncs += 1;
        }
        StagedWrite {
            file: Arc::clone(&self.file),
            buf: std::mem::take(&mut self.buf),
            fsync,
        }
    }

    /// Accounts for a write from [`Log::begin_write`] that returned `res`:
    /// on success the log has grown by it; on failure the file is cut back
    /// to its old length.
    pub(crate) fn end_write(
        &mut self,
        write: StagedWrite,
        res: io::Result<()>,
    ) -> Result<(), AppendError> {
        let written = write.buf.len() as u64;
        if write.buf.capacity() <= MAX_KEPT_BUF {
            // Reused; one big group's buffer is not kept for the small ones.
            self.buf = write.buf;
            self.buf.clear();
        }
        match res {
            Ok(()) => {
                self.len += written;
                self.dirty = self.fsync != Fsync::Always;
                Ok(())
            }
            Err(e) => {
                let msg = format!("log write failed: {e}");
                match self.file.set_len(self.len) {
                    Ok(()) => Err(AppendError { msg, broken: false }),
                    Err(e2) => Err(AppendError {
                        msg: format!("{msg}; cutting the log back failed too: {e2}"),
                        broken: true,
                    }),
                }
            }
        }
    }

    /// Writes (one per [`Log::write_staged`], successful or not) and
    /// fsyncs made by the writer itself under [`Fsync::Always`], since open.
    /// Compaction's writes and the background fsyncs are not counted.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.writes, self.fsyncs)
    }

    /// The file to fsync if anything was written since the last sync; clears
    /// the dirty flag. The caller syncs outside the lock.
    pub(crate) fn take_dirty(&mut self) -> Option<Arc<File>> {
        if self.dirty {
            self.dirty = false;
            Some(Arc::clone(&self.file))
        } else {
            None
        }
    }

    /// The current file, for an unconditional fsync.
    pub(crate) fn file(&mut self) -> Arc<File> {
        self.dirty = false;
        Arc::clone(&self.file)
    }

    /// Swaps the file, e.g. for a read-only one to make writes fail.
    #[cfg(test)]
    pub(crate) fn set_file_for_test(&mut self, file: File) {
        self.file = Arc::new(file);
    }

    /// Whether the log has grown past max(compact_min, 2 x base size).
    pub(crate) fn wants_compaction(&self) -> bool {
        self.len > self.compact_min.max(self.base_len.saturating_mul(2))
    }

    /// After a failed compaction: wait for the log to double again before retrying.
    pub(crate) fn postpone_compaction(&mut self) {
        self.base_len = self.len;
    }

    /// Replaces the log with a snapshot: `write` emits every record of the
    /// live state into `log.tmp`, which is fsynced, renamed over `log`, and
    /// the dir fsynced. The log keeps being appended to through the new file.
    pub(crate) fn rewrite<F>(&mut self, write: F) -> io::Result<()>
    where
        F: FnOnce(&mut dyn FnMut(&Record<'_>) -> io::Result<()>) -> io::Result<()>,
    {
        let from = self.len;
        let snapshot = write_snapshot(&self.dir, write)?;
        self.finish_rewrite(snapshot, from)?.run()
    }

    /// Completes a rewrite whose snapshot was written (maybe by another
    /// thread, without the store's lock) while the log was `from` bytes
    /// long: copies what was appended since onto the snapshot, renames it
    /// over `log` and switches to it. On failure the old log stays in use
    /// and the temporary file is removed.
    ///
    /// What is left is given back ([`AfterSwitch`]) for the caller to run
    /// once it has released the store's lock: closing the old log, which
    /// frees its blocks (tens of ms for a large one). Under
    /// [`Fsync::Always`] the copy and the rename are fsynced here, as every
    /// write is; under [`Fsync::EverySec`] those fsyncs are left too: they
    /// took 5 to 20 ms under load, every writer waiting, and what they
    /// cover is under a second old, as any record the once-a-second fsync
    /// has not reached yet (the snapshot and the rounds copied before were
    /// fsynced already; Redis's everysec fsyncs a rewritten AOF in the
    /// background too).
    pub(crate) fn finish_rewrite(
        &mut self,
        (file, len): (File, u64),
        from: u64,
    ) -> io::Result<AfterSwitch> {
        let tmp = self.dir.join(TMP_FILE);
        let now = self.fsyncs_each_write();
        let done = self.copy_tail(&file, from).and_then(|tail| {
            if now {
                file.sync_all()?;
            }
            fs::rename(&tmp, self.dir.join(LOG_FILE))?;
            Ok(tail)
        });
        let tail = match done {
            Ok(tail) => tail,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // From here on `log` is the new file: switch to it whatever happens.
        self.len = len + tail;
        self.base_len = self.len;
        let old = std::mem::replace(&mut self.file, Arc::new(file));
        self.dirty = false;
        let sync = (Arc::clone(&self.file), self.dir.clone());
        let sync = if now {
            AfterSwitch::sync(sync)?;
            None
        } else {
            Some(sync)
        };
        Ok(AfterSwitch { sync, old })
    }

    /// Appends the log's bytes from `from` to its end onto `to`.
    fn copy_tail(&self, to: &File, from: u64) -> io::Result<u64> {
        copy_range(&self.dir, to, from, self.len)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What a compaction's switch of files leaves for after the store's lock
/// (see [`Log::finish_rewrite`]): under [`Fsync::EverySec`] the fsyncs of
/// the new log's last records and of the directory that holds its new
/// name; and the old log to close.
#[must_use = "the new log is not durable until it runs"]
pub(crate) struct AfterSwitch {
    sync: Option<(Arc<File>, PathBuf)>,
    /// Closed by the drop, its blocks freed: it was renamed over.
    old: Arc<File>,
}

impl AfterSwitch {
    pub(crate) fn run(self) -> io::Result<()> {
        let AfterSwitch { sync, old } = self;
        drop(old);
        sync.map_or(Ok(()), AfterSwitch::sync)
    }

    fn sync((file, dir): (Arc<File>, PathBuf)) -> io::Result<()> {
        file.sync_data()?;
        sync_dir(&dir)
    }
}

/// Writes and fsyncs a snapshot into `log.tmp` in `dir`; returns the file
/// (open for appending) and its length. Needs no lock: only compaction
/// writes `log.tmp`, one at a time.
pub(crate) fn write_snapshot<F>(dir: &Path, write: F) -> io::Result<(File, u64)>
where
    F: FnOnce(&mut dyn FnMut(&Record<'_>) -> io::Result<()>) -> io::Result<()>,
{
    let tmp = dir.join(TMP_FILE);
    let _ = fs::remove_file(&tmp);
    let res = (|| {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 16, &file);
        let mut buf = Vec::with_capacity(256);
        let mut len = 0u64;
        write(&mut |rec| {
            encode(rec, &mut buf);
            len += buf.len() as u64;
            out.write_all(&buf)
        })?;
        out.flush()?;
        drop(out);
        // The bulk reaches the disk here, outside any lock; the fsync after
        // the tail is appended then has little left to do.
        file.sync_all()?;
        Ok((file, len))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Past this many bytes logged since the last round, [`catch_up`] copies
/// another round without the lock.
const CATCH_UP_LEFT: u64 = 64 * 1024;
/// Most rounds [`catch_up`] copies: each is shorter than the one before
/// (a copy is quicker than the writes it copies), unless the disk stalls.
const CATCH_UP_ROUNDS: usize = 8;

/// Copies onto a snapshot written while the log was `from` bytes long
/// (`snapshot`: the file and its length) what the log gained since, without
/// the store's lock, and fsyncs it: round after round while the log
/// (`log_len` reads its length, briefly taking the lock) has gained more
/// than [`CATCH_UP_LEFT`]. Then [`Log::finish_rewrite`], under the lock,
/// has only the last few records to copy and fsync. Returns the snapshot
/// and how far into the log it reaches. Needs no lock: bytes below the
/// log's length never change, and only compaction writes `log.tmp`.
pub(crate) fn catch_up(
    dir: &Path,
    (file, mut len): (File, u64),
    mut from: u64,
    mut log_len: impl FnMut() -> io::Result<u64>,
) -> io::Result<((File, u64), u64)> {
    let copied = (|| {
        for _ in 0..CATCH_UP_ROUNDS {
            let upto = log_len()?;
            if upto.saturating_sub(from) <= CATCH_UP_LEFT {
                break;
            }
            len += copy_range(dir, &file, from, upto)?;
            from = upto;
            file.sync_data()?;
        }
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = fs::remove_file(dir.join(TMP_FILE));
        return Err(e);
    }
    Ok(((file, len), from))
}

/// Appends bytes `from..upto` of the log in `dir` onto `to`; returns how
/// many.
fn copy_range(dir: &Path, to: &File, from: u64, upto: u64) -> io::Result<u64> {
    let tail = upto - from;
    if tail > 0 {
        let mut src = File::open(dir.join(LOG_FILE))?;
        src.seek(SeekFrom::Start(from))?;
        let copied = io::copy(&mut src.take(tail), &mut &*to)?;
        if copied != tail {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "log shorter than expected",
            ));
        }
    }
    Ok(tail)
}

/// Fsyncs a directory so a created or renamed entry in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What replaying a log found.
pub(crate) struct Replayed {
    /// The log, opened for appending.
    pub file: File,
    /// Its length after what was cut.
    pub len: u64,
    /// What was cut away and why, for the operator (empty if nothing).
    pub cut: Option<String>,
}

/// Opens (creating if needed) the log in `dir` and feeds every record to
/// `apply`, with its 1-based line number. A torn or damaged last line (no
/// `\n`, a bad checksum, not parsable) is cut away. A damaged line before
/// the last one, or a record `apply` rejects, is an error naming the line,
/// unless `repair`: then the log is cut there, keeping everything before.
pub(crate) fn replay<F>(dir: &Path, repair: bool, apply: F) -> Result<Replayed, String>
where
    F: FnMut(Record<'static>, usize) -> Result<(), String>,
{
    let path = dir.join(LOG_FILE);
    let _ = fs::remove_file(dir.join(TMP_FILE)); // a compaction that died
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if !existed {
        sync_dir(dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    }
    let total = file.metadata().map_err(|e| e.to_string())?.len();
    let mut reader = BufReader::with_capacity(1 << 16, &file);
    let scan = read_records(&mut reader, repair, apply).map_err(|e| match e {
        ScanError::Read(e) => format!("cannot read {}: {e}", path.display()),
        ScanError::Refused { lineno, why, good } => format!(
            "{}: line {lineno} {why}; the {} lines before it are intact: start \
             once with --repair to keep them and drop the {} bytes from line \
             {lineno} on",
            path.display(),
            lineno - 1,
            total - good,
        ),
    })?;
    drop(reader);
    let cut = scan.cut.map(|why| {
        format!(
            "{}: cut {} bytes from line {} on: {why}",
            path.display(),
            total - scan.good,
            scan.lineno
        )
    });
    if cut.is_some() {
        file.set_len(scan.good)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot cut {}: {e}", path.display()))?;
    }
    Ok(Replayed {
        file,
        len: scan.good,
        cut,
    })
}

/// Where [`read_records`] stopped.
struct Scan {
    /// Bytes of complete, applied records: where the log is cut, if it is.
    good: u64,
    /// The line it stopped at (the first not applied, if any was cut).
    lineno: usize,
    /// Why everything from `good` on is to be dropped, if it is.
    cut: Option<String>,
}

enum ScanError {
    Read(io::Error),
    /// A damaged or rejected line that is not the last one (and no repair).
    Refused {
        lineno: usize,
        why: String,
        good: u64,
    },
}

/// The replay loop on any reader: feeds each complete, intact line to
/// `apply` with its 1-based line number. A last line without `\n`, or a
/// damaged last line, is a torn tail: reading stops before it. A damaged or
/// rejected line before the last is refused, or with `repair` cut there.
fn read_records<R, F>(reader: &mut R, repair: bool, mut apply: F) -> Result<Scan, ScanError>
where
    R: BufRead,
    F: FnMut(Record<'static>, usize) -> Result<(), String>,
{
    let mut line = Vec::with_capacity(256);
    let mut good: u64 = 0;
    let mut lineno = 0;
    let mut cut = None;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(ScanError::Read)?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if line.last() != Some(&b'\n') {
            // A record cut short: only possible at EOF.
            cut = Some(format!("line {lineno} is torn (no end of line)"));
            break;
        }
        let why = match decode(&line) {
            Ok(rec) => match apply(rec, lineno) {
                Ok(()) => {
                    good += n as u64;
                    continue;
                }
                Err(e) => format!("is rejected ({e})"),
            },
            Err(e) => {
                if reader.fill_buf().map_err(ScanError::Read)?.is_empty() {
                    // Damage at the very end, e.g. after a crash.
                    cut = Some(format!("line {lineno}, the last, is damaged ({e})"));
                    break;
                }
                format!("is corrupt ({e})")
            }
        };
        if !repair {
            return Err(ScanError::Refused { lineno, why, good });
        }
        cut = Some(format!("repair: line {lineno} {why}"));
        break;
    }
    Ok(Scan { good, lineno, cut })
}

/// What [`scan_bytes`] read from a log's bytes.
#[doc(hidden)]
#[derive(Debug)]
pub struct Scanned {
    /// Each record replay would apply: its 1-based line number and the
    /// record as the writer encodes it (one line with its `\n`).
    pub records: Vec<(usize, Vec<u8>)>,
    /// Bytes replay keeps; the log is cut to this length if `torn`.
    pub good: u64,
    pub torn: bool,
}

/// Runs replay's reader over `bytes` as if they were the log file, without
/// a file or a store: for fuzzing (tests/fuzz) and tests, not for the
/// server. An `Err` is the line replay would refuse to start on
/// (`line N ...`).
#[doc(hidden)]
pub fn scan_bytes(bytes: &[u8]) -> Result<Scanned, String> {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let scan = read_records(&mut io::BufReader::new(bytes), false, |rec, lineno| {
        encode(&rec, &mut buf);
        records.push((lineno, buf.clone()));
        Ok(())
    })
    .map_err(|e| match e {
        ScanError::Read(e) => format!("cannot read: {e}"),
        ScanError::Refused { lineno, why, .. } => format!("line {lineno} {why}"),
    })?;
    Ok(Scanned {
        records,
        good: scan.good,
        torn: scan.cut.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_format_is_short_json_lines() {
        let rec = Record::Msg {
            a: "test".into(),
            to: Cow::Borrowed(&[2, 3]),
            ids: Cow::Borrowed(&[5, 9]),
            f: 1,
            t: 7,
            d: 2,
            c: "hi".into(),
            k: None,
            x: None,
            h: None,
        };
        let mut buf = Vec::new();
        encode(&rec, &mut buf);
        let json = "{\"op\":\"msg\",\"a\":\"test\",\"to\":[2,3],\"ids\":[5,9],\"f\":1,\"t\":7,\"d\":2,\"c\":\"hi\"}";
        let crc = crc32fast::hash(json.as_bytes());
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            format!("{crc:08x} {json}\n")
        );
        assert_eq!(decode(&buf).unwrap(), rec);
        // A line from before checksums still reads.
        assert_eq!(decode(format!("{json}\n").as_bytes()).unwrap(), rec);
        // One flipped bit anywhere is caught.
        for i in 0..buf.len() - 1 {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(
                decode(&bad).is_err(),
                "a flipped bit at byte {i} went unnoticed"
            );
        }
    }

    /// One record of every kind and shape, with strings that need
    /// escaping and the largest numbers.
    fn every_kind() -> Vec<Record<'static>> {
        vec![
            Record::User {
                a: "x".into(),
                u: 1,
                n: "bob\n\"q\"".into(),
                p: "$argon2id$...".into(),
            },
            Record::Group {
                a: "x".into(),
                g: 1,
                o: 1,
                n: "g".into(),
                m: Cow::Owned(vec![1, 2]),
            },
            Record::TokenPut {
                s: "sel".into(),
                v: "ver".into(),
                a: "x".into(),
                u: 1,
                e: 99,
            },
            Record::TokenDel { s: "sel".into() },
            Record::Ack {
                a: "x".into(),
                u: 1,
                id: 3,
            },
            Record::Seq {
                a: "x".into(),
                u: 1,
                n: 4,
                e: None,
            },
            Record::Seq {
                a: "x".into(),
                u: 1,
                n: 9,
                e: Some(2),
            },
            Record::Msg {
                a: "x".into(),
                to: Cow::Owned(vec![2]),
                ids: Cow::Owned(vec![1]),
                f: 1,
                t: 2,
                d: 1,
                c: "c".into(),
                k: Some("client-7".into()),
                x: Some(1000),
                h: Some("00ff".into()),
            },
            Record::Once {
                a: "x".into(),
                f: 1,
                k: "client-8".into(),
                x: 2000,
                h: None,
            },
            Record::Once {
                a: "\u{7f}\u{1}\t".into(),
                f: u64::MAX,
                k: "\\/\u{2028}".into(),
                x: 0,
                h: Some(String::new().into()),
            },
            Record::Msg {
                a: "应用".into(),
                to: Cow::Owned(vec![]),
                ids: Cow::Owned(vec![]),
                f: 0,
                t: u64::MAX,
                d: u8::MAX,
                c: "\"\\\n\r\u{0}\u{1f}😀 </script>".into(),
                k: None,
                x: Some(u64::MAX),
                h: None,
            },
        ]
    }

    #[test]
    fn records_are_written_as_serde_writes_them() {
        for rec in every_kind() {
            let mut hand = Vec::new();
            rec.write_json(&mut hand);
            let serde = serde_json::to_vec(&rec).unwrap();
            assert_eq!(
                String::from_utf8(hand).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn every_record_kind_round_trips() {
        let mut buf = Vec::new();
        for rec in every_kind() {
            encode(&rec, &mut buf);
            assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(decode(&buf).unwrap(), rec);
        }
    }

    fn collect(dir: &Path) -> Result<(Vec<Record<'static>>, u64), String> {
        let mut out = Vec::new();
        let done = replay(dir, false, |r, _| {
            out.push(r);
            Ok(())
        })?;
        Ok((out, done.len))
    }

    #[test]
    fn replay_cuts_torn_tail_but_rejects_mid_file_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let good = "{\"op\":\"untok\",\"s\":\"a\"}\n";
        fs::write(
            dir.path().join(LOG_FILE),
            format!("{good}{good}{{\"op\":\"unt"),
        )
        .unwrap();
        let (recs, len) = collect(dir.path()).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(len, 2 * good.len() as u64);
        assert_eq!(fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(), len);

        // An unparsable but complete last line is a torn tail too.
        fs::write(dir.path().join(LOG_FILE), format!("{good}\0\0\0\n")).unwrap();
        assert_eq!(collect(dir.path()).unwrap().0.len(), 1);

        fs::write(dir.path().join(LOG_FILE), format!("{good}garbage\n{good}")).unwrap();
        let err = collect(dir.path()).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn append_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let Replayed { file, len, .. } = replay(dir.path(), false, |_, _| Ok(())).unwrap();
        assert_eq!(len, 0);
        let mut log = Log::new(dir.path().to_path_buf(), file, len, Fsync::Always, 10);
        for _ in 0..3 {
            log.append(&Record::TokenDel { s: "abc".into() })
                .map_err(|e| e.msg)
                .unwrap();
        }
        assert!(log.wants_compaction());
        log.rewrite(|emit| emit(&Record::TokenDel { s: "z".into() }))
            .unwrap();
        assert!(!log.wants_compaction());
        log.append(&Record::TokenDel { s: "y".into() })
            .map_err(|e| e.msg)
            .unwrap();
        assert!(!dir.path().join(TMP_FILE).exists());
        let (recs, len) = collect(dir.path()).unwrap();
        assert_eq!(
            recs,
            vec![
                Record::TokenDel { s: "z".into() },
                Record::TokenDel { s: "y".into() }
            ]
        );
        assert_eq!(len, log.len());
    }

    /// A compaction copies the records logged while its snapshot was
    /// written in rounds without the lock ([`catch_up`]), then the last few
    /// under it: every record lands once, in order, after the snapshot.
    #[test]
    fn a_tail_caught_up_in_rounds_keeps_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let Replayed { file, len, .. } = replay(dir.path(), false, |_, _| Ok(())).unwrap();
        let mut log = Log::new(dir.path().to_path_buf(), file, len, Fsync::EverySec, 10);
        let del = |i: usize| Record::TokenDel {
            s: format!("{i:0100}").into(),
        };
        // Appends records numbered on from `next` until the log grew by `bytes`.
        let append = |log: &mut Log, next: &mut usize, bytes: u64| {
            let upto = log.len() + bytes;
            while log.len() < upto {
                log.append(&del(*next)).map_err(|e| e.msg).unwrap();
                *next += 1;
            }
        };
        let mut next = 0;
        append(&mut log, &mut next, 1000);
        let (from, in_snapshot) = (log.len(), next);
        let snapshot =
            write_snapshot(dir.path(), |emit| emit(&Record::TokenDel { s: "z".into() })).unwrap();
        // Two rounds' worth, each more than is left for the lock; the
        // second grows while the first is copied.
        append(&mut log, &mut next, 2 * CATCH_UP_LEFT);
        let first = log.len();
        append(&mut log, &mut next, CATCH_UP_LEFT + 1);
        let second = log.len();
        append(&mut log, &mut next, 100);
        let lens = [first, second, log.len()];
        let mut asked = 0;
        let (snapshot, reached) = catch_up(dir.path(), snapshot, from, || {
            asked += 1;
            Ok(lens[asked - 1])
        })
        .unwrap();
        assert_eq!((asked, reached), (3, second), "two rounds, then the lock");
        let after = log.finish_rewrite(snapshot, reached).unwrap();
        // Under everysec the switch's fsyncs are the caller's, after the lock.
        assert!(after.sync.is_some(), "the fsyncs left for later");
        after.run().unwrap();
        append(&mut log, &mut next, 1);
        let (recs, len) = collect(dir.path()).unwrap();
        let mut want = vec![Record::TokenDel { s: "z".into() }];
        want.extend((in_snapshot..next).map(del));
        assert_eq!(recs, want);
        assert_eq!(len, log.len());
    }
}
