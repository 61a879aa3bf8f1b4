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

/// One `append` or `append_once` waiting to be committed: the call's
/// arguments, owned, since the leader that commits them runs in another
/// thread.
pub(super) struct Request {
    pub appid: Box<str>,
    pub to: Box<[Uid]>,
    pub msg: NewMessage,
    pub once: Option<OnceRequest>,
}

/// The `cmsgid` of an `append_once`, with the message's fingerprint.
pub(super) struct OnceRequest {
    pub cmsgid: Box<str>,
    pub until: u64,
    pub print: String,
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

#[derive(Default)]
struct Queue {
    /// Requests no leader has taken yet, with their tickets.
    waiting: Vec<(u64, Request)>,
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

    /// Requests waiting to be taken by a leader (for tests).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.queue().waiting.len()
    }
}

impl EmbeddedStore {
    /// Queues `req` and returns once it has been committed, by this thread
    /// as the leader of its group or by another one.
    pub(super) fn submit(&self, req: Request) -> Answer {
        let commits = &self.commits;
        let mut queue = commits.queue();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, req));
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return answer;
            }
            if !queue.leading {
                // No leader: this request is still waiting (a leader answers
                // everything it took before it stops leading), so lead.
                queue.leading = true;
                drop(queue);
                self.lead();
                queue = commits.queue();
                continue;
            }
            queue.sleeping += 1;
            queue = commits
                .answered
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            queue.sleeping -= 1;
        }
    }

    /// Commits one group: takes the state lock first, so that everything
    /// queued while it waits for it joins the group, then every waiting
    /// request, and posts their answers.
    fn lead(&self) {
        let inner = self.inner.lock_idle();
        let batch = mem::take(&mut self.commits.queue().waiting);
        // Posts the answers and ends the leadership even if committing
        // panics, so no follower waits forever.
        let mut post = Post {
            commits: &self.commits,
            tickets: batch.iter().map(|(t, _)| *t).collect(),
            answers: Vec::with_capacity(batch.len()),
        };
        let requests: Vec<&Request> = batch.iter().map(|(_, r)| r).collect();
        post.answers = match inner {
            Ok(inner) => commit_group(&self.inner, inner, &requests),
            Err(_) => requests
                .iter()
                .map(|_| Err(unavailable("store state poisoned by a panic")))
                .collect(),
        };
        // The state lock was released by `commit_group`, before the
        // answers are posted.
    }
}

/// A leader's group: posts its answers and hands the leadership back when
/// dropped.
struct Post<'a> {
    commits: &'a Committer,
    tickets: Vec<u64>,
    /// One per ticket, in order; missing ones (a panic) are `Unavailable`.
    answers: Vec<Answer>,
}

impl Drop for Post<'_> {
    fn drop(&mut self) {
        let mut queue = self.commits.queue();
        let mut answers = mem::take(&mut self.answers).into_iter();
        for &ticket in &self.tickets {
            let answer = answers
                .next()
                .unwrap_or_else(|| Err(unavailable("store panicked while committing")));
            queue.answers.insert(ticket, answer);
        }
        queue.leading = false;
        let sleeping = queue.sleeping > 0;
        drop(queue);
        if sleeping {
            self.commits.answered.notify_all();
        }
    }
}

/// How one request of a group came out of validation.
enum Outcome {
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
/// in the same order; returns one answer per request. A request that fails
/// validation fails alone; if the write fails, every request that needed it
/// gets `Unavailable` and the state is untouched.
///
/// Under `Always` the write and its fsync run without the state lock, so
/// readers are not held up by them (they see the group's messages only
/// once applied, after the fsync); `Inner::writing` keeps every other
/// mutation out until then, so the state validated against is still the
/// state the group is applied to.
fn commit_group<'a>(
    core: &'a Core,
    mut inner: MutexGuard<'a, Inner>,
    requests: &[&Request],
) -> Vec<Answer> {
    let now = unix_now();
    if requests.iter().any(|r| r.once.is_some()) {
        // Forget expired sends now and then, not on every call: the map
        // only grows by what is sent within one window.
        if inner.state.once_len() >= inner.once_purge_at {
            inner.state.purge_once(now);
            inner.once_purge_at = (inner.state.once_len() * 2).max(ONCE_PURGE_MIN);
        }
    }
    let mut pending = Pending::default();
    debug_assert!(!inner.log.has_staged());
    let outcomes: Vec<Outcome> = requests
        .iter()
        .enumerate()
        // The last request needs no bookkeeping for later ones.
        .map(|(i, req)| inner.check_and_stage(req, &mut pending, i + 1 < requests.len(), now))
        .collect();
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
    if let Err(why) = written {
        return outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Done(answer) => answer,
                Outcome::Staged(_) | Outcome::AfterEarlier(_) => Err(unavailable(why.clone())),
            })
            .collect();
    }
    let mut applied = false;
    let answers = requests
        .iter()
        .zip(outcomes)
        .map(|(req, o)| match o {
            Outcome::Done(answer) | Outcome::AfterEarlier(answer) => answer,
            Outcome::Staged(ids) => {
                inner.apply(req, &ids);
                applied = true;
                Ok(Some(ids))
            }
        })
        .collect();
    if applied {
        inner.after_write();
    }
    answers
}

impl Inner {
    /// Validates `req` against the state and the group's earlier requests
    /// (`pending`); if it is to be stored, stages its record and, if
    /// `remember` (a later request follows), notes it in `pending`.
    fn check_and_stage<'r>(
        &mut self,
        req: &'r Request,
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
    fn apply(&mut self, req: &Request, ids: &[MsgId]) {
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
fn record<'r>(req: &'r Request, ids: &'r [MsgId]) -> Record<'r> {
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
