//! Byte buffers that travel between threads and come back instead of being
//! freed: a request's bytes go from a reactor to a worker, an answer's
//! from a worker to a reactor. Allocated on one thread and freed on
//! another, each cost a cross-thread `free` (glibc takes the other
//! thread's arena lock for it) on every request; recycled, a request and
//! its answer allocate nothing once the buffers in flight exist.
//!
//! The cycle: a reactor copies a request into a buffer from its [`Pool`];
//! the worker that runs it builds the answer in the buffer its thread was
//! given back last ([`answer_buffer`]) and then gives back the request's
//! ([`give_back`]); the reactor writes the answer and keeps its buffer in
//! the pool for the next request. No buffer is freed, whichever reactor
//! and worker a request meets.

use std::cell::Cell;

/// A new buffer's least capacity: a request or answer of the API (a `/p`
/// is a few hundred bytes each way) fits without growing.
pub const MIN_CAPACITY: usize = 512;

/// Buffers that grew past this (a large body, a long `/pull`) are freed,
/// not kept: what a pool or a thread holds stays small.
pub const MAX_CAPACITY: usize = 4096;

/// Buffers a reactor's pool keeps at most (as many as it has requests at
/// workers at once, up to this; 1 MiB at most).
pub const POOL_MAX: usize = 256;

thread_local! {
    /// The buffer this thread was given back, for its next answer.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes to build an
/// answer in: the one this thread was last given back, else a new one.
pub fn answer_buffer(capacity: usize) -> Vec<u8> {
    let mut buf = SPARE.with(Cell::take);
    buf.reserve(capacity.max(MIN_CAPACITY));
    buf
}

/// Gives a buffer (a request's, once answered) to this thread for its
/// next answer; one is kept, and only one of a reasonable size.
pub fn give_back(mut buf: Vec<u8>) {
    if keeps(&buf) {
        buf.clear();
        SPARE.with(|spare| spare.set(buf));
    }
}

fn keeps(buf: &Vec<u8>) -> bool {
    (MIN_CAPACITY..=MAX_CAPACITY).contains(&buf.capacity())
}

/// A reactor's buffers for the requests it hands to workers, fed by the
/// answers that come back.
#[derive(Default)]
pub struct Pool {
    bufs: Vec<Vec<u8>>,
}

impl Pool {
    /// A buffer holding a copy of `bytes`.
    pub fn copy(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut buf = self
            .bufs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(bytes.len().max(MIN_CAPACITY)));
        buf.extend_from_slice(bytes);
        buf
    }

    /// Keeps `buf` (an answer written, a request not taken) for a later
    /// [`copy`](Pool::copy), unless the pool is full or `buf` is too big
    /// or too small to be worth it.
    pub fn keep(&mut self, mut buf: Vec<u8>) {
        if keeps(&buf) && self.bufs.len() < POOL_MAX {
            buf.clear();
            self.bufs.push(buf);
        }
    }

    /// Buffers kept now.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_buffer_comes_back_as_the_next_answer_and_the_answer_to_the_pool() {
        let mut pool = Pool::default();
        let req = pool.copy(b"POST /p HTTP/1.1\r\n\r\n");
        assert_eq!(req, b"POST /p HTTP/1.1\r\n\r\n");
        let at = req.as_ptr();
        // A worker: done with the request, it answers the next one in it.
        give_back(req);
        let mut answer = answer_buffer(100);
        assert_eq!(answer.as_ptr(), at, "the request's buffer was not reused");
        assert!(answer.is_empty());
        answer.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        // The reactor: the answer written, its buffer takes a request.
        pool.keep(answer);
        assert_eq!(pool.len(), 1);
        let next = pool.copy(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(next.as_ptr(), at, "the answer's buffer was not reused");
        assert_eq!(next, b"GET / HTTP/1.1\r\n\r\n");
        assert!(pool.is_empty());
        // The thread's spare was taken: the next answer gets a new buffer.
        let fresh = answer_buffer(10);
        assert!(fresh.capacity() >= MIN_CAPACITY);
        assert_ne!(fresh.as_ptr(), next.as_ptr());
    }

    #[test]
    fn big_buffers_are_freed_and_the_pool_is_bounded() {
        let mut pool = Pool::default();
        pool.keep(Vec::with_capacity(MAX_CAPACITY + 1));
        pool.keep(Vec::new());
        assert!(pool.is_empty(), "kept a buffer too big or too small");
        for _ in 0..POOL_MAX + 10 {
            pool.keep(Vec::with_capacity(MIN_CAPACITY));
        }
        assert_eq!(pool.len(), POOL_MAX);
        give_back(Vec::with_capacity(MAX_CAPACITY * 2));
        assert!(
            answer_buffer(0).capacity() < MAX_CAPACITY * 2,
            "a thread kept a big buffer"
        );
    }
}
