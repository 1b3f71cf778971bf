//! Client-side TLS for everything in Vane that connects to a server: the
//! agent (to `vane-control`), `vanectl` (to `vane-control`) and the etcd
//! store (to etcd). Written once so the three check files the same way and
//! explain a failed handshake in the same words.
//!
//! # Layout
//! - [`pem`]: reading certificates and keys, checking a CA bundle and a
//!   certificate/key pair, validity dates; every error names what is wrong.
//! - [`client`]: [`ClientTls`] (CA and client certificate) and tonic's
//!   settings for it.
//! - [`token`]: [`BearerToken`] and the interceptor that sends it.
//! - [`words`]: the rustls failure behind an error, in one line with a hint
//!   naming the setting to check.
//!
//! Errors are `String`s naming the problem (`"no PEM certificate … in it"`):
//! each caller prefixes the flag or field the input came from.

pub mod client;
pub mod pem;
pub mod token;
pub mod words;

pub use client::{ClientIdentity, ClientTls};
pub use pem::TlsPart;
pub use token::{BearerInterceptor, BearerToken};
pub use words::{Hints, tls_failure};
