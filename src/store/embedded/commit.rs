//! Group commit of message appends: the commit queue, its leader/follower
//! hand-off, and the committing of one group under the state lock (see
//! "Concurrency" in the module doc of [`super`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::mem;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::log::Record;
use super::state::OnceSeen;
use super::{unavailable, unix_now, Core, EmbeddedStore, Inner, MsgId, NewMessage, Result, Uid};
use super::{StoreError, ONCE_PURGE_MIN};

/// One `append` or `append_once` to commit: the call's arguments. The
/// leader's own request is borrowed; one that waits in the queue is owned,
/// since another thread commits it.
pub(super) struct Request<'a> {
    pub appid: Cow<'a, str>,
    pub to: Cow<'a, [Uid]>,
    pub msg: Cow<'a, NewMessage>,
    pub once: Option<OnceRequest<'a>>,
}

/// The `cmsgid` of an `append_once`, with the message's fingerprint.
pub(super) struct OnceRequest<'a> {
    pub cmsgid: Cow<'a, str>,
    pub until: u64,
    pub print: String,
}

impl Request<'_> {
    fn into_owned(self) -> Request<'static> {
        Request {
            appid: Cow::Owned(self.appid.into_owned()),
            to: Cow::Owned(self.to.into_owned()),
            msg: Cow::Owned(self.msg.into_owned()),
            once: self.once.map(|o| OnceRequest {
                cmsgid: Cow::Owned(o.cmsgid.into_owned()),
                until: o.until,
                print: o.print,
            }),
        }
    }
}

/// What a request is answered: the msgids its receivers got, or `None`
/// for a retry of a send already stored (only `append_once`).
pub(super) type Answer = Result<Option<Vec<MsgId>>>;

/// The commit queue, shared by every caller of `append`/`append_once`.
#[derive(Default)]
pub(super) struct Committer {
    queue: Mutex<Queue>,
    /// Signalled whenever a leader has posted a group's answers.
    answered: Condvar,
}

