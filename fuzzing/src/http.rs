//! Target for the HTTP long-poll API's hostile input (`http_request`): a
//! poll's query string and `If-None-Match` header, and an ACK's body, sent
//! through the server's own routes (`HttpApi::routes`) in process. Whatever
//! comes in, the answer is a JSON error naming the parameter, header or
//! field at fault (400), a 413 for an ACK body over the limit, or, for a
//! poll whose input is fine, the 429 of a server that holds no polls at
//! all (its cap is 0, so nothing is ever held and every input is answered
//! at once). Never a panic, never a 500.

use std::future::poll_fn;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::Service as _;
use tonic::service::Routes;
use vane_control::agents::AgentRegistry;
use vane_control::http::{HttpApi, MAX_ACK_BYTES};
use vane_control::hub::{Hub, Published};
use vane_control::watch::DiscoveryService;

/// The group every request names; it has a version, so it is known.
const GROUP: &str = "edge";

/// What a 400 may name: the poll's parameters and header, the ACK's fields.
const NAMES: &[&str] = &[
    "query",
    "node",
    "after_version",
    "wait",
    "format",
    "label",
    "If-None-Match",
    "body",
    "version",
    "hash",
    "error",
    "error.message",
];

/// A request: the first byte picks what the rest is (0: a snapshot poll's
/// query; 1: a values poll's `If-None-Match`; 2: an ACK's body; 3: a poll's
/// query, a newline, then its `If-None-Match`).
pub fn http_request(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (query, header, body) = match which % 4 {
        0 => (Some(rest), None, None),
        1 => (None, Some(rest), None),
        2 => (None, None, Some(rest)),
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (Some(&rest[..i]), Some(&rest[i + 1..]), None),
            None => (Some(rest), None, None),
        },
    };
    let request = match body {
        Some(body) => ack(body),
        None => poll(which % 4 == 1, query, header),
    };
    // What an HTTP server would refuse before the API sees it.
    let Some(request) = request else {
        return;
    };
    let (status, answer) = send(request);
    check(status, &answer, body.map(<[u8]>::len));
}

fn poll(
    values: bool,
    query: Option<&[u8]>,
    header: Option<&[u8]>,
) -> Option<http::Request<Full<Bytes>>> {
    let view = if values { "values" } else { "snapshot" };
    let mut uri = format!("/v1/groups/{GROUP}/{view}");
    if let Some(query) = query {
        uri.push('?');
        uri.push_str(std::str::from_utf8(query).ok()?);
    }
    let mut request = http::Request::get(http::Uri::try_from(uri).ok()?);
    if let Some(header) = header {
        request = request.header(
            http::header::IF_NONE_MATCH,
            http::HeaderValue::from_bytes(header).ok()?,
        );
    }
    request.body(Full::new(Bytes::new())).ok()
}

fn ack(body: &[u8]) -> Option<http::Request<Full<Bytes>>> {
    http::Request::post(format!("/v1/groups/{GROUP}/ack"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .ok()
}

/// The routes of an API beside a hub where [`GROUP`] has version 1, with no
/// policy and a cap of 0 held polls; and the runtime they run on.
fn api() -> &'static (Runtime, Routes) {
    static API: OnceLock<(Runtime, Routes)> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime: {e}"));
        let routes = runtime.block_on(async {
            let hub = Arc::new(Hub::new());
            hub.publish(Published::new(
                GROUP.into(),
                1,
                "a".repeat(64),
                0,
                Bytes::new(),
            ));
            let discovery = DiscoveryService::new(
                hub,
                Arc::new(AgentRegistry::new(std::time::Duration::from_secs(60))),
                CancellationToken::new(),
                TaskTracker::new(),
            );
            HttpApi::beside(&discovery)
                .with_limits(0, std::time::Duration::from_secs(60))
                .routes()
        });
        (runtime, routes)
    })
}

/// Sends `request` through the routes: the status and the body.
fn send(request: http::Request<Full<Bytes>>) -> (u16, Bytes) {
    let (runtime, routes) = api();
    let mut routes = routes.clone();
    runtime.block_on(async move {
        let ready = poll_fn(|cx| {
            tonic::codegen::Service::<http::Request<Full<Bytes>>>::poll_ready(&mut routes, cx)
        })
        .await;
        if let Err(e) = ready {
            match e {}
        }
        let response = match routes.call(request).await {
            Ok(response) => response,
            Err(e) => match e {},
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("reading the answer: {e}"))
            .to_bytes();
        (status, body)
    })
}

/// What must hold of every answer (`ack_bytes`: the ACK body's length, for
/// an ACK).
fn check(status: u16, answer: &[u8], ack_bytes: Option<usize>) {
    let text = String::from_utf8_lossy(answer);
    let json: serde_json::Value = serde_json::from_slice(answer)
        .unwrap_or_else(|e| panic!("status {status}: the answer is not JSON ({e}): {text}"));
    let code = json["code"].as_str().unwrap_or_default();
    let message = json["message"].as_str().unwrap_or_default();
    assert!(!code.is_empty() && !message.is_empty(), "{text}");
    match (status, ack_bytes) {
        (400, _) => {
            assert_eq!(code, "invalid_argument", "{text}");
            let (name, reason) = message
                .split_once(": ")
                .unwrap_or_else(|| panic!("a 400 that names nothing: {text}"));
            assert!(!name.is_empty() && !reason.is_empty(), "{text}");
            // Only names of the API: what the client made up (an unknown
            // parameter or field, a label's key) is in the reason.
            assert!(
                NAMES.contains(&name),
                "a 400 naming neither a parameter nor a field: {text}"
            );
        }
        (413, Some(bytes)) => assert!(bytes > MAX_ACK_BYTES, "413 for {bytes} bytes: {text}"),
        (429, None) => assert!(message.contains("--max-held-polls"), "{text}"),
        _ => panic!("status {status} for hostile input: {text}"),
    }
    if let Some(bytes) = ack_bytes {
        assert!(
            bytes <= MAX_ACK_BYTES || status == 413,
            "{bytes} bytes over the limit answered {status}: {text}"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(data: &[u8]) -> (u16, String) {
        let (which, rest) = data.split_first().unwrap();
        let request = match which {
            2 => ack(rest),
            _ => poll(*which == 1, Some(rest), None),
        }
        .unwrap();
        let (status, body) = send(request);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn answers_are_what_the_target_expects() {
        // A fine poll: the 429 of a server holding none.
        let (status, body) = answer(b"\x00node=a&after_version=1&wait=30s");
        assert_eq!(status, 429, "{body}");
        let (status, body) = answer(b"\x00wait=1e9s");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"wait: "), "{body}");
        let (status, body) = answer(b"\x02{\"node\":\"n\",\"version\":1,\"hash\":\"x\"} x");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"body: trailing"), "{body}");
        // Every seed passes the target's checks.
        for seed in crate::seeds::all()
            .iter()
            .filter(|s| s.target == "http_request")
        {
            http_request(&seed.bytes);
        }
    }

    /// ACK bodies of 1 MiB and more: 413, read no further than the limit.
    #[test]
    fn huge_ack_bodies_are_413() {
        for size in [MAX_ACK_BYTES + 1, 1 << 20, (1 << 20) + 7, 4 << 20] {
            let mut data = vec![2u8];
            data.extend(std::iter::repeat_n(b' ', size));
            http_request(&data);
            let (status, body) = send(ack(&data[1..]).unwrap());
            assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
        }
    }
}
