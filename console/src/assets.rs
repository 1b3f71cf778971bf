//! The console's page, scripts and style sheet, embedded in the binary
//! (`include_str!` of the files in `console/assets/`: hand-written ES
//! modules the browser loads as they are, no build step), and the headers
//! every console response carries.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};

use crate::errors::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page itself, served at `/ui/`.
const INDEX: &str = include_str!("../assets/index.html");

/// Everything under `/ui/assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/dom.js"),
    },
    Asset {
        name: "views.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/views.js"),
    },
    Asset {
        name: "rollout.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/rollout.js"),
    },
    Asset {
        name: "dialog.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/dialog.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/style.css"),
    },
];

/// What the page may load and do: only this origin's scripts, styles and
/// API, in no frame (clickjacking), no inline script.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `GET /ui/`.
pub(crate) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/assets/{name}`.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => file(a.content_type, a.body),
        None => ApiError::not_found(format!("/ui/assets/{name}: no such file")).into_response(),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Small files, changed only by a new binary: asked again each
            // time, so an upgrade is seen on the next load.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Adds the headers every console response carries.
pub(crate) async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    for (name, value) in set {
        headers.insert(name, value);
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // Nothing here may be embedded by another origin's page.
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let mut sources: Vec<&str> = ASSETS.iter().map(|a| a.body).collect();
        sources.push(INDEX);
        for source in sources {
            for (i, _) in source.match_indices("./") {
                let rest = &source[i + 2..];
                let Some(end) = rest.find(['"', '\'']) else {
                    continue;
                };
                let name = &rest[..end];
                if name.ends_with(".js") || name.ends_with(".css") {
                    assert!(
                        ASSETS.iter().any(|a| a.name == name),
                        "{name} is referenced but not embedded"
                    );
                }
            }
        }
        assert!(INDEX.contains("assets/app.js"));
        assert!(INDEX.contains("assets/style.css"));
    }

    #[test]
    fn no_asset_has_inline_script_the_policy_would_block() {
        assert!(!INDEX.contains("<script>"));
        assert!(!INDEX.contains(" onclick="));
        assert!(!INDEX.contains("style=\""));
    }
}
