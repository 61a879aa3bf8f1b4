//! One subscription connection inside a worker: non-blocking connect from a
//! chosen source address, the GET for `/cget/stream`, `/cget/poll` or an
//! nchan `/sub/<channel>`, the response head, then either the chunked
//! stream (haoshuo frames or nchan messages) or a loop of long-poll answers
//! on one keep-alive connection.
//!
//! A `Conn` knows nothing of the event loop; `worker.rs` (and the paced
//! readers of `slow.rs`) feed it readiness and it reports deliveries through
//! [`Sink`] and its end as [`End`].

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use socket2::{Domain, Socket, Type};

use crate::proto::{self, BodyKind, ChunkDecoder, Frame};

/// What a connection subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// haoshuo `/cget/stream`: up at the 200 head, then JSON frames.
    Stream,
    /// haoshuo `/cget/poll`: up once the request is out, one answer each.
    Poll,
    /// nchan http-chunked `/sub/<channel>`: up once the request is out
    /// (nchan sends the head only with the first message), then one
    /// `<seq> <content>` line per message.
    Nchan,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    /// Request (being) sent, waiting for the response head.
    Head,
    /// Reading a body (stream: forever; poll: one answer).
    Body,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    /// Never got going: connect error, non-200, refusal frame, bad bytes.
    Failed(String),
    /// Was established, then the server closed or broke it.
    Dropped(String),
}

/// Receives what a connection learns.
pub trait Sink {
    /// A data frame delivered these messages.
    fn deliver(&mut self, user: usize, msgs: Vec<(u64, String)>);
    /// The subscription is up (stream head 200, or poll request sent).
    fn established(&mut self, user: usize);
    /// A long-poll answer completed.
    fn poll_answered(&mut self);
    /// (uid, token, seq) for the user's next long-poll request.
    fn resume(&self, user: usize) -> (u64, String, u64);
}

pub struct Conn {
    pub user: usize,
    pub sock: TcpStream,
    pub phase: Phase,
    pub started: Instant,
    /// Counted as established (so its end is a drop, not a failure).
    pub up: bool,
    /// The worker no longer counts it as in flight.
    pub released: bool,
    kind: Kind,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    body: BodyKind,
    chunks: ChunkDecoder,
    /// Decoded body bytes not yet split into frames.
    lines: Vec<u8>,
    /// `lines[..scanned]` holds no newline: a big frame read in small
    /// pieces is scanned once, not once per piece.
    scanned: usize,
    close_after: bool,
}

/// What one bounded read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes taken from the socket.
    pub bytes: usize,
    /// The socket had nothing more (the next read waits for readiness).
    pub drained: bool,
}

