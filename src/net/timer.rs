//! A coarse timer wheel: one-second ticks, lazy cancellation.
//!
//! Every connection has one deadline (header timeout, idle keep-alive,
//! heartbeat, poll timeout or linger, depending on its state). Moving a
//! deadline later costs nothing: the connection keeps its entry, and when the
//! entry fires the reactor sees the deadline has not come and re-arms it.
//! Only moving a deadline earlier than its armed entry adds an entry. Stale
//! entries are told apart by their tick (`armed_at` in the connection).
//!
//! Time is a number of seconds since the reactor started, passed in by the
//! caller, so the wheel is tested without sleeping.

/// Seconds since the reactor started.
pub type Secs = u32;

/// Deadline of a connection with nothing to time out.
pub const NEVER: Secs = Secs::MAX;

/// The tick at which a timeout of `secs` seconds, started at tick `now`,
/// has surely passed. `now` is the current second rounded down, so the
/// real start may be up to a second later than `now`: the deadline is one
/// tick further, which makes every timeout last at least `secs` and at
/// most `secs + 1` seconds (the loop wakes on each tick's boundary).
pub fn after(now: Secs, secs: Secs) -> Secs {
    now.saturating_add(secs).saturating_add(1).min(NEVER - 1)
}

/// Slots in the wheel: deadlines further out than this wrap around and are
/// re-armed when their slot comes by early. 256 s covers every default
/// timeout (heartbeat and poll 30 s, keep-alive 60 s) in one lap.
const SLOTS: usize = 256;

/// Entries' room a slot keeps when it empties, so slots that stay small
/// are not freed and grown again every lap.
const KEEP: usize = 8;

pub struct TimerWheel<K> {
    slots: Vec<Vec<(Secs, K)>>,
    /// The next tick not yet fired.
    next: Secs,
    /// Ticks `advance` has visited, so a test sees whether it walked them all.
    #[cfg(test)]
    walked: u64,
}

