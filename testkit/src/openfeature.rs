//! OpenFeature SDKs with flagd's provider in in-process mode, following a
//! Vane group through `flagd.sync.v1` (`tests/openfeature-clients/`), as
//! child processes: each prints JSON lines (`ready`, `stale`, `error`,
//! `configuration-changed`, and `values` whenever an evaluation result
//! changes) which [`FlagdClient`] collects.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::lines::{LineProcess, wait_for};
use crate::openfeature_tools::OpenFeatureTools;

/// Which SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    /// `openfeature-sdk` with `openfeature-provider-flagd`.
    Python,
    /// `@openfeature/server-sdk` with `@openfeature/flagd-provider`.
    Node,
}

/// One evaluation the client repeats: a flag, its type, the code's
/// default and the evaluation context.
pub fn eval(flag: &str, kind: &str, default: Value, context: Value) -> Value {
    serde_json::json!({"flag": flag, "type": kind, "default": default, "context": context})
}

/// A running SDK client.
pub struct FlagdClient {
    process: LineProcess,
    sdk: Sdk,
}

impl FlagdClient {
    /// Starts `sdk` syncing group `selector` from the control server at
    /// `control` (plaintext), evaluating `evals` every 100 ms.
    pub fn start(sdk: Sdk, control: SocketAddr, selector: &str, evals: &[Value]) -> Self {
        let tools = OpenFeatureTools::for_tests();
        let mut cmd = match sdk {
            Sdk::Python => tools.python_client(),
            Sdk::Node => tools.node_client(),
        };
        cmd.args(["--host", &control.ip().to_string()])
            .args(["--port", &control.port().to_string()])
            .args(["--selector", selector])
            .args(["--grace-seconds", "2"])
            .args(["--eval", &Value::Array(evals.to_vec()).to_string()]);
        Self {
            process: LineProcess::start(cmd, &format!("{sdk:?} OpenFeature client")),
            sdk,
        }
    }

    /// The SDK.
    pub fn sdk(&self) -> Sdk {
        self.sdk
    }

    /// Every line, parsed.
    pub fn events(&self) -> Vec<Value> {
        self.process
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `values` of every `values` line so far, in order.
    pub fn value_lines(&self) -> Vec<Vec<Value>> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "values")
            .filter_map(|e| e["values"].as_array().cloned())
            .collect()
    }

    /// Waits until the latest results satisfy `check`; returns them.
    #[track_caller]
    pub fn wait_values(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        wait_for(
            &format!("{what} ({:?} client)", self.sdk),
            within,
            || self.value_lines().pop().filter(|v| check(v)),
            || self.process.describe(),
        )
    }

    /// How many lines are `event` events.
    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The last lines and stderr, for failure messages.
    pub fn describe(&self) -> String {
        self.process.describe()
    }
}

/// The `value` fields of results, in order.
pub fn values_of(results: &[Value]) -> Vec<Value> {
    results.iter().map(|r| r["value"].clone()).collect()
}