/// Opens a non-blocking socket bound to `bind` and starts connecting.
/// `rcvbuf` sets SO_RCVBUF first: before connect, so the window the
/// connection advertises (and scales) is sized from it.
pub fn start_connect(
    target: SocketAddr,
    bind: Option<IpAddr>,
    rcvbuf: Option<usize>,
) -> std::io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(ip) = bind {
        // Defer picking the source port to connect(): then the 4-tuple, not
        // the source address alone, has to be unique.
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a pointer to a c_int of the given size.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

impl Conn {
    pub fn new(user: usize, sock: TcpStream, kind: Kind, request: Vec<u8>) -> Conn {
        Conn {
            user,
            sock,
            phase: Phase::Connecting,
            started: Instant::now(),
            up: false,
            released: false,
            kind,
            wbuf: request,
            rbuf: Vec::new(),
            body: BodyKind::UntilClose,
            chunks: ChunkDecoder::default(),
            lines: Vec::new(),
            scanned: 0,
            close_after: false,
        }
    }

    fn end(&self, msg: String) -> End {
        if self.up {
            End::Dropped(msg)
        } else {
            End::Failed(msg)
        }
    }

    /// The socket is writable: finish connecting, send what is queued.
    pub fn on_writable(&mut self, sink: &mut dyn Sink) -> Result<(), End> {
        if self.phase == Phase::Connecting {
            if let Ok(Some(e)) | Err(e) = self.sock.take_error() {
                return Err(End::Failed(format!("connect: {e}")));
            }
            match self.sock.peer_addr() {
                Ok(_) => self.phase = Phase::Head,
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(End::Failed(format!("connect: {e}"))),
            }
        }
        self.flush(sink)
    }

    fn flush(&mut self, sink: &mut dyn Sink) -> Result<(), End> {
        while !self.wbuf.is_empty() {
            match self.sock.write(&self.wbuf) {
                Ok(0) => return Err(self.end("write returned 0".into())),
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.end(format!("write: {e}"))),
            }
        }
        // A long-poll is "subscribed" once its request is out: the answer
        // only comes when there is something to say. So is an nchan
        // subscriber, whose response head waits for the first message.
        if self.kind != Kind::Stream && !self.up && self.phase == Phase::Head {
            self.up = true;
            sink.established(self.user);
        }
        Ok(())
    }

    /// The socket is readable: read everything, act on it.
    pub fn on_readable(
        &mut self,
        sink: &mut dyn Sink,
        scratch: &mut [u8],
        host: &str,
    ) -> Result<(), End> {
        self.read_upto(sink, scratch, host, usize::MAX).map(|_| ())
    }

    /// Reads at most `limit` bytes (a paced reader's allowance) and acts
    /// on them. Unless the outcome says `drained`, the socket may hold
    /// more: an edge-triggered caller must come back without waiting for
    /// another readiness event.
    pub fn read_upto(
        &mut self,
        sink: &mut dyn Sink,
        scratch: &mut [u8],
        host: &str,
        limit: usize,
    ) -> Result<ReadOutcome, End> {
        let mut out = ReadOutcome {
            bytes: 0,
            drained: true,
        };
        if self.phase == Phase::Connecting {
            return Ok(out);
        }
        out.drained = false;
        while out.bytes < limit {
            let want = scratch.len().min(limit - out.bytes);
            match self.sock.read(&mut scratch[..want]) {
                Ok(0) => {
                    self.process(sink, host)?;
                    return Err(self.end("server closed the connection".into()));
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&scratch[..n]);
                    out.bytes += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    out.drained = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.end(format!("read: {e}"))),
            }
        }
        self.process(sink, host)?;
        if self.rbuf.capacity() > 256 * 1024 && self.rbuf.len() < 4096 {
            self.rbuf.shrink_to(4096);
        }
        Ok(out)
    }

    fn process(&mut self, sink: &mut dyn Sink, host: &str) -> Result<(), End> {
        loop {
            match self.phase {
                Phase::Connecting => return Ok(()),
                Phase::Head => {
                    let head = match proto::parse_head(&self.rbuf) {
                        Ok(Some(h)) => h,
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(self.end(e)),
                    };
                    self.rbuf.drain(..head.len);
                    if head.status != 200 {
                        return Err(End::Failed(format!("HTTP {}", head.status)));
                    }
                    self.body = head.body;
                    self.close_after = head.close;
                    self.chunks = ChunkDecoder::default();
                    self.phase = Phase::Body;
                    if self.kind == Kind::Stream && !self.up {
                        self.up = true;
                        sink.established(self.user);
                    }
                }
                Phase::Body => match self.body {
                    BodyKind::Chunked => {
                        let used = self
                            .chunks
                            .feed(&self.rbuf, &mut self.lines)
                            .map_err(|e| self.end(e))?;
                        self.rbuf.drain(..used);
                        self.frames(sink)?;
                        if self.chunks.done {
                            return Err(self.end("stream ended".into()));
                        }
                        return Ok(());
                    }
                    BodyKind::Length(n) => {
                        if self.rbuf.len() < n {
                            return Ok(());
                        }
                        let body: Vec<u8> = self.rbuf.drain(..n).collect();
                        self.one_frame(sink, trim_newline(&body))?;
                        sink.poll_answered();
                        if self.close_after || self.kind != Kind::Poll {
                            return Err(self.end("server closed after answer".into()));
                        }
                        let (uid, token, seq) = sink.resume(self.user);
                        self.wbuf = proto::subscribe_request(host, false, uid, &token, seq);
                        self.phase = Phase::Head;
                        self.flush(sink)?;
                    }
                    BodyKind::UntilClose => {
                        self.lines.append(&mut self.rbuf);
                        return self.frames(sink);
                    }
                },
            }
        }
    }

    /// Splits complete `\n`-terminated frames out of the decoded body.
    fn frames(&mut self, sink: &mut dyn Sink) -> Result<(), End> {
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(nl) = self.lines[from..].iter().position(|&b| b == b'\n') {
            let end = from + nl;
            let line = self.lines[start..end].to_vec();
            start = end + 1;
            from = start;
            if !line.is_empty() {
                self.one_frame(sink, &line)?;
            }
        }
        self.lines.drain(..start);
        self.scanned = self.lines.len();
        Ok(())
    }

    fn one_frame(&mut self, sink: &mut dyn Sink, line: &[u8]) -> Result<(), End> {
        if self.kind == Kind::Nchan {
            let msg = proto::parse_nchan_message(line).map_err(|e| self.end(e))?;
            sink.deliver(self.user, vec![msg]);
            return Ok(());
        }
        match proto::parse_frame(line) {
            Ok(Frame::Data(msgs)) => {
                sink.deliver(self.user, msgs);
                Ok(())
            }
            Ok(Frame::Noop) => Ok(()),
            Ok(Frame::Refused(kind)) => Err(End::Failed(format!("refused: {kind}"))),
            Err(e) => Err(self.end(e)),
        }
    }
}