impl<K: Copy> TimerWheel<K> {
    pub fn new(now: Secs) -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next: now,
            #[cfg(test)]
            walked: 0,
        }
    }

    /// Arms `key` to fire at tick `at` (or at the next tick if `at` has
    /// passed). Returns the tick it was armed for.
    pub fn arm(&mut self, at: Secs, key: K) -> Secs {
        let at = at.max(self.next);
        self.slots[at as usize % SLOTS].push((at, key));
        at
    }

    /// Moves the wheel to `now` and hands every entry armed for a tick
    /// `<= now` to `fire` as `(tick, key)`. Entries of later laps that share
    /// a slot stay where they are.
    pub fn advance(&mut self, now: Secs, mut fire: impl FnMut(Secs, K)) {
        let mut due = Vec::new();
        while self.next <= now {
            let slot = &mut self.slots[self.next as usize % SLOTS];
            let tick = self.next;
            slot.retain(|&(at, key)| {
                if at <= tick {
                    due.push((at, key));
                    false
                } else {
                    true
                }
            });
            // A connect storm arms thousands in one second's slot: give
            // back the room it no longer needs once they have fired.
            if slot.capacity() > 4 * slot.len().max(KEEP) {
                slot.shrink_to(2 * slot.len());
            }
            self.next += 1;
            #[cfg(test)]
            {
                self.walked += 1;
            }
            // Skip empty laps when the loop was asleep for a long time.
            if now - tick > SLOTS as Secs && self.slots.iter().all(Vec::is_empty) {
                self.next = now + 1;
            }
        }
        for (at, key) in due {
            fire(at, key);
        }
    }

    /// The tick the wheel will fire next.
    pub fn next_tick(&self) -> Secs {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(w: &mut TimerWheel<u32>, now: Secs) -> Vec<(Secs, u32)> {
        let mut v = Vec::new();
        w.advance(now, |t, k| v.push((t, k)));
        v
    }

    #[test]
    fn fires_at_its_tick_not_before() {
        let mut w = TimerWheel::new(0);
        w.arm(3, 7);
        assert!(fired(&mut w, 2).is_empty());
        assert_eq!(fired(&mut w, 3), vec![(3, 7)]);
        assert_eq!(w.walked, 4, "ticks 0 to 3, each once");
        assert!(fired(&mut w, 10).is_empty());
    }

    #[test]
    fn a_late_advance_fires_everything_due() {
        let mut w = TimerWheel::new(0);
        w.arm(1, 1);
        w.arm(5, 2);
        w.arm(9, 3);
        let mut got = fired(&mut w, 6);
        got.sort();
        assert_eq!(got, vec![(1, 1), (5, 2)]);
    }

    #[test]
    fn far_deadlines_survive_laps() {
        let mut w = TimerWheel::new(0);
        let far = SLOTS as Secs * 2 + 3;
        w.arm(far, 1);
        assert!(fired(&mut w, far - 1).is_empty());
        assert_eq!(fired(&mut w, far), vec![(far, 1)]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let mut w = TimerWheel::new(0);
        fired(&mut w, 10);
        assert_eq!(w.arm(3, 1), 11);
        assert_eq!(fired(&mut w, 11), vec![(11, 1)]);
    }

    #[test]
    fn timeouts_round_up_to_a_whole_tick() {
        // Started anywhere inside tick 10 (10.0 .. 10.999 s): a 2 s
        // timeout must not fire before 12.999 s, so at tick 13.
        assert_eq!(after(10, 2), 13);
        assert_eq!(after(0, 0), 1);
        assert_eq!(after(NEVER - 5, 10), NEVER - 1, "saturates below NEVER");
    }

    #[test]
    fn a_slot_gives_back_the_room_of_a_burst_once_it_fired() {
        let mut w = TimerWheel::new(0);
        for k in 0..10_000 {
            w.arm(5, k);
        }
        for k in 0..3 {
            w.arm(5 + SLOTS as Secs, k);
        }
        let slot = |w: &TimerWheel<u32>| w.slots[5].capacity();
        assert!(slot(&w) >= 10_003);
        assert_eq!(fired(&mut w, 5).len(), 10_000);
        assert_eq!(slot(&w), 6, "the next lap's three keep room for six");
        // A slot that stays small keeps its room from lap to lap.
        w.arm(6, 1);
        w.arm(6, 2);
        let room = w.slots[6].capacity();
        fired(&mut w, 6);
        assert_eq!(w.slots[6].capacity(), room);
        // A slot still holding a quarter or more of its room keeps it:
        // 64 entries, 48 or 44 of them fired.
        for left in [16, 20] {
            let tick = 7 + left as Secs;
            for k in 0..64 {
                let lap = if k < left { SLOTS as Secs } else { 0 };
                w.arm(tick + lap, k);
            }
            let at = tick as usize % SLOTS;
            assert_eq!(w.slots[at].capacity(), 64);
            assert_eq!(fired(&mut w, tick).len(), 64 - left as usize);
            assert_eq!(w.slots[at].capacity(), 64, "{left} left");
        }
    }

    #[test]
    fn a_long_sleep_does_not_walk_every_tick_forever() {
        let mut w = TimerWheel::new(0);
        w.arm(2, 1);
        assert_eq!(fired(&mut w, 1_000_000), vec![(2, 1)]);
        assert_eq!(w.next_tick(), 1_000_001);
        // One lap fires what was armed and empties the wheel; the rest of
        // the sleep is skipped, not walked tick by tick.
        assert!(
            w.walked <= 2 * SLOTS as u64,
            "walked {} ticks of a 1,000,000 s sleep",
            w.walked
        );
        // Armed entries are still found after the skip.
        w.arm(1_000_005, 2);
        assert!(fired(&mut w, 1_000_004).is_empty());
        assert_eq!(fired(&mut w, 1_000_005), vec![(1_000_005, 2)]);
    }
}
