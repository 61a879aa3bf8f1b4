//! Group commit of message appends: the commit queue, its leader/follower
//! hand-off, and the committing of one group under the state lock (see
//! "Concurrency" in the module doc of [`super`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::mem;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::log::Record;
use super::state::OnceSeen;
use super::{fingerprint, unavailable, unix_now, Core, EmbeddedStore, Inner, Result};
use super::{Append, Fingerprint, MsgId, NewMessage, Once, StoreError, Uid, ONCE_PURGE_MIN};

/// An `append` or `append_once` waiting in the queue for a leader: the
/// call's arguments, owned, since another thread commits it.
struct Queued {
    appid: String,
    to: Vec<Uid>,
    msg: NewMessage,
    once: Option<(String, u64)>,
}

impl Queued {
    fn new(a: Append<'_>) -> Queued {
        Queued {
            appid: a.appid.to_owned(),
            to: a.to.to_vec(),
            msg: a.msg.clone(),
            once: a.once.map(|o| (o.cmsgid.to_owned(), o.until)),
        }
    }

    fn append(&self) -> Append<'_> {
        Append {
            appid: &self.appid,
            to: &self.to,
            msg: &self.msg,
            once: self.once.as_ref().map(|(cmsgid, until)| Once {
                cmsgid,
                until: *until,
            }),
        }
    }
}

/// What a request is answered: the msgids its receivers got, or `None`
/// for a retry of a send already stored (only `append_once`).
pub(super) type Answer = Result<Option<Vec<MsgId>>>;

/// An answer as a group gives it, its msgids borrowed from the group's.
pub(super) type AnswerRef<'a> = Result<Option<&'a [MsgId]>>;

/// The commit queue, shared by every caller of `append`/`append_once`.
#[derive(Default)]
pub(super) struct Committer {
    queue: Mutex<Queue>,
    /// Signalled whenever a leader has posted a group's answers.
    answered: Condvar,
}

type Waiting = Vec<(u64, Queued)>;

#[derive(Default)]
struct Queue {
    /// Requests no leader has taken yet, with their tickets.
    waiting: Waiting,
    /// The last group's emptied `waiting`, kept for its capacity.
    spare: Waiting,
    /// Answers their callers have not collected yet, by ticket.
    answers: HashMap<u64, Answer>,
    /// Whether a caller is leading (committing a group) now.
    leading: bool,
    /// Callers asleep on `answered` (a leader wakes them only if any).
    sleeping: usize,
    next_ticket: u64,
}

impl Committer {
    /// The queue's lock. Nothing panics while holding it, so a poisoned
    /// lock still holds a consistent queue.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps until a leader has posted a group's answers.
    fn sleep<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        queue.sleeping += 1;
        let mut queue = self
            .answered
            .wait(queue)
            .unwrap_or_else(PoisonError::into_inner);
        queue.sleeping -= 1;
        queue
    }

    /// Requests not committed yet: those waiting and the leader's own
    /// (for tests).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        let queue = self.queue();
        queue.waiting.len() + usize::from(queue.leading)
    }
}

