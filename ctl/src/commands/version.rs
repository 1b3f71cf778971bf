//! `vanectl version`: this client's version and build commit, and the
//! server's (`Admin.ServerVersion`). When the server does not answer, the
//! client's is still printed before the error (exit 3, as every command).

use serde::Serialize;
use vane_proto as pb;

use crate::args::OutputFormat;
use crate::client::Admin;
use crate::error::CliError;
use crate::output::encode;

/// One side's build, as `-o json|yaml` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Build {
    pub(crate) version: String,
    /// 12 hex digits, or `unknown` (built outside git).
    pub(crate) commit: String,
    /// `YYYY-MM-DD`; empty when unknown.
    pub(crate) commit_date: String,
}

/// The answer of `vanectl version`: `server` is absent when it did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VersionView {
    pub(crate) client: Build,
    pub(crate) server: Option<Build>,
}

/// This binary's build.
pub(crate) fn client() -> Build {
    Build {
        version: vane_build_info::VERSION.to_owned(),
        commit: vane_build_info::COMMIT.to_owned(),
        commit_date: vane_build_info::COMMIT_DATE.to_owned(),
    }
}

/// Asks the server for its build.
pub(crate) async fn run(
    admin: &mut Admin,
    url: &str,
    format: OutputFormat,
) -> Result<String, CliError> {
    let r = admin
        .server_version(pb::ServerVersionRequest {})
        .await
        .map_err(|s| CliError::from_status(&s, url))?
        .into_inner();
    let view = VersionView {
        client: client(),
        server: Some(Build {
            version: r.version,
            commit: r.commit,
            commit_date: r.commit_date,
        }),
    };
    Ok(render(&view, format))
}

/// The error of a `version` call that got no server answer, with the
/// client's build to print first.
pub(crate) fn without_server(e: CliError, format: OutputFormat) -> CliError {
    let view = VersionView {
        client: client(),
        server: None,
    };
    e.with_output(render(&view, format))
}

/// `Client: 0.1.0 (commit …, date)` and `Server: …` lines, or the view
/// encoded.
pub(crate) fn render(view: &VersionView, format: OutputFormat) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    let line = |who: &str, b: &Build| {
        if b.commit_date.is_empty() {
            format!("{who}: {} (commit {})\n", b.version, b.commit)
        } else {
            format!(
                "{who}: {} (commit {}, {})\n",
                b.version, b.commit, b.commit_date
            )
        }
    };
    let mut out = line("Client", &view.client);
    if let Some(s) = &view.server {
        out.push_str(&line("Server", s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json() {
        let b = |c: &str, d: &str| Build {
            version: "0.1.0".into(),
            commit: c.into(),
            commit_date: d.into(),
        };
        let view = VersionView {
            client: b("1a2b3c4d5e6f", "2026-12-07"),
            server: Some(b("unknown", "")),
        };
        assert_eq!(
            render(&view, OutputFormat::Table),
            "Client: 0.1.0 (commit 1a2b3c4d5e6f, 2026-12-07)\nServer: 0.1.0 (commit unknown)\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render(&view, OutputFormat::Json)).unwrap();
        assert_eq!(v["client"]["commit"], "1a2b3c4d5e6f");
        assert_eq!(v["server"]["commit"], "unknown");
        let alone = VersionView {
            client: view.client.clone(),
            server: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&render(&alone, OutputFormat::Json)).unwrap();
        assert!(v["server"].is_null());
    }
}
