//! vane-control's web console: the page at `/ui/`, its static assets
//! (embedded) and the JSON API under `/ui/api/` that the page calls
//! (docs/console.md).
//!
//! Every API call is made through the Admin service the server hands to
//! [`Console::new`], as one of its gRPC methods carrying the caller's
//! connection (the extensions the server's accept loop put on the request,
//! with the client certificate's identity) and `authorization` header: the
//! same authentication, policy, rate limit and audit log as `vanectl`'s
//! calls, and no second policy here. The console asks the server one more
//! question, through [`Gate`]: may this caller act on this group, to show
//! or hide the action buttons (the Admin service refuses the action anyway).
//!
//! # Layout
//! - `assets`: the embedded page, scripts and style sheet, and the headers
//!   every response carries.
//! - `api`: the JSON endpoints.
//! - `views`: the JSON shapes, from the protobuf answers.
//! - `diff`: a unified diff cut into typed, numbered lines.
//! - `errors`: an Admin refusal as an HTTP status and a JSON body.

use std::sync::Arc;

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};
use vane_proto::admin_server::Admin;

mod api;
mod assets;
mod diff;
mod errors;
mod views;

pub use api::{FORGERY_HEADER, HISTORY_LIMIT, MAX_AUDIT_ENTRIES, MAX_BODY_BYTES};

/// Where the page is served.
pub const PATH: &str = "/ui/";

/// The one question the console asks the server directly: whether the
/// caller of a request may act (roll back, steer a rollout) on a group, as
/// the server's policy says. Only decides which buttons the page shows;
/// never audited.
pub trait Gate: Send + Sync + 'static {
    /// Whether the caller of the request with head `parts` may roll back
    /// `group` and pause, resume, promote or abort its rollout.
    fn may_operate(&self, parts: &http::request::Parts, group: &str) -> bool;
}

/// The console over an Admin service.
pub struct Console<A> {
    admin: A,
    gate: Arc<dyn Gate>,
    /// Whether it listens on loopback only: then API requests must name a
    /// loopback `Host` (DNS rebinding).
    loopback: bool,
}

impl<A> std::fmt::Debug for Console<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("loopback", &self.loopback)
            .finish_non_exhaustive()
    }
}

impl<A: Admin> Console<A> {
    /// The console calling `admin` for everything it shows and does, and
    /// `gate` for which buttons to show.
    pub fn new(admin: A, gate: impl Gate) -> Self {
        Self {
            admin,
            gate: Arc::new(gate),
            loopback: false,
        }
    }

    /// Whether the console's listener is on a loopback address (default:
    /// false). When it is, API requests whose `Host` is not a loopback
    /// name are refused: a foreign page whose DNS name was rebound to
    /// 127.0.0.1 cannot read or act through it.
    #[must_use]
    pub fn on_loopback(mut self, loopback: bool) -> Self {
        self.loopback = loopback;
        self
    }

    /// The routes: the page, its assets, the API; `/` and `/ui` redirect to
    /// `/ui/`, any other path is a JSON 404.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to(PATH) }))
            .route("/ui", get(|| async { Redirect::to(PATH) }))
            .route(PATH, get(assets::index))
            .route("/ui/assets/{name}", get(assets::asset))
            .route("/ui/api/session", get(api::session::<A>))
            .route("/ui/api/groups", get(api::groups::<A>))
            .route("/ui/api/groups/{group}/history", get(api::history::<A>))
            .route(
                "/ui/api/groups/{group}/diff/{from}/{to}",
                get(api::diff::<A>),
            )
            .route("/ui/api/groups/{group}/agents", get(api::agents::<A>))
            .route("/ui/api/groups/{group}/rollout", get(api::rollout::<A>))
            .route(
                "/ui/api/groups/{group}/rollout/{action}",
                post(api::rollout_action::<A>),
            )
            .route("/ui/api/groups/{group}/rollback", post(api::rollback::<A>))
            .route("/ui/api/audit", get(api::audit::<A>))
            .fallback(not_found)
            .layer(axum::middleware::map_response(assets::secure))
            .with_state(Arc::new(self))
    }
}

async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    errors::ApiError::not_found(format!(
        "{} {}: no such page or endpoint (the console is at {PATH})",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}

#[cfg(test)]
mod tests;
