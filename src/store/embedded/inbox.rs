//! A user's un-acked messages, in chunks shared by reference count.
//!
//! A compaction's snapshot shares every user with the live state (see
//! `App` in `state.rs`), and the first write to a user while it is shared
//! copies the user. With the inbox one `VecDeque` of up to `--inbox-cap`
//! (10,000) messages, that copy was the whole inbox, a reference count
//! bumped per message, under the store's lock: a busy server copied every
//! inbox it wrote to just after a compaction began, and a commit group
//! waited tens of milliseconds. Here the inbox is a list of chunks of at
//! most [`CHUNK`] messages, each behind its own `Arc`: copying the inbox
//! copies the list (a reference count per chunk), and a write then copies
//! at most the one chunk it changes (the last on an append, the first on
//! a trim or an ack) if the snapshot still holds it.
//!
//! Messages are appended at the back only and taken from the front only,
//! so every chunk but the first and the last holds exactly [`CHUNK`]; no
//! chunk is ever empty.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::store::{Message, MsgId};

/// Most messages in one chunk. A chunk's `VecDeque` grows by doubling up
/// to it, so a short inbox holds no more room than before.
pub(crate) const CHUNK: usize = 64;

/// A message in an inbox, with the sequence number of the append that
/// created it: one append (one `msg` record) has one `seq` across all its
/// receivers, which lets compaction write it back as one record, in order.
#[derive(Clone)]
pub(crate) struct Entry {
    pub seq: u64,
    pub msg: Message,
}

type Chunk = VecDeque<Entry>;

/// Un-acked messages in msgid order (see the module doc).
#[derive(Clone, Default)]
pub(crate) struct Inbox {
    chunks: VecDeque<Arc<Chunk>>,
}

impl Inbox {
    pub fn len(&self) -> usize {
        match self.chunks.len() {
            0 => 0,
            1 => self.chunks[0].len(),
            n => self.chunks[0].len() + self.chunks[n - 1].len() + (n - 2) * CHUNK,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn push_back(&mut self, entry: Entry) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push_back(entry),
            _ => {
                let mut chunk = VecDeque::new();
                chunk.push_back(entry);
                self.chunks.push_back(Arc::new(chunk));
            }
        }
    }

    /// Takes the oldest message off.
    pub fn pop_front(&mut self) {
        self.drop_front(1);
    }

    /// Takes off the oldest messages while `done` holds for them.
    pub fn pop_while(&mut self, mut done: impl FnMut(&Entry) -> bool) {
        while let Some(first) = self.chunks.front() {
            let n = first.iter().take_while(|e| done(e)).count();
            if n == 0 {
                break;
            }
            let whole = n == first.len();
            self.drop_front(n);
            if !whole {
                break;
            }
        }
        // The list's room follows the inbox down, as the messages' does.
        let cap = self.chunks.capacity();
        if cap > 16 && self.chunks.len() < cap / 4 {
            self.chunks.shrink_to(self.chunks.len() * 2);
        }
    }

