//! One client connection: its socket, its state, and its byte queues.
//!
//! A connection is a small enum in the reactor's slab. It holds no heap
//! memory while idle: `inbuf` is only filled while a request is partial (or
//! pipelined requests wait their turn), `out` only while the socket refuses
//! bytes. Its size is pinned by a test below. What a subscriber may queue
//! is bounded by the delivery layer's watermarks, not here: a connection is
//! never closed for being slow, only for making no progress at all (the
//! reactor's send timeout).

use std::io::{self, IoSlice, Read, Write};
use std::ops::{Deref, DerefMut};

use mio::net::TcpStream;

use crate::delivery::subscriber::Subscriber;
use crate::net::timer::{Secs, NEVER};
use crate::store::MsgId;

pub struct Conn {
    pub sock: TcpStream,
    /// Changes with every request, so answers and deliveries meant for an
    /// earlier request (or an earlier connection in this slot) are ignored.
    pub gen: u32,
    pub state: State,
    /// When this connection's timer should fire (see `timer`).
    pub deadline: Secs,
    /// The tick of this connection's live timer-wheel entry; `NEVER` if none.
    pub armed_at: Secs,
    /// The last tick at which queued output made progress (or there was
    /// none): the send timeout counts from here.
    pub progress_at: Secs,
    /// What edge-triggered events said of reading, and what the reads
    /// since have seen (see [`Conn::read`]).
    pub readiness: Readiness,
    /// The request being read asked for `100 Continue` and got it.
    pub continue_sent: bool,
    /// Close (lingering) once `out` is flushed.
    pub close_after_flush: bool,
    /// Accepted on the admin listener.
    pub admin: bool,
    /// Bytes read but not yet consumed: a partial or pipelined request.
    pub inbuf: InBuf,
    /// Bytes the socket did not take yet; none (no allocation, 8 bytes
    /// here instead of 28) on a connection whose writes all went through.
    out: Option<Box<OutQueue>>,
}

/// A connection's input buffer: a (pooled) `Vec` while bytes wait in it,
/// nothing at all otherwise, so an idle connection spends 8 bytes on it
/// instead of a `Vec`'s 24. Read as a `Vec` (empty when there is none);
/// written through [`InBuf::from`] a pooled buffer, or through `DerefMut`,
/// which allocates one if there is none.
// The box is the point: 8 bytes in every connection instead of 24, and the
// reactor pools the boxes with their buffers, so it costs no allocation.
#[allow(clippy::box_collection)]
#[derive(Default)]
pub struct InBuf(Option<Box<Vec<u8>>>);

/// What an [`InBuf`] without a buffer reads as.
static EMPTY: Vec<u8> = Vec::new();

impl InBuf {
    /// The buffer, if there is one, for the pool.
    pub fn take(&mut self) -> Option<Box<Vec<u8>>> {
        self.0.take()
    }
}

impl From<Box<Vec<u8>>> for InBuf {
    fn from(buf: Box<Vec<u8>>) -> InBuf {
        InBuf(Some(buf))
    }
}

impl Deref for InBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl DerefMut for InBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Box::default)
    }
}

/// A connection's queued output: `bytes` from `pos` on are still to go.
#[derive(Default)]
struct OutQueue {
    bytes: Vec<u8>,
    pos: usize,
}

/// What a connection is doing. Each variant names the call that moves it on.
pub enum State {
    /// Waiting for (the rest of) a request.
    /// Call: readable. Next: `Waiting`, or `Linger` on a bad request.
    Reading,
    /// A request is at a worker; `seen` is the highest live msgid delivered
    /// meanwhile (a stream or poll subscribes before its answer arrives),
    /// `revoked` says its token was logged out meanwhile.
    /// Call: `CoreMsg::Reply`. Next: `Reading`, `Subscribed`, `Linger`.
    Waiting { seen: MsgId, revoked: bool },
    /// An open stream or held poll; the subscriber says what it is owed.
    /// Call: deliveries, pages, writable, timer, revocation, shutdown.
    /// Next: `Reading` (a poll answered), `Linger` (a stream ended).
    Subscribed(Subscriber),
    /// Answered and shut for writing; draining the client's bytes so it can
    /// read the answer instead of a reset. Call: EOF or deadline. Next: closed.
    Linger,
}

/// Whether a connection has bytes to read, as its edge-triggered events
/// and its reads since tell it (one byte, so `Conn` stays 80).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Read until `WouldBlock`, or until a read that did not fill the
    /// buffer: the next event brings more.
    Drained,
    /// An event said bytes came.
    Readable,
    /// An event said the peer closed (or the socket failed): no event
    /// comes after this one, so reads go on until they see the close.
    PeerClosed,
}

/// What a read brought.
pub enum Input {
    /// This many bytes are in the scratch buffer.
    Data(usize),
    /// The socket has nothing more now.
    Drained,
    /// The peer closed, or the socket failed.
    Closed,
}

