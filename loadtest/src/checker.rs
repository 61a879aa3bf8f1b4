//! The delivery checker: "not lost, not duplicated, in order".
//!
//! msgid is per receiver inbox and contiguous from 1, and every run uses
//! fresh users, so a receiver that was sent E messages must see exactly the
//! msgids 1..=E, each once, ascending. Each worker process keeps a
//! [`Receiver`] per user it streams for (a user never moves between
//! workers, also not across churn), sends a [`RecvSummary`] at the end, and
//! the parent compares them with what the senders got `ok` for.

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
        };
        let got = by_uid.get(&uid).copied().unwrap_or(&empty);
        if want == 0 && got.distinct == 0 && got.dups == 0 && got.bogus == 0 {
            continue;
        }
        v.receivers += 1;
        v.expected += want;
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
    fn big_msgids_do_not_explode() {
        let r = recv(&[u64::MAX, MAX_MSGID + 1]);
        assert_eq!(r.bogus, 2);
        assert!(r.seen.is_empty());
    }
}