impl EmbeddedStore {
    /// Commits `req` and returns its answer: at once as the leader of a
    /// group if no one leads, else after queueing it for a leader (which
    /// may turn out to be this thread too).
    pub(super) fn submit(&self, req: Append<'_>) -> Answer {
        let commits = &self.commits;
        let mut queue = commits.queue();
        if !queue.leading {
            queue.leading = true;
            drop(queue);
            let mut answer = None;
            self.lead(&[req], &mut |_, a| {
                answer = Some(a.map(|ids| ids.map(<[MsgId]>::to_vec)))
            });
            return answer.unwrap_or_else(|| Err(unanswered()));
        }
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, Queued::new(req)));
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return answer;
            }
            if !queue.leading {
                // No leader: this request is still waiting (a leader answers
                // everything it took before it stops leading), so lead.
                queue.leading = true;
                drop(queue);
                self.lead(&[], &mut |_, _| {});
                queue = commits.queue();
                continue;
            }
            queue = commits.sleep(queue);
        }
    }

    /// Commits `reqs` in order as one group (with whatever others have
    /// queued meanwhile) and gives `answer` each one's answer by its index,
    /// once the group is applied, in order. Waits for a leader at work to
    /// finish, then leads with `reqs` borrowed: a reactor's sends of one
    /// loop turn, written with one `write(2)`. If committing panics, the
    /// panic unwinds through here (the queued requests are answered
    /// `Unavailable`).
    pub(super) fn submit_group(
        &self,
        reqs: &[Append<'_>],
        answer: &mut dyn FnMut(usize, AnswerRef<'_>),
    ) {
        let commits = &self.commits;
        let mut queue = commits.queue();
        while queue.leading {
            queue = commits.sleep(queue);
        }
        queue.leading = true;
        drop(queue);
        self.lead(reqs, answer);
    }

    /// Commits one group, `own` (the leader's requests, not queued) first:
    /// takes the state lock first, so that everything queued while it
    /// waits for it joins the group, then every waiting request; posts the
    /// queued ones' answers and gives `own`'s to `own_answer`, by index.
    fn lead(&self, own: &[Append<'_>], own_answer: &mut dyn FnMut(usize, AnswerRef<'_>)) {
        let commits = &self.commits;
        let inner = self.inner.lock_idle();
        let batch = {
            let mut queue = commits.queue();
            let spare = mem::take(&mut queue.spare);
            mem::replace(&mut queue.waiting, spare)
        };
        // Ends the leadership and answers whatever was not answered, even
        // if committing panics, so no follower waits forever.
        let post = Post { commits, batch };
        let requests = own
            .iter()
            .copied()
            .chain(post.batch.iter().map(|(_, req)| req.append()));
        let skip = own.len();
        // Answers go in with one lock of the queue, after the group is
        // applied.
        let mut queue: Option<MutexGuard<'_, Queue>> = None;
        let mut answer = |i: usize, answer: AnswerRef<'_>| match i.checked_sub(skip) {
            None => own_answer(i, answer),
            Some(j) => {
                let queue = queue.get_or_insert_with(|| commits.queue());
                let answer = answer.map(|ids| ids.map(<[MsgId]>::to_vec));
                queue.answers.insert(post.batch[j].0, answer);
            }
        };
        match inner {
            Ok(inner) => commit_group(&self.inner, inner, requests, &mut answer),
            Err(_) => {
                for i in 0..skip + post.batch.len() {
                    answer(i, Err(unavailable("store state poisoned by a panic")));
                }
            }
        }
        drop(queue);
        drop(post);
    }
}

/// What a request the leader did not answer (it panicked) gets.
fn unanswered() -> StoreError {
    unavailable("store panicked while committing")
}

/// A leader's group: hands the leadership back when dropped, answering
/// every request of it that was not (a panic) with `Unavailable`.
struct Post<'a> {
    commits: &'a Committer,
    batch: Waiting,
}

impl Drop for Post<'_> {
    fn drop(&mut self) {
        let mut queue = self.commits.queue();
        for (ticket, _) in self.batch.drain(..) {
            queue
                .answers
                .entry(ticket)
                .or_insert_with(|| Err(unanswered()));
        }
        queue.spare = mem::take(&mut self.batch);
        queue.leading = false;
        let sleeping = queue.sleeping > 0;
        drop(queue);
        if sleeping {
            self.commits.answered.notify_all();
        }
    }
}

/// How one request of a group came out of validation. Msgids are ranges
/// of the group's list of them ([`Inner::group_ids`]).
pub(super) enum Outcome {
    /// Answered without writing anything, whatever happens to the group's
    /// write (a validation error, a retry of a send stored before).
    Done(Result<Option<Range<usize>>>),
    /// Staged for the group's write with these msgids (and, with a
    /// `cmsgid`, the message's fingerprint).
    Staged(Range<usize>, Option<Fingerprint>),
    /// Answered from an earlier request of the same group (a retry of it,
    /// or its cmsgid reused): holds only if the group's write succeeds.
    AfterEarlier(Result<Option<Range<usize>>>),
}

/// What the earlier requests of a group will change, for validating the
/// later ones against the state as it will be.
struct Pending<'r> {
    /// The appid the group's first send went to, for `next`.
    app: Option<&'r str>,
    /// By uid of `app`: the next msgid of each receiver given one. Kept
    /// from group to group for its capacity ([`Inner::group_next`]): a
    /// group is nearly always of one app.
    next: HashMap<Uid, MsgId>,
    /// The same for every other appid.
    others: HashMap<&'r str, HashMap<Uid, MsgId>>,
    /// (appid, fromid, cmsgid) -> (until, fingerprint).
    once: HashMap<(&'r str, Uid, &'r str), (u64, Fingerprint)>,
}

