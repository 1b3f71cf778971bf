//! Who is calling and what they may do: identities from client certificates
//! or bearer tokens, the policy that maps them to roles per group, and the
//! per-identity push rate limit.
//!
//! Every Admin and Watch handler asks [`Auth::caller`] who the caller is,
//! then [`Auth::authorize`] whether it may do what it asks. Without a
//! policy, authorization is off: every caller may do everything (allowed
//! only on a loopback listener, or with `--insecure`; see `server.rs`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tonic::Status;

pub mod policy;
pub mod rate;
pub mod reload;
pub mod tokens;

pub use policy::{Action, Policy, Role};
pub use tokens::Tokens;

use crate::accept::ConnInfo;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A client certificate verified against `--client-ca`.
    Certificate,
    /// A bearer token listed in `--tokens`.
    Token,
    /// Nothing: an anonymous caller.
    None,
}

impl Source {
    /// As `WhoAmI` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Token => "token",
            Self::None => "none",
        }
    }
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity ("" when anonymous).
    pub identity: String,
    /// How it was established.
    pub source: Source,
    /// The remote address, for logs and the audit log.
    pub peer: String,
}

impl Caller {
    /// The identity for messages: quoted, or "an anonymous caller".
    pub fn describe(&self) -> String {
        if self.identity.is_empty() {
            "an anonymous caller".to_owned()
        } else {
            format!("identity {:?}", self.identity)
        }
    }
}

/// Authentication and authorization, shared by every service.
#[derive(Debug, Clone)]
pub struct Auth {
    /// `None`: authorization off.
    policy: Option<Arc<ArcSwap<Policy>>>,
    tokens: Option<Arc<ArcSwap<Tokens>>>,
    /// Bumped whenever the policy or the tokens are replaced, so that
    /// long-lived watch streams check again whether they are still allowed
    /// (latest-wins: a stream only needs to know that something changed).
    changes: Arc<watch::Sender<u64>>,
}

impl Auth {
    /// Everyone may do everything (no policy), and tokens are not checked.
    pub fn open() -> Self {
        Self::new(None, None)
    }

    /// Authorization by `policy` (when set), bearer tokens from `tokens`
    /// (when set). Both are swapped in place when their files change; whoever
    /// swaps them calls [`Auth::changed`].
    pub fn new(policy: Option<Arc<ArcSwap<Policy>>>, tokens: Option<Arc<ArcSwap<Tokens>>>) -> Self {
        Self {
            policy,
            tokens,
            changes: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Tells open streams that the policy or the tokens were replaced.
    pub fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Notified on every [`Auth::changed`]; `None` when nothing can change
    /// (no policy and no tokens: every caller is allowed for good).
    pub fn subscribe_changes(&self) -> Option<watch::Receiver<u64>> {
        (self.policy.is_some() || self.tokens.is_some()).then(|| self.changes.subscribe())
    }

    /// Whether a policy decides (false: everyone may do everything).
    pub fn enforced(&self) -> bool {
        self.policy.is_some()
    }

    /// Who sent a request: the verified client certificate's identity (from
    /// the connection) and/or the bearer token in the `authorization`
    /// header. A token that is not known, or one naming another identity
    /// than the certificate, is refused with `Unauthenticated`.
    pub fn caller(
        &self,
        conn: Option<&ConnInfo>,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, Status> {
        let peer = conn.map(|c| c.remote.to_string()).unwrap_or_default();
        let cert = conn.and_then(|c| c.identity.as_deref());
        let token = match authorization {
            None => None,
            Some(value) => Some(self.token_identity(value)?),
        };
        let (identity, source) = match (cert, token) {
            (Some(c), Some(t)) if c != t => {
                return Err(Status::unauthenticated(format!(
                    "authorization: the bearer token is for identity {t:?} but the client certificate is for {c:?}"
                )));
            }
            (Some(c), _) => (c.to_owned(), Source::Certificate),
            (None, Some(t)) => (t, Source::Token),
            (None, None) => (String::new(), Source::None),
        };
        Ok(Caller {
            identity,
            source,
            peer,
        })
    }

    /// The caller of a unary or streaming tonic request.
    pub fn caller_of<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        // Outside our accept loop (tonic's own incoming), only the address.
        let tcp_only = request.remote_addr().map(|remote| ConnInfo {
            remote,
            identity: None,
            tls: false,
        });
        self.caller(
            request.extensions().get::<ConnInfo>().or(tcp_only.as_ref()),
            request
                .metadata()
                .get("authorization")
                .map(tonic::metadata::MetadataValue::as_bytes),
        )
    }

    fn token_identity(&self, value: &[u8]) -> Result<String, Status> {
        let unknown = || Status::unauthenticated("authorization: the bearer token is not known");
        let value = std::str::from_utf8(value).map_err(|_| unknown())?;
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(Status::unauthenticated(
                "authorization: expected \"Bearer <token>\"",
            ));
        };
        let Some(tokens) = &self.tokens else {
            return Err(Status::unauthenticated(
                "authorization: this server accepts no bearer tokens (no --tokens file)",
            ));
        };
        tokens
            .load()
            .identity(token.trim())
            .map(str::to_owned)
            .ok_or_else(unknown)
    }

    /// Whether `caller` is let in without any credential by the policy's
    /// `anonymous_watch` (never the case with authorization off, when every
    /// caller is anonymous and trusted).
    pub fn is_anonymous_grant(&self, caller: &Caller) -> bool {
        self.policy.is_some() && caller.identity.is_empty()
    }

    /// Whether `caller` may do `action` in `group`: `Unauthenticated` for an
    /// anonymous caller when a policy is in force, `PermissionDenied` when
    /// the policy does not allow it.
    pub fn authorize(&self, caller: &Caller, action: Action, group: &str) -> Result<(), Status> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        if caller.identity.is_empty() {
            if policy.load().allows_anonymous(action, group) {
                return Ok(());
            }
            return Err(Status::unauthenticated(format!(
                "{} group {group:?}: needs a client certificate or a bearer token",
                capitalized(action)
            )));
        }
        if policy.load().allows(&caller.identity, action, group) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} may not {} group {group:?}",
                caller.describe(),
                action.as_str()
            )))
        }
    }

    /// Whether `caller` may do `action` in every group (listing all
    /// groups); `Ok(false)` when only some groups are allowed.
    pub fn allowed_everywhere(&self, caller: &Caller, action: Action) -> Result<bool, Status> {
        let Some(policy) = &self.policy else {
            return Ok(true);
        };
        if caller.identity.is_empty() {
            return Err(Status::unauthenticated(format!(
                "{} every group: needs a client certificate or a bearer token",
                capitalized(action)
            )));
        }
        Ok(policy.load().allows_everywhere(&caller.identity, action))
    }

    /// Whether `caller` may do `action` in `group` (a filter for lists).
    pub fn allows(&self, caller: &Caller, action: Action, group: &str) -> bool {
        self.authorize(caller, action, group).is_ok()
    }

    /// The one group `caller` may do `action` in, when its policy bindings
    /// name exactly one group and no pattern (`None` without a policy).
    pub fn only_group(&self, caller: &Caller, action: Action) -> Option<String> {
        let policy = self.policy.as_ref()?.load();
        let mut groups = policy
            .bindings_of(&caller.identity)
            .filter(|b| b.role.permits(action))
            .flat_map(|b| b.groups.iter().map(|g| g.as_str().to_owned()))
            .collect::<Vec<_>>();
        groups.sort();
        groups.dedup();
        match groups.as_slice() {
            [only] if !only.ends_with('*') => Some(only.clone()),
            _ => None,
        }
    }

    /// The roles `caller` holds, for `WhoAmI`: `(role, group patterns)`.
    pub fn roles(&self, caller: &Caller) -> Vec<(Role, Vec<String>)> {
        let Some(policy) = &self.policy else {
            return vec![(Role::Admin, vec!["*".to_owned()])];
        };
        if caller.identity.is_empty() {
            return Vec::new();
        }
        let policy = policy.load();
        policy
            .bindings_of(&caller.identity)
            .map(|b| {
                (
                    b.role,
                    b.groups.iter().map(|g| g.as_str().to_owned()).collect(),
                )
            })
            .collect()
    }
}

