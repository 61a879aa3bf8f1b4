//! The delivery checker: "not lost, not duplicated, in order".
//!
//! msgid is per receiver inbox and contiguous from 1, and every run uses
//! fresh users, so a receiver that was sent E messages must see exactly the
//! msgids 1..=E, each once, ascending. Each worker process keeps a
//! [`Receiver`] per user it streams for (a user never moves between
//! workers, also not across churn), sends a [`RecvSummary`] at the end, and
//! the parent compares them with what the senders got `ok` for.
//!
//! An nchan channel published to over several connections has no such
//! numbering: the publishers' sequence numbers reach the channel in
//! whatever order their requests do. "In order" then means one order for
//! every subscriber, the channel's: each receiver also keeps a hash of the
//! order it saw, and [`judge_channel`] holds every receiver to the order
//! most of them saw.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// msgids above this are counted as bogus instead of growing the bitset.
const MAX_MSGID: u64 = 1 << 28;

/// What one receiver has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Receiver {
    seen: Vec<u64>,
    /// Highest msgid seen.
    pub max: u64,
    pub distinct: u64,
    pub dups: u64,
    /// Arrived below an already seen msgid (and was new).
    pub ooo: u64,
    /// msgid 0 or absurdly large.
    pub bogus: u64,
    /// A hash of the new msgids in the order they came.
    pub order: u64,
}

impl Receiver {
    /// Records one delivered msgid.
    pub fn record(&mut self, msgid: u64) {
        if msgid == 0 || msgid > MAX_MSGID {
            self.bogus += 1;
            return;
        }
        let (word, bit) = ((msgid / 64) as usize, msgid % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.dups += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        // FNV-1a over the msgids' bytes: equal hashes, equal orders.
        for b in msgid.to_le_bytes() {
            self.order = (self.order ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        if msgid < self.max {
            self.ooo += 1;
        }
        self.max = self.max.max(msgid);
    }

    pub fn summary(&self, uid: u64) -> RecvSummary {
        RecvSummary {
            uid,
            distinct: self.distinct,
            dups: self.dups,
            ooo: self.ooo,
            max: self.max,
            bogus: self.bogus,
            order: self.order,
            never_up: false,
        }
    }
}

/// A receiver's final state, sent from a worker to the parent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecvSummary {
    pub uid: u64,
    pub distinct: u64,
    pub dups: u64,
    pub ooo: u64,
    pub max: u64,
    pub bogus: u64,
    #[serde(default)]
    pub order: u64,
    /// The receiver's subscription never came up (the client gave up on
    /// it): what it was sent stays in its inbox, undelivered by no fault
    /// of the server's delivery.
    #[serde(default)]
    pub never_up: bool,
}

/// The verdict over all receivers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Receivers that were sent at least one message or received any.
    pub receivers: u64,
    /// Receivers that got exactly 1..=expected, once each, in order.
    pub perfect: u64,
    /// Messages the senders got `ok` for, per receiver, summed.
    pub expected: u64,
    /// Distinct messages delivered.
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Delivered beyond what was acknowledged to the senders (a send that
    /// failed on our side but was stored), or bogus msgids.
    pub unexpected: u64,
    /// Messages to receivers whose subscription never came up: not lost
    /// (stored, for a pull), not deliverable live either.
    pub no_stream: u64,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.unexpected == 0
    }
}

/// Compares what each receiver saw with what it was sent.
pub fn judge(summaries: &[RecvSummary], expected: &HashMap<u64, u64>) -> Verdict {
    let mut v = Verdict::default();
    let mut by_uid: HashMap<u64, &RecvSummary> = HashMap::with_capacity(summaries.len());
    for s in summaries {
        by_uid.insert(s.uid, s);
    }
    let mut uids: Vec<u64> = expected.keys().copied().collect();
    uids.extend(by_uid.keys().filter(|u| !expected.contains_key(u)));
    for uid in uids {
        let want = expected.get(&uid).copied().unwrap_or(0);
        let empty = RecvSummary {
            uid,
            distinct: 0,
            dups: 0,
            ooo: 0,
            max: 0,
            bogus: 0,
            order: 0,
            never_up: false,
        };
        let got = by_uid.get(&uid).copied().unwrap_or(&empty);
        let nothing = got.distinct == 0 && got.dups == 0 && got.bogus == 0;
        if want == 0 && nothing {
            continue;
        }
        v.receivers += 1;
        v.expected += want;
        if got.never_up && nothing {
            v.no_stream += want;
            continue;
        }
        v.delivered += got.distinct;
        // msgids 1..=want must all be there: what is missing below `want`
        // is lost; anything above it is unexpected.
        let beyond = got.max.saturating_sub(want);
        let within = got.distinct - beyond.min(got.distinct);
        let lost = want - within.min(want);
        let unexpected = got.distinct - within + got.bogus;
        v.lost += lost;
        v.duplicated += got.dups;
        v.out_of_order += got.ooo;
        v.unexpected += unexpected;
        if lost == 0 && got.dups == 0 && got.ooo == 0 && unexpected == 0 {
            v.perfect += 1;
        }
    }
    v
}

/// [`judge`] for one channel whose messages were published over several
/// connections: the msgids (the publishers' sequence numbers) need not
/// ascend, but every receiver must see them in one order, the one most
/// receivers that got everything saw; a receiver that got everything in
/// another order counts one out-of-order delivery.
pub fn judge_channel(summaries: &[RecvSummary], expected: &HashMap<u64, u64>) -> Verdict {
    let whole = |s: &RecvSummary| {
        let want = expected.get(&s.uid).copied().unwrap_or(0);
        s.distinct == want && s.max == want && s.dups == 0 && s.bogus == 0
    };
    let mut orders: HashMap<u64, u64> = HashMap::new();
    for s in summaries.iter().filter(|s| whole(s)) {
        *orders.entry(s.order).or_default() += 1;
    }
    let channel = orders.into_iter().max_by_key(|&(_, n)| n).map(|(o, _)| o);
    let held: Vec<RecvSummary> = summaries
        .iter()
        .map(|s| RecvSummary {
            ooo: u64::from(whole(s) && Some(s.order) != channel),
            ..s.clone()
        })
        .collect();
    judge(&held, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(ids: &[u64]) -> Receiver {
        let mut r = Receiver::default();
        for &id in ids {
            r.record(id);
        }
        r
    }

    #[test]
    fn a_receiver_that_never_subscribed_is_not_counted_lost() {
        let mut never = Receiver::default().summary(5);
        never.never_up = true;
        let v = judge(&[never.clone()], &HashMap::from([(5, 3)]));
        assert_eq!((v.lost, v.no_stream, v.perfect), (0, 3, 0), "{v:?}");
        assert!(v.ok());
        // Up or not, a receiver without its summary lost what it was sent.
        let v = judge(&[], &HashMap::from([(5, 3)]));
        assert_eq!((v.lost, v.no_stream), (3, 0));
    }

    #[test]
    fn perfect_run() {
        let s = vec![recv(&[1, 2, 3]).summary(10), recv(&[1]).summary(11)];
        let exp = HashMap::from([(10, 3), (11, 1)]);
        let v = judge(&s, &exp);
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.receivers, v.perfect, v.delivered), (2, 2, 4));
    }