impl<'r> Pending<'r> {
    /// By uid of `appid`: the next msgid of those given one (if any).
    fn taken(&self, appid: &str) -> Option<&HashMap<Uid, MsgId>> {
        match self.app {
            Some(app) if app == appid => Some(&self.next),
            _ => self.others.get(appid),
        }
    }

    fn taken_mut(&mut self, appid: &'r str) -> &mut HashMap<Uid, MsgId> {
        match self.app {
            None => {
                self.app = Some(appid);
                &mut self.next
            }
            Some(app) if app == appid => &mut self.next,
            Some(_) => self.others.entry(appid).or_default(),
        }
    }
}

/// Most entries [`Inner::group_next`] keeps room for between groups.
const KEEP_NEXT: usize = 4096;

/// Validates every request in order, writes the records of those that
/// passed with one write (and one fsync under `Always`), then applies them
/// in the same order; gives `answer` each request's answer by its index,
/// once the group is applied (or its write failed). A request that fails
/// validation fails alone; if the write fails, every request that needed it
/// gets `Unavailable` and the state is untouched.
///
/// Under `Always` the write and its fsync run without the state lock, so
/// readers are not held up by them (they see the group's messages only
/// once applied, after the fsync); `Inner::writing` keeps every other
/// mutation out until then, so the state validated against is still the
/// state the group is applied to.
fn commit_group<'a, 'r, I>(
    core: &'a Core,
    mut inner: MutexGuard<'a, Inner>,
    requests: I,
    answer: &mut dyn FnMut(usize, AnswerRef<'_>),
) where
    I: Iterator<Item = Append<'r>> + Clone,
{
    let now = unix_now();
    if requests.clone().any(|r| r.once.is_some()) {
        // Forget expired sends now and then, not on every call: the map
        // only grows by what is sent within one window.
        if inner.state.once_len() >= inner.once_purge_at {
            inner.state.purge_once(now);
            inner.once_purge_at = (inner.state.once_len() * 2).max(ONCE_PURGE_MIN);
        }
    }
    debug_assert!(!inner.log.has_staged());
    // Reused from group to group.
    let mut outcomes = mem::take(&mut inner.outcomes);
    let mut ids = mem::take(&mut inner.group_ids);
    let mut pending = Pending {
        app: None,
        next: mem::take(&mut inner.group_next),
        others: HashMap::new(),
        once: HashMap::new(),
    };
    let n = requests.clone().count();
    for (i, req) in requests.clone().enumerate() {
        // The last request needs no bookkeeping for later ones.
        let outcome = inner.check_and_stage(req, &mut pending, &mut ids, i + 1 < n, now);
        outcomes.push(outcome);
    }
    let mut next = pending.next;
    next.clear();
    if next.capacity() <= KEEP_NEXT {
        inner.group_next = next;
    }
    let written = if !inner.log.has_staged() {
        Ok(())
    } else if let Some(why) = &inner.broken {
        let why = why.clone();
        inner.log.discard_staged();
        Err(why)
    } else if !inner.log.fsyncs_each_write() {
        // A write(2) alone is quick: done with the lock held, as for any
        // other mutation.
        inner.log.write_staged().map_err(|e| {
            if e.broken {
                inner.broken = Some(format!("{}; reopen the store", e.msg));
            }
            e.msg
        })
    } else {
        let write = inner.log.begin_write();
        inner.writing = true;
        drop(inner);
        #[cfg(test)]
        if let Some(hook) = core.before_write.lock().unwrap().as_mut() {
            hook();
        }
        let res = write.run();
        // Nothing else ran a mutation meanwhile; a reader that panicked
        // changed nothing, so a poisoned lock still holds a sound state.
        inner = core.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.writing = false;
        if inner.idle_waiters > 0 {
            core.idle.notify_all();
        }
        inner.log.end_write(write, res).map_err(|e| {
            if e.broken {
                inner.broken = Some(format!("{}; reopen the store", e.msg));
            }
            e.msg
        })
    };
    let mut applied = false;
    for (i, (req, outcome)) in requests.zip(outcomes.drain(..)).enumerate() {
        let a = match (outcome, &written) {
            (Outcome::Done(a), _) => a,
            (Outcome::Staged(..) | Outcome::AfterEarlier(_), Err(why)) => {
                Err(unavailable(why.clone()))
            }
            (Outcome::AfterEarlier(a), Ok(())) => a,
            (Outcome::Staged(range, print), Ok(())) => {
                inner.apply(req, &ids[range.clone()], print);
                applied = true;
                Ok(Some(range))
            }
        };
        answer(i, a.map(|r| r.map(|r| &ids[r])));
    }
    ids.clear();
    inner.outcomes = outcomes;
    inner.group_ids = ids;
    if applied {
        inner.after_write();
    }
}

impl Inner {
    /// Validates `req` against the state and the group's earlier requests
    /// (`pending`); if it is to be stored, adds its msgids to `ids`, stages
    /// its record and, if `remember` (a later request follows), notes it
    /// in `pending`.
    fn check_and_stage<'r>(
        &mut self,
        req: Append<'r>,
        pending: &mut Pending<'r>,
        ids: &mut Vec<MsgId>,
        remember: bool,
        now: u64,
    ) -> Outcome {
        let fromid = req.msg.fromid;
        let print = req.once.map(|_| fingerprint(req.msg));
        if let (Some(once), Some(print)) = (&req.once, &print) {
            let key = (req.appid, fromid, once.cmsgid);
            let (seen, earlier) = match pending.once.get(&key) {
                Some(&(until, seen)) => (
                    OnceSeen::judge(Some((until, Some(&seen))), print, now),
                    true,
                ),
                None => (
                    self.state
                        .seen_once(req.appid, fromid, once.cmsgid, print, now),
                    false,
                ),
            };
            let answer = match seen {
                OnceSeen::New => None,
                OnceSeen::Same => Some(Ok(None)),
                OnceSeen::Other => Some(Err(StoreError::CmsgidReused)),
            };
            match answer {
                None => {}
                Some(answer) if earlier => return Outcome::AfterEarlier(answer),
                Some(answer) => return Outcome::Done(answer),
            }
        }
        let start = ids.len();
        if let Err(e) = self
            .state
            .check_append(req.appid, req.to, pending.taken(req.appid), ids)
        {
            ids.truncate(start);
            return Outcome::Done(Err(e));
        }
        let range = start..ids.len();
        if range.is_empty() {
            return Outcome::Done(Ok(Some(range)));
        }
        if remember {
            let taken = pending.taken_mut(req.appid);
            for (&uid, &id) in req.to.iter().zip(&ids[range.clone()]) {
                taken.insert(uid, id + 1);
            }
            if let (Some(once), Some(print)) = (req.once, print) {
                pending
                    .once
                    .insert((req.appid, fromid, once.cmsgid), (once.until, print));
            }
        }
        self.log
            .stage(&record(req, &ids[range.clone()], print.as_ref()));
        Outcome::Staged(range, print)
    }

    /// Applies a written request.
    fn apply(&mut self, req: Append<'_>, ids: &[MsgId], print: Option<Fingerprint>) {
        let msg = req.msg;
        self.state.add_message(
            req.appid,
            req.to,
            ids,
            msg.fromid,
            msg.toid,
            msg.datatype,
            &msg.content,
        );
        if let Some(once) = &req.once {
            self.state.add_once(
                req.appid,
                msg.fromid,
                once.cmsgid,
                once.until,
                print.as_deref(),
            );
        }
    }
}

/// The `msg` record of `req`, its receivers getting `ids`.
fn record<'r>(req: Append<'r>, ids: &'r [MsgId], print: Option<&'r Fingerprint>) -> Record<'r> {
    let msg = req.msg;
    Record::Msg {
        a: Cow::Borrowed(req.appid),
        to: Cow::Borrowed(req.to),
        ids: Cow::Borrowed(ids),
        f: msg.fromid,
        t: msg.toid,
        d: msg.datatype,
        c: Cow::Borrowed(&msg.content),
        k: req.once.map(|o| Cow::Borrowed(o.cmsgid)),
        x: req.once.map(|o| o.until),
        h: print.map(|p| Cow::Borrowed(&**p)),
    }
}