impl Conn {
    pub fn new(sock: TcpStream, gen: u32) -> Conn {
        Conn {
            sock,
            gen,
            state: State::Reading,
            deadline: NEVER,
            armed_at: NEVER,
            progress_at: 0,
            readiness: Readiness::Drained,
            continue_sent: false,
            close_after_flush: false,
            admin: false,
            inbuf: InBuf::default(),
            out: None,
        }
    }

    /// Takes an event's word on reading: bytes came (`readable`), or the
    /// peer closed or the socket failed (`closed`, which stays).
    pub fn on_event(&mut self, readable: bool, closed: bool) {
        if closed {
            self.readiness = Readiness::PeerClosed;
        } else if readable && self.readiness == Readiness::Drained {
            self.readiness = Readiness::Readable;
        }
    }

    /// Whether a read may bring bytes (or the close).
    pub fn readable(&self) -> bool {
        self.readiness != Readiness::Drained
    }

    /// Reads once into `scratch`. A read that does not fill `scratch` took
    /// everything the socket held (a TCP read copies what is queued up to
    /// the length asked), so the readiness is cleared as `WouldBlock` would
    /// clear it, without the read that would say so: bytes arriving after
    /// it raise a new edge-triggered event. Not so once the peer closed:
    /// no event follows that one, and the close itself is still to read.
    /// (nginx does the same with `EPOLLRDHUP`.) A drained connection reads
    /// nothing: `Drained` until the next event.
    pub fn read(&mut self, scratch: &mut [u8]) -> Input {
        if !self.readable() {
            return Input::Drained;
        }
        loop {
            match self.sock.read(scratch) {
                Ok(0) => return Input::Closed,
                Ok(n) => {
                    if n < scratch.len() && self.readiness == Readiness::Readable {
                        self.readiness = Readiness::Drained;
                    }
                    return Input::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readiness = Readiness::Drained;
                    return Input::Drained;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Input::Closed,
            }
        }
    }

    /// Writes `parts` in order, with one vectored write when the socket takes
    /// them all (the common case: nothing is copied); what it does not take
    /// is queued, whatever its size (callers bound what they produce).
    /// Returns how many bytes went to the socket, or `None` if the
    /// connection failed.
    pub fn send(&mut self, parts: &[&[u8]]) -> Option<usize> {
        let mut written = 0;
        if self.out.is_none() {
            written = write_parts(&mut self.sock, parts).ok()?;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if written < total {
            let out = self.out.get_or_insert_with(Box::default);
            if out.pos * 2 >= out.bytes.len() {
                // Most of the queue went: drop the sent prefix before
                // adding, so a queue that never quite empties does not grow
                // forever.
                out.bytes.drain(..out.pos);
                out.pos = 0;
            }
            queue_unsent(&mut out.bytes, parts, written);
        }
        Some(written)
    }

    /// Writes queued bytes. Returns how many went, or `None` if the
    /// connection failed.
    pub fn flush(&mut self) -> Option<usize> {
        let mut written = 0;
        let Some(out) = self.out.as_mut() else {
            return Some(0);
        };
        while out.pos < out.bytes.len() {
            match self.sock.write(&out.bytes[out.pos..]) {
                Ok(0) => return None,
                Ok(n) => {
                    out.pos += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        // Everything went: an idle connection keeps no buffer.
        self.out = None;
        Some(written)
    }

    pub fn out_empty(&self) -> bool {
        self.out.is_none()
    }

    /// Bytes waiting for the socket.
    pub fn queued(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.bytes.len() - o.pos)
    }

    /// Bytes the queue holds, sent ones included (tests: what it costs).
    #[cfg(test)]
    fn out_held(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.bytes.len())
    }
}

/// Appends to `out` what of `parts` (in order) lies past their first
/// `written` bytes: the part the socket did not take.
fn queue_unsent(out: &mut Vec<u8>, parts: &[&[u8]], written: usize) {
    let mut skip = written;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        out.extend_from_slice(&part[skip..]);
        skip = 0;
    }
}

/// Slices passed to one `writev`: a live frame of the most messages the
/// reactor puts in one (two slices each, plus header and trailer) fits.
const MAX_IOVECS: usize = 64;

/// Writes as much of `parts` as the socket takes; returns how many bytes.
fn write_parts(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let mut skip = written;
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut n = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            if n == slices.len() {
                break;
            }
            slices[n] = IoSlice::new(&part[skip..]);
            skip = 0;
            n += 1;
        }
        match w.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => written += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection cost that 100k idle streams multiply. Growing it
    /// is a decision, not an accident: change this number on purpose.
    #[test]
    fn conn_size_is_pinned() {
        assert_eq!(std::mem::size_of::<State>(), 40);
        // mio's sockets carry a selector id in debug builds only (and the
        // descriptor then no longer fits beside the other 4-byte fields).
        let sock = if cfg!(debug_assertions) { 16 } else { 0 };
        assert_eq!(std::mem::size_of::<Conn>(), 80 + sock);
    }

    /// A writer that takes at most `cap` bytes per call, then blocks.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let n = buf.len().min(self.cap);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        /// Like a socket: takes from several slices in one call.
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.write(&joined)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A connection on loopback whose socket takes only a few KiB (small
    /// send and receive buffers), and its blocking peer.
    fn slow_pair() -> (Conn, std::net::TcpStream) {
        use socket2::{Domain, Socket, Type};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        peer.set_recv_buffer_size(4096).unwrap();
        peer.connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let ours = Socket::from(listener.accept().unwrap().0);
        ours.set_send_buffer_size(4096).unwrap();
        ours.set_nonblocking(true).unwrap();
        let peer = std::net::TcpStream::from(peer);
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (Conn::new(TcpStream::from_std(ours.into()), 1), peer)
    }

    /// The output of a stream whose reader keeps up exactly with what is
    /// produced, after falling behind once: every byte arrives, in order;
    /// `send` and `flush` count what went to the socket and `queued` what
    /// did not; the queue keeps only what is unsent (it does not grow with
    /// all that ever passed through it); an emptied queue frees its buffer.
    #[test]
    fn a_slow_peer_gets_every_byte_and_the_queue_stays_bounded() {
        let (mut conn, mut peer) = slow_pair();
        assert_eq!(conn.send(&[b"ab", b"", b"cd"]), Some(4), "all fits");
        assert!(conn.out_empty());
        assert_eq!(conn.flush(), Some(0));
        let mut sent = b"abcd".to_vec();
        let mut to_socket = 4;
        let mut counter = 0u8;
        // 4000 bytes in three parts (one empty) of a running count.
        let mut send = |conn: &mut Conn, sent: &mut Vec<u8>| -> usize {
            let bytes: Vec<u8> = (0..4000)
                .map(|_| {
                    counter = counter.wrapping_add(1) % 251;
                    counter
                })
                .collect();
            let (a, b) = bytes.split_at(1500);
            sent.extend_from_slice(&bytes);
            conn.send(&[a, b"", b]).expect("the peer is there")
        };
        let mut rounds = 0;
        while conn.queued() == 0 {
            to_socket += send(&mut conn, &mut sent);
            rounds += 1;
            assert!(rounds < 10_000, "the socket never filled");
        }
        assert_eq!(conn.queued(), sent.len() - to_socket);
        let mut got = vec![0; 4];
        peer.read_exact(&mut got).unwrap();
        let mut behind = 0;
        for _ in 0..200 {
            let mut buf = [0; 4000];
            peer.read_exact(&mut buf).unwrap();
            got.extend_from_slice(&buf);
            to_socket += conn.flush().expect("the peer is there");
            to_socket += send(&mut conn, &mut sent);
            assert_eq!(conn.queued(), sent.len() - to_socket);
            behind += usize::from(conn.queued() > 0);
            assert!(
                conn.out_held() <= 64 * 1024,
                "{} bytes kept for {} unsent",
                conn.out_held(),
                conn.queued()
            );
        }
        assert!(behind > 150, "the queue was in use in only {behind} rounds");
        // The reader catches up.
        while conn.queued() > 0 {
            let mut buf = [0; 4096];
            let n = peer.read(&mut buf).unwrap();
            assert!(n > 0, "the connection closed early");
            got.extend_from_slice(&buf[..n]);
            to_socket += conn.flush().expect("the peer is there");
        }
        assert_eq!(to_socket, sent.len());
        let mut rest = vec![0; sent.len() - got.len()];
        peer.read_exact(&mut rest).unwrap();
        got.extend_from_slice(&rest);
        assert!(got == sent, "the bytes arrived changed or out of order");
        assert!(conn.out_empty());
        assert!(conn.out.is_none(), "an idle connection keeps no buffer");
    }

    /// What the socket did not take is queued whole and in order, wherever
    /// the write stopped: inside the first part, at a part's edge, inside a
    /// later one, or past an empty part.
    #[test]
    fn the_unsent_rest_of_the_parts_is_queued() {
        let parts: [&[u8]; 4] = [b"abc", b"", b"defgh", b"ij"];
        for written in 0..=10 {
            let mut out = b"q".to_vec();
            queue_unsent(&mut out, &parts, written);
            assert_eq!(
                out,
                [b"q".as_slice(), &b"abcdefghij"[written..]].concat(),
                "{written} written"
            );
        }
    }

    /// Waits until `conn`'s socket is readable.
    fn wait_readable(conn: &mut Conn) {
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut conn.sock, mio::Token(0), mio::Interest::READABLE)
            .unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty(), "never readable");
        poll.registry().deregister(&mut conn.sock).unwrap();
    }