type Queued = Vec<(u64, Request<'static>)>;

#[derive(Default)]
struct Queue {
    /// Requests no leader has taken yet, with their tickets.
    waiting: Queued,
    /// The last group's emptied `waiting`, kept for its capacity.
    spare: Queued,
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
    pub(super) fn submit(&self, req: Request<'_>) -> Answer {
        let commits = &self.commits;
        let mut queue = commits.queue();
        if !queue.leading {
            queue.leading = true;
            drop(queue);
            let mut answer = [None];
            self.lead(std::slice::from_ref(&req), &mut answer);
            let [answer] = answer;
            return answer.unwrap_or_else(unanswered);
        }
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, req.into_owned()));
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return answer;
            }
            if !queue.leading {
                // No leader: this request is still waiting (a leader answers
                // everything it took before it stops leading), so lead.
                queue.leading = true;
                drop(queue);
                self.lead(&[], &mut []);
                queue = commits.queue();
                continue;
            }
            queue = commits.sleep(queue);
        }
    }

    /// Commits `reqs` in order as one group (with whatever others have
    /// queued meanwhile) and returns their answers in order. Waits for a
    /// leader at work to finish, then leads with `reqs` borrowed: a
    /// reactor's sends of one loop turn, written with one `write(2)`.
    pub(super) fn submit_group(&self, reqs: &[Request<'_>]) -> Vec<Answer> {
        let commits = &self.commits;
        let mut queue = commits.queue();
        while queue.leading {
            queue = commits.sleep(queue);
        }
        queue.leading = true;
        drop(queue);
        let mut answers: Vec<Option<Answer>> = reqs.iter().map(|_| None).collect();
        self.lead(reqs, &mut answers);
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(unanswered))
            .collect()
    }

    /// Commits one group, `own` (the leader's requests, not queued) first:
    /// takes the state lock first, so that everything queued while it
    /// waits for it joins the group, then every waiting request; posts the
    /// queued ones' answers and puts `own`'s in `own_answers`, in order.
    fn lead(&self, own: &[Request<'_>], own_answers: &mut [Option<Answer>]) {
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
        let requests = own.iter().chain(post.batch.iter().map(|(_, req)| req));
        let skip = own.len();
        // Answers go in with one lock of the queue, after the group is
        // applied.
        let mut queue: Option<MutexGuard<'_, Queue>> = None;
        let mut answer = |i: usize, answer: Answer| match i.checked_sub(skip) {
            None => own_answers[i] = Some(answer),
            Some(j) => {
                let queue = queue.get_or_insert_with(|| commits.queue());
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
fn unanswered() -> Answer {
    Err(unavailable("store panicked while committing"))
}

/// A leader's group: hands the leadership back when dropped, answering
/// every request of it that was not (a panic) with `Unavailable`.
struct Post<'a> {
    commits: &'a Committer,
    batch: Queued,
}

impl Drop for Post<'_> {
    fn drop(&mut self) {
        let mut queue = self.commits.queue();
        for (ticket, _) in self.batch.drain(..) {
            queue.answers.entry(ticket).or_insert_with(unanswered);
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

/// How one request of a group came out of validation.
pub(super) enum Outcome {
    /// Answered without writing anything, whatever happens to the group's
    /// write (a validation error, a retry of a send stored before).
    Done(Answer),
    /// Staged for the group's write with these msgids.
    Staged(Vec<MsgId>),
    /// Answered from an earlier request of the same group (a retry of it,
    /// or its cmsgid reused): holds only if the group's write succeeds.
    AfterEarlier(Answer),
}

/// What the earlier requests of a group will change, for validating the
/// later ones against the state as it will be.
#[derive(Default)]
struct Pending<'r> {
    /// By appid: the next msgid of each receiver given one.
    next: HashMap<&'r str, HashMap<Uid, MsgId>>,
    /// (appid, fromid, cmsgid) -> (until, fingerprint).
    once: HashMap<(&'r str, Uid, &'r str), (u64, &'r str)>,
}

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
    answer: &mut dyn FnMut(usize, Answer),
) where
    I: Iterator<Item = &'r Request<'r>> + Clone,
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
    let mut pending = Pending::default();
    debug_assert!(!inner.log.has_staged());
    // Reused from group to group.
    let mut outcomes = mem::take(&mut inner.outcomes);
    let n = requests.clone().count();
    for (i, req) in requests.clone().enumerate() {
        // The last request needs no bookkeeping for later ones.
        let outcome = inner.check_and_stage(req, &mut pending, i + 1 < n, now);
        outcomes.push(outcome);
    }
    drop(pending);
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
            (Outcome::Staged(_) | Outcome::AfterEarlier(_), Err(why)) => {
                Err(unavailable(why.clone()))
            }
            (Outcome::AfterEarlier(a), Ok(())) => a,
            (Outcome::Staged(ids), Ok(())) => {
                inner.apply(req, &ids);
                applied = true;
                Ok(Some(ids))
            }
        };
        answer(i, a);
    }
    inner.outcomes = outcomes;
    if applied {
        inner.after_write();
    }
}

impl Inner {
    /// Validates `req` against the state and the group's earlier requests
    /// (`pending`); if it is to be stored, stages its record and, if
    /// `remember` (a later request follows), notes it in `pending`.
    fn check_and_stage<'r>(
        &mut self,
        req: &'r Request<'r>,
        pending: &mut Pending<'r>,
        remember: bool,
        now: u64,
    ) -> Outcome {
        let fromid = req.msg.fromid;
        if let Some(once) = &req.once {
            let key = (&*req.appid, fromid, &*once.cmsgid);
            let (seen, earlier) = match pending.once.get(&key) {
                Some(&(until, print)) => (
                    OnceSeen::judge(Some((until, Some(print))), &once.print, now),
                    true,
                ),
                None => (
                    self.state
                        .seen_once(&req.appid, fromid, &once.cmsgid, &once.print, now),
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
        if req.to.is_empty() {
            return Outcome::Done(Ok(Some(Vec::new())));
        }
        let none_taken = HashMap::new();
        let taken = pending.next.get(&*req.appid).unwrap_or(&none_taken);
        let ids = match self.state.check_append(&req.appid, &req.to, taken) {
            Ok(ids) => ids,
            Err(e) => return Outcome::Done(Err(e)),
        };
        if remember {
            let taken = pending.next.entry(&*req.appid).or_default();
            for (&uid, &id) in req.to.iter().zip(&ids) {
                taken.insert(uid, id + 1);
            }
            if let Some(once) = &req.once {
                pending.once.insert(
                    (&req.appid, fromid, &once.cmsgid),
                    (once.until, &once.print),
                );
            }
        }
        self.log.stage(&record(req, &ids));
        Outcome::Staged(ids)
    }

    /// Applies a written request.
    fn apply(&mut self, req: &Request<'_>, ids: &[MsgId]) {
        let msg = &req.msg;
        self.state.add_message(
            &req.appid,
            &req.to,
            ids,
            msg.fromid,
            msg.toid,
            msg.datatype,
            &msg.content,
        );
        if let Some(once) = &req.once {
            self.state.add_once(
                &req.appid,
                msg.fromid,
                &once.cmsgid,
                once.until,
                Some(&once.print),
            );
        }
    }
}

/// The `msg` record of `req`, its receivers getting `ids`.
fn record<'r>(req: &'r Request<'r>, ids: &'r [MsgId]) -> Record<'r> {
    let msg = &req.msg;
    let once = req.once.as_ref();
    Record::Msg {
        a: Cow::Borrowed(&req.appid),
        to: Cow::Borrowed(&req.to),
        ids: Cow::Borrowed(ids),
        f: msg.fromid,
        t: msg.toid,
        d: msg.datatype,
        c: Cow::Borrowed(&msg.content),
        k: once.map(|o| Cow::Borrowed(&*o.cmsgid)),
        x: once.map(|o| o.until),
        h: once.map(|o| Cow::Borrowed(&*o.print)),
    }
}