    /// Drops the first `n` messages of the first chunk (`n` at most its
    /// length): the whole chunk if that is all of it, without copying it.
    fn drop_front(&mut self, n: usize) {
        let Some(first) = self.chunks.front_mut() else {
            return;
        };
        if n >= first.len() {
            self.chunks.pop_front();
        } else {
            Arc::make_mut(first).drain(..n);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The messages with msgid `from` or later, in order.
    pub fn from(&self, from: MsgId) -> impl Iterator<Item = &Entry> {
        let first = self
            .chunks
            .partition_point(|c| c.back().is_some_and(|e| e.msg.msgid < from));
        let skip = self
            .chunks
            .get(first)
            .map_or(0, |c| c.partition_point(|e| e.msg.msgid < from));
        self.chunks.range(first..).flat_map(|c| c.iter()).skip(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(msgid: MsgId) -> Entry {
        Entry {
            seq: msgid,
            msg: Message {
                msgid,
                fromid: 1,
                toid: 2,
                datatype: 1,
                content: Arc::from(msgid.to_string()),
            },
        }
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Entry>) -> Vec<MsgId> {
        it.map(|e| e.msg.msgid).collect()
    }

    /// An inbox of `a..=b`, appended one by one.
    fn inbox(a: MsgId, b: MsgId) -> Inbox {
        let mut inbox = Inbox::default();
        for id in a..=b {
            inbox.push_back(entry(id));
        }
        inbox
    }

    /// Checks the chunks' invariant and that the inbox holds `want`.
    fn check(inbox: &Inbox, want: &[MsgId]) {
        let n = inbox.chunks.len();
        for (i, c) in inbox.chunks.iter().enumerate() {
            assert!(!c.is_empty(), "chunk {i} of {n} is empty");
            assert!(c.len() <= CHUNK);
            if i > 0 && i + 1 < n {
                assert_eq!(c.len(), CHUNK, "middle chunk {i} of {n} not full");
            }
        }
        assert_eq!(ids(inbox.iter()), want);
        assert_eq!(inbox.len(), want.len());
        assert_eq!(inbox.is_empty(), want.is_empty());
    }

    #[test]
    fn appends_and_trims_keep_every_message_once_in_order() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let mut inbox = inbox(1, n as MsgId);
            let mut want: Vec<MsgId> = (1..=n as MsgId).collect();
            check(&inbox, &want);
            // Over a cap, one off the front for each one on the back.
            for id in n as MsgId + 1..=n as MsgId + 2 * CHUNK as MsgId + 3 {
                if !want.is_empty() {
                    inbox.pop_front();
                    want.remove(0);
                }
                inbox.push_back(entry(id));
                want.push(id);
                check(&inbox, &want);
            }
        }
    }

    #[test]
    fn an_ack_takes_whole_chunks_and_part_of_one() {
        let all = 3 * CHUNK as MsgId + 10;
        for acked in [
            0,
            1,
            5,
            CHUNK as MsgId,
            CHUNK as MsgId + 1,
            2 * CHUNK as MsgId + 7,
            all,
        ] {
            let mut inbox = inbox(1, all);
            inbox.pop_while(|e| e.msg.msgid <= acked);
            let want: Vec<MsgId> = (acked + 1..=all).collect();
            check(&inbox, &want);
        }
        // A long inbox acked down gives its list's room back.
        let mut inbox = inbox(1, 200 * CHUNK as MsgId);
        inbox.pop_while(|e| e.msg.msgid <= 199 * CHUNK as MsgId);
        assert!(inbox.chunks.capacity() < 16, "{}", inbox.chunks.capacity());
    }

    #[test]
    fn reading_from_a_msgid_finds_it_in_any_chunk() {
        // Starting mid-chunk: the first chunk short, the last not full.
        let mut inbox = inbox(1, 4 * CHUNK as MsgId + 3);
        inbox.pop_while(|e| e.msg.msgid <= 10);
        let (lo, hi) = (11, 4 * CHUNK as MsgId + 3);
        for from in [
            0,
            1,
            lo,
            lo + 1,
            CHUNK as MsgId,
            CHUNK as MsgId + 1,
            3 * CHUNK as MsgId,
            hi,
            hi + 1,
            hi + 100,
        ] {
            let want: Vec<MsgId> = (from.max(lo)..=hi).collect();
            assert_eq!(ids(inbox.from(from)), want, "from {from}");
        }
        assert_eq!(ids(Inbox::default().from(1)), Vec::<MsgId>::new());
    }

    /// A copy (what a snapshot holds) shares every chunk; a write to the
    /// original copies only the chunk it changes, and the copy keeps
    /// every message it had.
    #[test]
    fn a_copy_shares_chunks_and_a_write_copies_one() {
        let all = 3 * CHUNK as MsgId + 10;
        let mut live = inbox(1, all);
        let copy = live.clone();
        let shared = |live: &Inbox| -> Vec<bool> {
            live.chunks
                .iter()
                .map(|c| copy.chunks.iter().any(|s| Arc::ptr_eq(c, s)))
                .collect()
        };
        assert_eq!(shared(&live), [true; 4]);
        live.push_back(entry(all + 1));
        assert_eq!(shared(&live), [true, true, true, false]);
        live.pop_front();
        assert_eq!(shared(&live), [false, true, true, false]);
        live.pop_while(|e| e.msg.msgid <= CHUNK as MsgId);
        assert_eq!(shared(&live), [true, true, false]);
        assert_eq!(ids(copy.iter()), (1..=all).collect::<Vec<_>>());
        check(&live, &(CHUNK as MsgId + 1..=all + 1).collect::<Vec<_>>());
    }
}
