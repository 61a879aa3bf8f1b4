//! API errors, and the one place where each becomes an HTTP status and the
//! JSON body `{"type":"error","code":<status>,"msg":"..."}`.

use std::borrow::Cow;

use crate::api::codec::CodecError;
use crate::auth::AuthError;
use crate::http::request::Method;
pub use crate::http::response::error_response;
use crate::http::response::write_error_with;
use crate::http::ws::HandshakeError;
use crate::store::StoreError;

#[derive(Debug, PartialEq, Eq)]
pub enum ApiError {
    /// 400: malformed request, JSON or missing field.
    BadRequest(Cow<'static, str>),
    /// 400: not a WebSocket handshake we take (answered with the version
    /// we speak, as RFC 6455, 4.2.2 asks).
    BadHandshake(HandshakeError),
    /// 401: bad, expired or someone else's token; wrong password.
    Unauthorized(&'static str),
    /// 403: e.g. sending to a group one is not a member of.
    Forbidden(&'static str),
    /// 404: unknown user, group or path.
    NotFound(Cow<'static, str>),
    /// 405: the path exists, the method does not; it takes this one.
    MethodNotAllowed(Method),
    /// 409: the username is taken.
    Conflict(&'static str),
    /// 429: a limit; the client may try again after this many seconds.
    TooMany(&'static str, u64),
    /// 503: the store cannot be reached; nothing was written.
    Unavailable,
    /// 500: a bug or an OS failure outside the store (e.g. no randomness).
    Internal,
    /// Never answered: the call would wait, and runs where nothing may
    /// ([`crate::api::Answering::Queued`]); it goes to a worker instead.
    /// Answered 500 if it ever reached a client (a bug).
    WouldWait,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) | ApiError::BadHandshake(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooMany(..) => 429,
            ApiError::Unavailable => 503,
            ApiError::Internal | ApiError::WouldWait => 500,
        }
    }

    pub fn msg(&self) -> &str {
        match self {
            ApiError::BadRequest(m) | ApiError::NotFound(m) => m,
            ApiError::Unauthorized(m) | ApiError::Forbidden(m) | ApiError::Conflict(m) => m,
            ApiError::TooMany(m, _) => m,
            ApiError::BadHandshake(e) => e.reason(),
            ApiError::MethodNotAllowed(Method::Get) => "method not allowed: use GET",
            ApiError::MethodNotAllowed(_) => "method not allowed: use POST",
            ApiError::Unavailable => "store unavailable",
            ApiError::Internal | ApiError::WouldWait => "internal error",
        }
    }

    /// The whole HTTP response for this error (a 405 says in `Allow` which
    /// methods the path takes, as RFC 9110 requires; a 429 in `Retry-After`
    /// when to come back).
    pub fn response(&self, keep_alive: bool) -> Vec<u8> {
        let extra: Vec<u8> = match self {
            ApiError::MethodNotAllowed(Method::Get) => b"Allow: GET, HEAD\r\n".to_vec(),
            ApiError::MethodNotAllowed(_) => b"Allow: POST\r\n".to_vec(),
            ApiError::TooMany(_, secs) => format!("Retry-After: {secs}\r\n").into_bytes(),
            ApiError::BadHandshake(_) => b"Sec-WebSocket-Version: 13\r\n".to_vec(),
            _ => Vec::new(),
        };
        let mut out = crate::http::buffer::answer_buffer(200);
        write_error_with(&mut out, self.status(), self.msg(), keep_alive, &extra);
        out
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => ApiError::Conflict("username taken"),
            StoreError::CmsgidReused => ApiError::Conflict("cmsgid reused for a different message"),
            StoreError::NoSuchUser(uid) => ApiError::NotFound(format!("no such user {uid}").into()),
            StoreError::NoSuchGroup(gid) => {
                ApiError::NotFound(format!("no such group {gid}").into())
            }
            StoreError::TooManyGroups(_) => ApiError::Forbidden("group quota reached"),
            StoreError::Unavailable(_) => ApiError::Unavailable,
        }
    }
}

impl From<CodecError> for ApiError {
    fn from(e: CodecError) -> Self {
        ApiError::BadRequest(e.to_string().into())
    }
}

impl From<AuthError> for ApiError {
    fn from(_: AuthError) -> Self {
        ApiError::Internal
    }
}