    #[test]
    fn lost_dup_ooo() {
        let r = recv(&[1, 3, 2, 3, 5]);
        assert_eq!((r.distinct, r.dups, r.ooo, r.max), (4, 1, 1, 5));
        let exp = HashMap::from([(7, 6), (8, 2)]);
        // uid 8 received nothing at all.
        let v = judge(&[r.summary(7)], &exp);
        assert_eq!(v.lost, 2 + 2); // msgids 4 and 6 of uid 7, both of uid 8
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.unexpected, 0);
        assert_eq!(v.perfect, 0);
        assert!(!v.ok());
    }

    #[test]
    fn unexpected_and_bogus() {
        let r = recv(&[1, 2, 3, 0]);
        let v = judge(&[r.summary(1)], &HashMap::from([(1, 2)]));
        assert_eq!((v.lost, v.unexpected), (0, 2));
        // A receiver nobody sent to but that got something.
        let v = judge(&[recv(&[1]).summary(2)], &HashMap::new());
        assert_eq!((v.receivers, v.unexpected), (1, 1));
        // Idle receivers are not counted.
        let v = judge(&[Receiver::default().summary(3)], &HashMap::new());
        assert_eq!(v.receivers, 0);
    }

    #[test]
    fn one_channel_order_for_every_receiver() {
        let exp = HashMap::from([(1, 3), (2, 3), (3, 3), (4, 3)]);
        let same = [recv(&[2, 1, 3]), recv(&[2, 1, 3]), recv(&[2, 1, 3])];
        let mut s: Vec<RecvSummary> = same.iter().zip(1..).map(|(r, u)| r.summary(u)).collect();
        s.push(recv(&[2, 1, 3]).summary(4));
        let v = judge_channel(&s, &exp);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.perfect, 4);
        // One receiver saw the channel in another order; one lost a message.
        s[3] = recv(&[1, 2, 3]).summary(4);
        s[2] = recv(&[2, 1]).summary(3);
        let v = judge_channel(&s, &exp);
        assert_eq!((v.out_of_order, v.lost, v.perfect), (1, 1, 2), "{v:?}");
    }

    #[test]
    fn big_msgids_do_not_explode() {
        let r = recv(&[u64::MAX, MAX_MSGID + 1]);
        assert_eq!(r.bogus, 2);
        assert!(r.seen.is_empty());
    }
}
