//! The load client's wire protocol as a library: request building and
//! response decoding (`proto`), shared with the server's integration tests
//! (tests/common/http.rs), so one decoder reads haoshuo's answers for both.

pub mod proto;