fn trim_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    #[derive(Default)]
    struct Got {
        msgids: Vec<u64>,
        contents: Vec<String>,
        established: bool,
    }

    impl Sink for Got {
        fn deliver(&mut self, _user: usize, msgs: Vec<(u64, String)>) {
            self.msgids.extend(msgs.iter().map(|m| m.0));
            self.contents.extend(msgs.into_iter().map(|m| m.1));
        }
        fn established(&mut self, _user: usize) {
            self.established = true;
        }
        fn poll_answered(&mut self) {}
        fn resume(&self, _user: usize) -> (u64, String, u64) {
            unreachable!()
        }
    }

    fn data_frame(msgid: u64) -> String {
        format!(
            r#"{{"type":"data","content":"{{\"msgs\":[{{\"content\":\"{}\",\"msgid\":\"{msgid}\"}}]}}"}}"#,
            "x".repeat(40)
        ) + "\n"
    }

    /// Connects `conn` to the canned server and returns the request it got.
    fn connect(
        conn: &mut Conn,
        got: &mut Got,
        server: &mut std::net::TcpStream,
        n: usize,
    ) -> Vec<u8> {
        let t0 = Instant::now();
        while conn.phase == Phase::Connecting {
            conn.on_writable(got).unwrap();
            assert!(t0.elapsed() < Duration::from_secs(5), "connect");
        }
        let mut seen = vec![0; n];
        server.read_exact(&mut seen).unwrap();
        seen
    }

    /// An nchan subscriber is up once its request is out (nchan sends the
    /// head only with the first message); then each chunk is one message
    /// `<seq> <content>`, delivered with seq as the msgid, also when the
    /// bytes arrive a few at a time.
    #[test]
    fn nchan_subscriber() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = start_connect(listener.local_addr().unwrap(), None, None).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let req = proto::nchan_subscribe_request("h", "fan1");
        let mut conn = Conn::new(0, sock, Kind::Nchan, req.clone());
        let mut got = Got::default();
        assert_eq!(connect(&mut conn, &mut got, &mut server, req.len()), req);
        assert!(got.established && conn.up);
        let mut wire =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for seq in 1..=3 {
            let m = proto::nchan_message(seq, &format!("{}:pad", 1000 + seq));
            wire.extend_from_slice(format!("{:x}\r\n{m}\r\n", m.len()).as_bytes());
        }
        server.write_all(&wire).unwrap();
        let mut scratch = [0u8; 64];
        let t0 = Instant::now();
        let mut total = 0;
        while total < wire.len() {
            let o = conn.read_upto(&mut got, &mut scratch, "h", 5).unwrap();
            total += o.bytes;
            if o.drained {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "got {:?}",
                got.msgids
            );
        }
        assert_eq!(got.msgids, [1, 2, 3]);
        assert_eq!(got.contents, ["1001:pad", "1002:pad", "1003:pad"]);
        // A line that is not `<seq> <content>` ends the subscription.
        server.write_all(b"4\r\nxyz\n\r\n").unwrap();
        let end = loop {
            match conn.read_upto(&mut got, &mut scratch, "h", 64) {
                Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => break e,
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no end");
        };
        assert!(matches!(end, End::Dropped(_)), "{end:?}");
    }

    /// A stream read 7 bytes at a time from a canned server on a local
    /// socket: no read exceeds the limit, frames split across reads and
    /// across chunks still arrive whole and in order.
    #[test]
    fn bounded_reads_deliver_every_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sock = start_connect(addr, None, Some(4096)).unwrap();
        let buf = socket2::SockRef::from(&sock).recv_buffer_size().unwrap();
        assert!(buf >= 4096, "SO_RCVBUF {buf}");
        let (mut server, _) = listener.accept().unwrap();
        let req = proto::subscribe_request("h", true, 1, "t", 1);
        let mut conn = Conn::new(0, sock, Kind::Stream, req.clone());
        let mut got = Got::default();
        assert_eq!(connect(&mut conn, &mut got, &mut server, req.len()), req);
        let t0 = Instant::now();
        // Frame 2 is split over two chunks: frame 1 and the head of 2,
        // then the rest of 2 and frame 3.
        let body = data_frame(1) + &data_frame(2) + &data_frame(3);
        let cut = data_frame(1).len() + 20;
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [&body[..cut], &body[cut..]] {
            wire.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        server.write_all(&wire).unwrap();
        let mut scratch = [0u8; 64];
        let mut total = 0;
        while got.msgids.len() < 3 {
            let o = conn.read_upto(&mut got, &mut scratch, "h", 7).unwrap();
            assert!(o.bytes <= 7);
            total += o.bytes;
            if o.drained {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "got {:?}",
                got.msgids
            );
        }
        // The last chunk's CRLF follows its last frame.
        loop {
            let o = conn.read_upto(&mut got, &mut scratch, "h", 7).unwrap();
            total += o.bytes;
            if o.drained {
                break;
            }
        }
        assert!(got.established);
        assert_eq!(got.msgids, [1, 2, 3]);
        assert_eq!(total, wire.len());
        // The server ends the stream: the next read says so.
        server.write_all(b"0\r\n\r\n").unwrap();
        drop(server);
        let end = loop {
            match conn.read_upto(&mut got, &mut scratch, "h", 7) {
                Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => break e,
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no end");
        };
        assert!(matches!(end, End::Dropped(_)), "{end:?}");
    }
}