fn capitalized(action: Action) -> &'static str {
    match action {
        Action::Watch => "Watching",
        Action::Read => "Reading",
        Action::Write => "Pushing to",
        Action::ReadSecrets => "Reading the private keys of",
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use sha2::Digest as _;

    use super::*;

    fn auth() -> Auth {
        let policy = Policy::parse(
            "bindings: [{identity: operator, role: operator, groups: ['*']}, {identity: ci, role: operator, groups: [edge]}]",
        )
        .unwrap();
        let tokens = Tokens::parse(&format!(
            "tokens: [{{identity: ci, sha256: {}}}]",
            hex::encode(sha2::Sha256::digest(b"t0ken"))
        ))
        .unwrap();
        Auth::new(
            Some(Arc::new(ArcSwap::from_pointee(policy))),
            Some(Arc::new(ArcSwap::from_pointee(tokens))),
        )
    }

    fn conn(identity: Option<&str>) -> ConnInfo {
        ConnInfo {
            remote: SocketAddr::from(([127, 0, 0, 1], 5)),
            identity: identity.map(Arc::from),
            tls: false,
        }
    }

    #[test]
    fn identities_from_certificates_and_tokens() {
        let a = auth();
        let c = a.caller(Some(&conn(Some("operator"))), None).unwrap();
        assert_eq!(
            (c.identity.as_str(), c.source),
            ("operator", Source::Certificate)
        );
        let c = a.caller(Some(&conn(None)), Some(b"Bearer t0ken")).unwrap();
        assert_eq!((c.identity.as_str(), c.source), ("ci", Source::Token));
        assert_eq!(c.peer, "127.0.0.1:5");
        let e = a
            .caller(Some(&conn(None)), Some(b"Bearer nope"))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = a
            .caller(Some(&conn(Some("operator"))), Some(b"Bearer t0ken"))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("\"ci\""), "{}", e.message());
        let e = a.caller(None, Some(b"Basic x")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let anon = a.caller(None, None).unwrap();
        assert_eq!(anon.source, Source::None);
    }

    #[test]
    fn authorization_codes() {
        let a = auth();
        let ci = a.caller(None, Some(b"Bearer t0ken")).unwrap();
        assert!(a.authorize(&ci, Action::Write, "edge").is_ok());
        let e = a.authorize(&ci, Action::Write, "core").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "identity \"ci\" may not push to group \"core\""
        );
        let anon = a.caller(None, None).unwrap();
        let e = a.authorize(&anon, Action::Read, "edge").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            e.message(),
            "Reading group \"edge\": needs a client certificate or a bearer token"
        );
        assert!(!a.allowed_everywhere(&ci, Action::Read).unwrap());
        assert!(Auth::open().authorize(&anon, Action::Write, "x").is_ok());
        assert_eq!(
            a.roles(&ci),
            vec![(Role::Operator, vec!["edge".to_owned()])]
        );
    }
}
