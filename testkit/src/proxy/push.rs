//! Pushing a snapshot built by the tests: through `vanectl` (what an
//! operator does), or straight over the Admin API for pushing many times a
//! second.

use std::sync::atomic::{AtomicU64, Ordering};

use vane_model::SnapshotSpec;
use vane_proto as pb;

use crate::control::ControlServer;

/// Pushes `spec` to `group` with `vanectl push -o json`; returns the version.
#[track_caller]
pub fn push(server: &ControlServer, group: &str, spec: &SnapshotSpec) -> u64 {
    let n = PUSHES.fetch_add(1, Ordering::Relaxed);
    let path =
        crate::control::fixtures::write_json(&server.scratch(), &format!("push-{n}.json"), spec);
    let out = server
        .ctl(&[
            "push",
            group,
            "-f",
            path.to_str().expect("utf-8 path"),
            "-o",
            "json",
        ])
        .ok();
    out.json()["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("push -o json without a version: {out}"))
}

static PUSHES: AtomicU64 = AtomicU64::new(0);

/// Pushes over the Admin gRPC API directly (for pushing many times a
/// second); returns the version.
pub struct AdminPusher {
    client: pb::admin_client::AdminClient<tonic::transport::Channel>,
}

impl AdminPusher {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let client = pb::admin_client::AdminClient::connect(url.to_owned())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        Self { client }
    }

    /// Pushes `spec`; returns the version.
    pub async fn push(&mut self, group: &str, spec: &SnapshotSpec) -> Result<u64, tonic::Status> {
        let resp = self
            .client
            .push(pb::PushRequest {
                supersede: false,
                group: group.into(),
                snapshot: Some(vane_model::proto::spec_to_proto(spec)),
                expected_version: None,
                dry_run: false,
                message: "proxy test".into(),
            })
            .await?;
        Ok(resp.into_inner().version)
    }
}
