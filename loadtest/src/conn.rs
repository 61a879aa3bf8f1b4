//! One subscription connection inside a worker: non-blocking connect from a
//! chosen source address, the GET for `/cget/stream` or `/cget/poll`, the
//! response head, then either the chunked frame stream or a loop of
//! long-poll answers on one keep-alive connection.
//!
//! A `Conn` knows nothing of the event loop; `worker.rs` feeds it readiness
//! and it reports deliveries through [`Sink`] and its end as [`End`].

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use socket2::{Domain, Socket, Type};

use crate::proto::{self, BodyKind, ChunkDecoder, Frame};

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
    poll: bool,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    body: BodyKind,
    chunks: ChunkDecoder,
    /// Decoded body bytes not yet split into frames.
    lines: Vec<u8>,
    close_after: bool,
}

/// Opens a non-blocking socket bound to `bind` and starts connecting.
pub fn start_connect(target: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
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
    pub fn new(user: usize, sock: TcpStream, poll: bool, request: Vec<u8>) -> Conn {
        Conn {
            user,
            sock,
            phase: Phase::Connecting,
            started: Instant::now(),
            up: false,
            released: false,
            poll,
            wbuf: request,
            rbuf: Vec::new(),
            body: BodyKind::UntilClose,
            chunks: ChunkDecoder::default(),
            lines: Vec::new(),
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
        // only comes when there is something to say.
        if self.poll && !self.up && self.phase == Phase::Head {
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
        if self.phase == Phase::Connecting {
            return Ok(());
        }
        loop {
            match self.sock.read(scratch) {
                Ok(0) => {
                    self.process(sink, host)?;
                    return Err(self.end("server closed the connection".into()));
                }
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.end(format!("read: {e}"))),
            }
        }
        self.process(sink, host)?;
        if self.rbuf.capacity() > 256 * 1024 && self.rbuf.len() < 4096 {
            self.rbuf.shrink_to(4096);
        }
        Ok(())
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
                    if !self.poll && !self.up {
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
                        if self.close_after || !self.poll {
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
        while let Some(nl) = self.lines[start..].iter().position(|&b| b == b'\n') {
            let line = self.lines[start..start + nl].to_vec();
            start += nl + 1;
            if !line.is_empty() {
                self.one_frame(sink, &line)?;
            }
        }
        self.lines.drain(..start);
        Ok(())
    }

    fn one_frame(&mut self, sink: &mut dyn Sink, line: &[u8]) -> Result<(), End> {
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
