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
//! - `state`: [`Console`] and [`Gate`].
//! - `api`: the JSON endpoints.
//! - `views`: the JSON shapes, from the protobuf answers.
//! - `diff`: a unified diff cut into typed, numbered lines.
//! - `errors`: an Admin refusal as an HTTP status and a JSON body.

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};
use vane_proto::admin_server::Admin;

mod api;
mod assets;
mod diff;
mod errors;
mod state;
mod views;

pub use api::{FORGERY_HEADER, HISTORY_LIMIT, MAX_AUDIT_ENTRIES, MAX_BODY_BYTES};
pub use state::{Console, Gate};

/// Where the page is served.
pub const PATH: &str = "/ui/";

impl<A: Admin> Console<A> {
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
            .with_state(std::sync::Arc::new(self))
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