    /// Bytes, then nothing for now, then the peer's close; a connection the
    /// peer reset reads as closed too, not as "nothing for now" (which would
    /// keep the dead connection until its timer).
    #[test]
    fn reads_tell_data_drained_and_closed_apart() {
        let mut scratch = [0; 16];
        let (mut conn, mut peer) = slow_pair();
        peer.write_all(b"hello").unwrap();
        wait_readable(&mut conn);
        conn.on_event(true, false); // as the reactor does
        let mut five = [0; 5];
        assert!(matches!(conn.read(&mut five), Input::Data(5)));
        assert_eq!(&five, b"hello");
        assert!(matches!(conn.read(&mut scratch), Input::Drained));
        assert!(!conn.readable(), "WouldBlock clears the readiness");
        drop(peer);
        wait_readable(&mut conn);
        conn.on_event(true, false);
        assert!(matches!(conn.read(&mut scratch), Input::Closed));

        let (mut conn, peer) = slow_pair();
        let peer = socket2::Socket::from(peer);
        peer.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(peer); // a reset
        wait_readable(&mut conn);
        conn.on_event(true, false);
        assert!(matches!(conn.read(&mut scratch), Input::Closed));
    }

    /// A read that leaves the socket drained clears the readiness without
    /// the read that would say `WouldBlock`; one that fills the buffer
    /// does not (more may wait), nor does one after the peer closed (its
    /// close is still to be read, and no event will say so again).
    #[test]
    fn a_short_read_clears_the_readiness_unless_the_peer_closed() {
        let (mut conn, mut peer) = slow_pair();
        peer.write_all(b"0123456789").unwrap();
        wait_readable(&mut conn);
        conn.on_event(true, false);
        let mut four = [0; 4];
        assert!(matches!(conn.read(&mut four), Input::Data(4)));
        assert!(conn.readable(), "a full buffer: more may wait");
        let mut scratch = [0; 16];
        assert!(matches!(conn.read(&mut scratch), Input::Data(6)));
        assert_eq!(&scratch[..6], b"456789");
        assert!(!conn.readable(), "a short read drained the socket");
        // Bytes that come after it wait for their own event.
        peer.write_all(b"more").unwrap();
        wait_readable(&mut conn);
        assert!(matches!(conn.read(&mut scratch), Input::Drained));
        conn.on_event(true, false);
        assert!(matches!(conn.read(&mut scratch), Input::Data(4)));

        peer.write_all(b"bye").unwrap();
        drop(peer);
        wait_readable(&mut conn);
        conn.on_event(true, true);
        assert!(matches!(conn.read(&mut scratch), Input::Data(3)));
        assert!(conn.readable(), "the peer's close is still to be read");
        assert!(matches!(conn.read(&mut scratch), Input::Closed));
    }

