//! A blocking keep-alive HTTP/1.1 client over std sockets, for the parent's
//! provisioning calls and its sender threads (the subscriptions, which need
//! thousands of sockets, live in the workers' mio loops instead).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::proto::{self, BodyKind};

/// One keep-alive connection; reconnects on the next request after an error.
pub struct Client {
    target: SocketAddr,
    host: String,
    sock: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Client {
    pub fn new(target: SocketAddr, timeout: Duration) -> Client {
        Client {
            target,
            host: target.to_string(),
            sock: None,
            buf: Vec::with_capacity(4096),
            timeout,
        }
    }

    /// POSTs `json` as a `haoshuo=` form; returns (status, body).
    pub fn post(
        &mut self,
        path: &str,
        json: &str,
        extra_headers: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let req = proto::post_form(&self.host, path, json, extra_headers);
        self.send(&req)
    }

    /// POSTs `body` as `text/plain` (an nchan publish); returns (status, body).
    pub fn post_plain(&mut self, path: &str, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let req = proto::post_plain(&self.host, path, body);
        self.send(&req)
    }

    /// GETs `path`; returns (status, body).
    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let req = proto::get_request(&self.host, path);
        self.send(&req)
    }

    fn send(&mut self, req: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let res = self.exchange(req);
        if res.is_err() {
            self.sock = None;
        }
        res
    }

    fn exchange(&mut self, req: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        if self.sock.is_none() {
            let s = TcpStream::connect_timeout(&self.target, self.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.sock = Some(s);
            self.buf.clear();
        }
        let sock = self.sock.as_mut().expect("connected above");
        sock.write_all(req)?;
        let mut chunk = [0u8; 16 * 1024];
        let head = loop {
            if let Some(h) = proto::parse_head(&self.buf).map_err(std::io::Error::other)? {
                break h;
            }
            let n = sock.read(&mut chunk)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let BodyKind::Length(len) = head.body else {
            return Err(std::io::Error::other("expected a Content-Length response"));
        };
        while self.buf.len() < head.len + len {
            let n = sock.read(&mut chunk)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head.len..head.len + len].to_vec();
        self.buf.drain(..head.len + len);
        if head.close {
            self.sock = None;
        }
        Ok((head.status, body))
    }
}
