//! A user's un-acked messages, in chunks shared by reference count.
//!
//! A compaction's snapshot shares every user with the live state (see
//! `App` in `state.rs`), and the first write to a user while it is shared
//! copies the user. With the inbox one `VecDeque` of up to `--inbox-cap`
//! (10,000) messages, that copy was the whole inbox, a reference count
//! bumped per message, under the store's lock: the first write to each of
//! 1,000 full inboxes took 0.28 to 0.56 s in all, in the commit groups
//! just after a compaction began. Here the inbox is a list of full,
//! immutable chunks of [`CHUNK`] messages, each behind its own `Arc`, and
//! a tail of fewer than [`CHUNK`], owned: copying the inbox copies the
//! list (a reference count per chunk) and the tail.
//!
//! An append goes to the tail, as it went to the one `VecDeque` before
//! (no more pointers to follow); a full tail is sealed into a chunk. The
//! oldest messages are taken off the first chunk by moving `head` past
//! them, and the chunk goes once all of it is taken: its taken messages
//! (fewer than [`CHUNK`]) stay in memory until then.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::store::{Message, MsgId};

/// Messages in one sealed chunk.
pub(crate) const CHUNK: usize = 64;

/// A message in an inbox, with the sequence number of the append that
/// created it: one append (one `msg` record) has one `seq` across all its
/// receivers, which lets compaction write it back as one record, in order.
#[derive(Clone)]
pub(crate) struct Entry {
    pub seq: u64,
    pub msg: Message,
}

/// Un-acked messages in msgid order (see the module doc).
#[derive(Clone, Default)]
pub(crate) struct Inbox {
    /// Full chunks of [`CHUNK`], oldest first.
    sealed: VecDeque<Arc<[Entry]>>,
    /// Messages of the first chunk already taken off (fewer than
    /// [`CHUNK`]; 0 when there is no chunk).
    head: usize,
    /// The newest messages, fewer than [`CHUNK`].
    tail: VecDeque<Entry>,
}

impl Inbox {
    pub fn len(&self) -> usize {
        self.sealed.len() * CHUNK - self.head + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_back(&mut self, entry: Entry) {
        self.tail.push_back(entry);
        if self.tail.len() == CHUNK {
            // The tail keeps its room for the next chunk.
            self.sealed.push_back(self.tail.drain(..).collect());
        }
    }

    /// Takes the oldest message off.
    pub fn pop_front(&mut self) {
        self.take_front(1);
    }

    /// Takes off the oldest messages while `done` holds for them.
    pub fn pop_while(&mut self, mut done: impl FnMut(&Entry) -> bool) {
        loop {
            let first = match self.sealed.front() {
                Some(chunk) => &chunk[self.head..],
                None => self.tail.as_slices().0,
            };
            let n = first.iter().take_while(|e| done(e)).count();
            if n == 0 {
                break;
            }
            let whole = n == first.len();
            self.take_front(n);
            if !whole {
                break;
            }
        }
        // The list's room follows the inbox down, as the messages' does.
        let cap = self.sealed.capacity();
        if cap > 16 && self.sealed.len() < cap / 4 {
            self.sealed.shrink_to(self.sealed.len() * 2);
        }
    }

    /// Takes off the first `n` messages of the first chunk (or, with none,
    /// of the tail's first slice); `n` at most what is left of it.
    fn take_front(&mut self, n: usize) {
        if self.sealed.is_empty() {
            self.tail.drain(..n.min(self.tail.len()));
            return;
        }
        self.head += n;
        if self.head >= CHUNK {
            self.sealed.pop_front();
            self.head = 0;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.messages_at(0, 0)
    }

    /// The messages with msgid `from` or later, in order.
    pub fn since(&self, from: MsgId) -> impl Iterator<Item = &Entry> {
        let before = |e: &Entry| e.msg.msgid < from;
        // The first chunk whose last message is not before `from`.
        let i = self.sealed.partition_point(|c| before(&c[CHUNK - 1]));
        match self.sealed.get(i) {
            Some(chunk) => self.messages_at(i, chunk.partition_point(before)),
            None => {
                let skip = self.tail.partition_point(before);
                self.messages_at(self.sealed.len(), 0).skip_tail(skip)
            }
        }
    }

    /// The messages from the `at`th of chunk `i` on (the first chunk's
    /// taken ones never), then the tail.
    fn messages_at(&self, i: usize, at: usize) -> Messages<'_> {
        Messages {
            inbox: self,
            chunk: i,
            at: if i == 0 { at.max(self.head) } else { at },
            tail: 0,
        }
    }
}

/// An [`Inbox`]'s messages from some point on.
struct Messages<'a> {
    inbox: &'a Inbox,
    /// The chunk next read, or `sealed.len()` once in the tail.
    chunk: usize,
    at: usize,
    tail: usize,
}

impl Messages<'_> {
    fn skip_tail(mut self, n: usize) -> Self {
        self.tail = n;
        self
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        let inbox = self.inbox;
        while let Some(chunk) = inbox.sealed.get(self.chunk) {
            if let Some(e) = chunk.get(self.at) {
                self.at += 1;
                return Some(e);
            }
            self.chunk += 1;
            self.at = 0;
        }
        let e = inbox.tail.get(self.tail)?;
        self.tail += 1;
        Some(e)
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
        assert!(inbox.sealed.iter().all(|c| c.len() == CHUNK));
        assert!(inbox.tail.len() < CHUNK);
        assert!(inbox.head < CHUNK);
        assert!(!inbox.sealed.is_empty() || inbox.head == 0);
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
        assert!(inbox.sealed.capacity() < 16, "{}", inbox.sealed.capacity());
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
            assert_eq!(ids(inbox.since(from)), want, "from {from}");
        }
        assert_eq!(ids(Inbox::default().since(1)), Vec::<MsgId>::new());
    }

    /// A copy (what a snapshot holds) shares every chunk; writes to the
    /// original share them still, and the copy keeps every message it had.
    #[test]
    fn a_copy_shares_chunks_and_a_write_copies_none() {
        let all = 3 * CHUNK as MsgId + 10;
        let mut live = inbox(1, all);
        let copy = live.clone();
        let shared = |live: &Inbox| -> Vec<bool> {
            live.sealed
                .iter()
                .map(|c| copy.sealed.iter().any(|s| Arc::ptr_eq(c, s)))
                .collect()
        };
        assert_eq!(shared(&live), [true; 3]);
        for id in all + 1..=all + CHUNK as MsgId {
            live.push_back(entry(id));
        }
        assert_eq!(shared(&live), [true, true, true, false]);
        live.pop_front();
        live.pop_while(|e| e.msg.msgid <= CHUNK as MsgId + 3);
        assert_eq!(shared(&live), [true, true, false]);
        assert_eq!(ids(copy.iter()), (1..=all).collect::<Vec<_>>());
        check(
            &live,
            &(CHUNK as MsgId + 4..=all + CHUNK as MsgId).collect::<Vec<_>>(),
        );
    }
}