    /// A write to a connection the peer reset fails, and the failure is
    /// told as one (`None`): not taken for a full socket (`Some(0)`, which
    /// would keep the dead connection until its send timeout) and not
    /// retried (the next write fails again: a loop for ever). Both ways in:
    /// `flush` of a queue, and `send` with nothing queued (`write_parts`).
    #[test]
    fn a_write_to_a_reset_peer_is_an_error() {
        let (mut conn, peer) = slow_pair();
        // Fill the socket until part of a send is queued.
        let chunk = [7u8; 4000];
        let mut rounds = 0;
        while conn.queued() == 0 {
            conn.send(&[&chunk]).expect("the peer is there");
            rounds += 1;
            assert!(rounds < 10_000, "the socket never filled");
        }
        let peer = socket2::Socket::from(peer);
        peer.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(peer); // a reset, unread bytes and all
        wait_readable(&mut conn);
        assert_eq!(conn.flush(), None, "flushing to a reset peer");

        let (mut conn, peer) = slow_pair();
        let peer = socket2::Socket::from(peer);
        peer.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(peer);
        wait_readable(&mut conn);
        assert!(conn.out_empty());
        assert_eq!(conn.send(&[b"ab", b"cd"]), None, "sending to a reset peer");
    }

    #[test]
    fn write_parts_resumes_mid_part_and_stops_on_would_block() {
        for (cap, calls, expect) in [(3, 100, 11), (3, 2, 6), (100, 1, 11), (1, 0, 0)] {
            let mut w = Trickle {
                got: Vec::new(),
                cap,
                calls_left: calls,
            };
            let n = write_parts(&mut w, &[b"ab", b"", b"cdefg", b"hijk"]).unwrap();
            assert_eq!(n, expect, "cap {cap} calls {calls}");
            assert_eq!(w.got, &b"abcdefghijk"[..n]);
        }
    }
}
