//! vanectl's config file (`$VANE_CONFIG`, default
//! `~/.config/vane/config.yaml`): named contexts, each a list of server
//! URLs and the files to authenticate with, and the current one; and how
//! the command line, the environment and the chosen context combine into
//! the settings one run uses.
//!
//! Precedence, per setting: a flag or its environment variable (clap reads
//! both), then the context (`--context`/`VANE_CONTEXT`, else the file's
//! `current_context`), then the built-in default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::args::{Cli, DEFAULT_SERVER, Secret};
use crate::error::CliError;

/// Where the config file is by default, below the home directory.
pub(crate) const DEFAULT_CONFIG: &str = ".config/vane/config.yaml";

/// The config file as written (the YAML contract).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, RawContext>,
}

/// One context as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    /// One URL, several comma-separated, or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    server: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
}

/// A string (its comma-separated parts) or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a URL, comma-separated URLs or a list of URLs")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            split_servers(v).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.extend(split_servers(&s).map_err(serde::de::Error::custom)?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Visitor)
}

/// `URL1,URL2`: the URLs in order, trimmed; an empty one is an error.
pub(crate) fn split_servers(text: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = text.split(',').map(|u| u.trim().to_owned()).collect();
    if urls.iter().any(String::is_empty) {
        return Err(format!(
            "{text:?}: an empty URL in the list (use URL1,URL2)"
        ));
    }
    Ok(urls)
}

/// A checked context: paths resolved, ready to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Context {
    pub(crate) name: String,
    /// Whether it is the file's `current_context`.
    pub(crate) current: bool,
    pub(crate) servers: Vec<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) token_file: Option<PathBuf>,
}

/// A checked config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigFile {
    pub(crate) path: PathBuf,
    pub(crate) current_context: Option<String>,
    /// By name, sorted.
    pub(crate) contexts: Vec<Context>,
}

impl ConfigFile {
    /// Parses and checks the file's text; `home` expands `~/`. Errors name
    /// the file and the field.
    pub(crate) fn parse(text: &str, path: &Path, home: Option<&Path>) -> Result<Self, CliError> {
        let bad = |field: &str, why: &str| {
            CliError::usage(format!(
                "config file {}: {field}{}{why}",
                path.display(),
                if field.is_empty() { "" } else { ": " }
            ))
        };
        let raw: RawFile = if text.trim().is_empty() {
            RawFile::default()
        } else {
            let de = yaml_serde::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." { String::new() } else { field };
                let message = e.inner().to_string();
                // yaml_serde names the field itself in most messages.
                if !field.is_empty() && message.starts_with(&format!("{field}: ")) {
                    bad("", &message)
                } else {
                    bad(&field, &message)
                }
            })?
        };
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let resolve = |p: &Option<String>| p.as_deref().map(|p| expand(p, base, home));
        let mut contexts = Vec::new();
        for (name, c) in &raw.contexts {
            let field = |f: &str| format!("contexts.{name}.{f}");
            if name.trim().is_empty() {
                return Err(bad("contexts", "a context has an empty name"));
            }
            if c.server.is_empty() {
                return Err(bad(
                    &field("server"),
                    "missing: give the server's URL (or several)",
                ));
            }
            match (&c.cert, &c.key) {
                (Some(_), None) => return Err(bad(&field("cert"), "needs key as well")),
                (None, Some(_)) => return Err(bad(&field("key"), "needs cert as well")),
                _ => {}
            }
            contexts.push(Context {
                name: name.clone(),
                current: raw.current_context.as_deref() == Some(name),
                servers: c.server.clone(),
                ca: resolve(&c.ca),
                cert: resolve(&c.cert),
                key: resolve(&c.key),
                token_file: resolve(&c.token_file),
            });
        }
        if let Some(current) = &raw.current_context
            && !raw.contexts.contains_key(current)
        {
            return Err(bad(
                "current_context",
                &format!("no context {current:?} in the file; {}", known(&contexts)),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            current_context: raw.current_context,
            contexts,
        })
    }

    /// The context called `name`, or a usage error naming the known ones.
    pub(crate) fn context(&self, name: &str, asked_by: &str) -> Result<&Context, CliError> {
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                CliError::usage(format!(
                    "{asked_by} {name:?}: no such context in {}; {}",
                    self.path.display(),
                    known(&self.contexts)
                ))
            })
    }
}

fn known(contexts: &[Context]) -> String {
    if contexts.is_empty() {
        "it has no contexts".to_owned()
    } else {
        let names: Vec<&str> = contexts.iter().map(|c| c.name.as_str()).collect();
        format!("known: {}", names.join(", "))
    }
}

/// `~/x` below `home`; a relative path below the config file's directory.
fn expand(path: &str, base: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => base.join(path),
    }
}

/// The config file's path: `--config`/`VANE_CONFIG`, else the default below
/// the home directory; and whether it was named (a named file must exist
/// for the `config` commands; a missing default one means no contexts).
pub(crate) fn path_of(cli: &Cli) -> Option<(PathBuf, bool)> {
    match (&cli.config, &cli.default_config) {
        (Some(p), _) => Some((p.clone(), true)),
        (None, Some(p)) => Some((p.clone(), false)),
        (None, None) => None,
    }
}

/// Reads the config file; `None` when there is none.
pub(crate) fn load(cli: &Cli) -> Result<Option<ConfigFile>, CliError> {
    let Some((path, _)) = path_of(cli) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CliError::usage(format!(
                "config file {}: cannot read: {e}",
                path.display()
            )));
        }
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    ConfigFile::parse(&text, &path, home.as_deref()).map(Some)
}

/// A file setting and where it came from (`--ca`, or `ca (context prod)`),
/// so that an error about it names what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sourced {
    pub(crate) path: PathBuf,
    pub(crate) from: String,
}

/// What one run connects with, after flags, environment and context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The server URLs, in the order to try them.
    pub(crate) servers: Vec<String>,
    /// Where the URLs came from (`--server`, `server (context prod)`).
    pub(crate) servers_from: String,
    pub(crate) ca: Option<Sourced>,
    pub(crate) cert: Option<Sourced>,
    pub(crate) key: Option<Sourced>,
    pub(crate) token_file: Option<Sourced>,
    /// `VANE_TOKEN`.
    pub(crate) token: Option<Secret>,
}

impl Settings {
    /// Combines the command line with the context it picks out of `file`.
    pub(crate) fn resolve(cli: &Cli, file: Option<&ConfigFile>) -> Result<Self, CliError> {
        let context = match (&cli.context, file) {
            (Some(name), Some(file)) => Some(file.context(name, "--context (or VANE_CONTEXT)")?),
            (Some(name), None) => {
                return Err(CliError::usage(format!(
                    "--context (or VANE_CONTEXT) {name:?}: {}",
                    match path_of(cli) {
                        Some((path, _)) => format!("no config file at {}", path.display()),
                        None => "no config file (set VANE_CONFIG or HOME)".to_owned(),
                    }
                )));
            }
            (None, Some(file)) => match &file.current_context {
                Some(name) => Some(file.context(name, "current_context")?),
                None => None,
            },
            (None, None) => None,
        };
        let from_context = |field: &str, path: &Option<PathBuf>| -> Option<Sourced> {
            let c = context?;
            path.clone().map(|path| Sourced {
                path,
                from: format!("{field} (context {})", c.name),
            })
        };
        let flag = |flag: &str, path: &Option<PathBuf>| {
            path.clone().map(|path| Sourced {
                path,
                from: flag.to_owned(),
            })
        };
        // A context named on purpose (--context, VANE_CONTEXT) outranks
        // the environment for each setting it sets: `VANE_SERVER=prod
        // vanectl --context staging` goes to staging, with staging's
        // credentials. Flags still outrank it; the current_context of the
        // file does not outrank the environment.
        let named = cli.context.is_some();
        let env = |id: &str| named && cli.from_env.iter().any(|e| e == id);
        let server = cli
            .server
            .as_ref()
            .filter(|_| !(env("server") && context.is_some()));
        let ca = cli
            .ca
            .clone()
            .filter(|_| !(env("ca") && context.is_some_and(|c| c.ca.is_some())));
        let client_cert_from_env = (env("cert") || env("key"))
            && context.is_some_and(|c| c.cert.is_some() || c.key.is_some());
        let (cli_cert, cli_key) = if client_cert_from_env {
            (None, None)
        } else {
            (cli.cert.clone(), cli.key.clone())
        };
        // VANE_TOKEN (the token itself) is environment too.
        let context_token = context.is_some_and(|c| c.token_file.is_some());
        let cli_token_file = cli
            .token_file
            .clone()
            .filter(|_| !(env("token_file") && context_token));
        let cli_token = cli.token.clone().filter(|_| !(named && context_token));
        let (servers, servers_from) = match (server, context) {
            (Some(text), _) => (
                split_servers(text).map_err(|e| CliError::usage(format!("--server {e}")))?,
                "--server".to_owned(),
            ),
            (None, Some(c)) => (c.servers.clone(), format!("server (context {})", c.name)),
            (None, None) => (vec![DEFAULT_SERVER.to_owned()], "--server".to_owned()),
        };
        // The client certificate and its key go together: both from the
        // command line (clap makes the flags require each other) or both
        // from the context.
        let (cert, key) = if cli_cert.is_some() || cli_key.is_some() {
            (flag("--cert", &cli_cert), flag("--key", &cli_key))
        } else {
            (
                context.and_then(|c| from_context("cert", &c.cert)),
                context.and_then(|c| from_context("key", &c.key)),
            )
        };
        // A token given on the command line or in the environment (either
        // way) replaces the context's token file.
        let token_file = match (&cli_token_file, &cli_token) {
            (Some(_), _) => flag("--token-file", &cli_token_file),
            (None, Some(_)) => None,
            (None, None) => context.and_then(|c| from_context("token_file", &c.token_file)),
        };
        Ok(Self {
            servers,
            servers_from,
            ca: flag("--ca", &ca).or_else(|| context.and_then(|c| from_context("ca", &c.ca))),
            cert,
            key,
            token_file,
            token: cli_token,
        })
    }
}

/// `vanectl config view`: the file as it is.
pub(crate) fn view(cli: &Cli) -> Result<String, CliError> {
    let path = named_path(cli)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::usage(format!("config file {}: cannot read: {e}", path.display()))
    })?;
    // Checked as any command would, so that `view` also says what is wrong.
    let home = std::env::var_os("HOME").map(PathBuf::from);
    ConfigFile::parse(&text, &path, home.as_deref())?;
    Ok(if text.is_empty() || text.ends_with('\n') {
        text
    } else {
        text + "\n"
    })
}

/// The config file's path for the `config` commands, which need one.
fn named_path(cli: &Cli) -> Result<PathBuf, CliError> {
    path_of(cli).map(|(p, _)| p).ok_or_else(|| {
        CliError::usage("no config file: set VANE_CONFIG (or --config), or HOME for the default")
    })
}

/// `vanectl config use-context NAME`: sets `current_context` and rewrites the
/// file atomically (a temporary file beside it, fsynced, renamed over it),
/// mode 0600. The rest of the file, comments included, is kept as written.
pub(crate) fn use_context(cli: &Cli, name: &str) -> Result<String, CliError> {
    let path = named_path(cli)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::usage(format!("config file {}: cannot read: {e}", path.display()))
    })?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = ConfigFile::parse(&text, &path, home.as_deref())?;
    file.context(name, "use-context")?;
    let updated = with_current_context(&text, name);
    // The edit is checked by parsing it back; a layout the line edit does
    // not handle (flow style) is written out afresh instead.
    let updated = match ConfigFile::parse(&updated, &path, home.as_deref()) {
        Ok(f) if f.current_context.as_deref() == Some(name) => updated,
        _ => {
            let de = yaml_serde::Deserializer::from_str(&text);
            let mut raw: RawFile = serde_path_to_error::deserialize(de)
                .map_err(|e| CliError::usage(format!("config file {}: {e}", path.display())))?;
            raw.current_context = Some(name.to_owned());
            yaml_serde::to_string(&raw).map_err(|e| {
                CliError::usage(format!(
                    "config file {}: cannot encode: {e}",
                    path.display()
                ))
            })?
        }
    };
    write_atomically(&path, updated.as_bytes()).map_err(|e| {
        CliError::usage(format!("config file {}: cannot write: {e}", path.display()))
    })?;
    Ok(format!("switched to context {name:?}\n"))
}

/// `text` with its top-level `current_context:` line replaced (or one added
/// at the top).
fn with_current_context(text: &str, name: &str) -> String {
    // A JSON string is a YAML double-quoted scalar: any name is safe.
    let line = format!(
        "current_context: {}",
        serde_json::to_string(name).unwrap_or_else(|_| format!("{name:?}"))
    );
    let mut out = String::with_capacity(text.len() + line.len() + 1);
    let mut replaced = false;
    for l in text.split_inclusive('\n') {
        if !replaced && l.starts_with("current_context:") {
            out.push_str(&line);
            out.push('\n');
            replaced = true;
        } else {
            out.push_str(l);
        }
    }
    if replaced {
        out
    } else {
        format!("{line}\n{text}")
    }
}

/// Writes `bytes` to a new file beside `path` (mode 0600), fsyncs it,
/// renames it over `path` and fsyncs the directory: a reader sees the old
/// file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `vanectl config get-contexts`: one row per context, the current one
/// marked; JSON and YAML: the list of contexts.
pub(crate) fn get_contexts(
    cli: &Cli,
    format: crate::args::OutputFormat,
) -> Result<String, CliError> {
    let path = named_path(cli)?;
    let contexts = match load(cli)? {
        Some(file) => file.contexts,
        None => Vec::new(),
    };
    if format != crate::args::OutputFormat::Table {
        return Ok(crate::output::encode(&contexts, format));
    }
    if contexts.is_empty() {
        return Ok(format!("no contexts in {}\n", path.display()));
    }
    let show = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("-".to_owned(), |p| p.display().to_string())
    };
    let rows = contexts
        .iter()
        .map(|c| {
            vec![
                if c.current { "*".into() } else { String::new() },
                c.name.clone(),
                c.servers.join(","),
                show(&c.ca),
                show(&c.cert),
                show(&c.token_file),
            ]
        })
        .collect();
    Ok(crate::output::table(
        &["CURRENT", "NAME", "SERVER", "CA", "CERT", "TOKEN_FILE"],
        rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;
    use clap::Parser as _;

    const FILE: &str = "\
# my contexts
current_context: dev
contexts:
  dev:
    server: http://127.0.0.1:7070
  prod:
    server: [https://a:7070, 'https://b:7070,https://c:7070']
    ca: ca.pem
    cert: ~/op.pem
    key: /abs/op.key
    token_file: tok
";

    fn parse(text: &str) -> Result<ConfigFile, CliError> {
        ConfigFile::parse(
            text,
            Path::new("/etc/vane/config.yaml"),
            Some(Path::new("/home/op")),
        )
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(
            std::iter::once("vanectl")
                .chain(args.iter().copied())
                .chain(["status"]),
        )
        .unwrap()
    }

    #[test]
    fn files_parse_with_paths_resolved() {
        let f = parse(FILE).unwrap();
        assert_eq!(f.current_context.as_deref(), Some("dev"));
        let prod = f.context("prod", "--context").unwrap();
        assert!(!prod.current);
        assert_eq!(
            prod.servers,
            ["https://a:7070", "https://b:7070", "https://c:7070"]
        );
        assert_eq!(prod.ca, Some(PathBuf::from("/etc/vane/ca.pem")));
        assert_eq!(prod.cert, Some(PathBuf::from("/home/op/op.pem")));
        assert_eq!(prod.key, Some(PathBuf::from("/abs/op.key")));
        assert_eq!(prod.token_file, Some(PathBuf::from("/etc/vane/tok")));
        assert!(f.context("dev", "--context").unwrap().current);
        assert_eq!(parse("").unwrap().contexts, Vec::new());
        assert_eq!(parse("# nothing\n").unwrap().contexts, Vec::new());
    }

    #[test]
    fn bad_files_name_the_file_and_the_field() {
        let usage = |text: &str| {
            let e = parse(text).unwrap_err();
            assert_eq!(e.kind, Failure::Usage);
            assert!(
                e.message.starts_with("config file /etc/vane/config.yaml: "),
                "{}",
                e.message
            );
            e.message
        };
        let e = usage("contexts:\n  dev:\n    server: http://h:1\n    sever: x\n");
        assert!(
            e.contains("contexts.dev") && e.contains("unknown field `sever`"),
            "{e}"
        );
        let e = usage("current_context: prod\ncontexts:\n  dev:\n    server: http://h:1\n");
        assert!(
            e.contains("current_context: no context \"prod\" in the file; known: dev"),
            "{e}"
        );
        let e = usage("contexts:\n  dev:\n    ca: x\n");
        assert!(e.contains("contexts.dev.server: missing"), "{e}");
        let e = usage("contexts:\n  dev:\n    server: 'http://a,,http://b'\n");
        assert!(
            e.contains("contexts.dev.server") && e.contains("empty URL"),
            "{e}"
        );
        let e = usage("contexts:\n  dev:\n    server: http://a\n    cert: c.pem\n");
        assert!(e.contains("contexts.dev.cert: needs key"), "{e}");
        let e = usage("contexts: [1, 2]\n");
        assert!(e.contains("contexts"), "{e}");
        let e = usage("{");
        assert!(!e.is_empty());
    }

    #[test]
    fn server_lists() {
        assert_eq!(split_servers("http://a:1").unwrap(), ["http://a:1"]);
        assert_eq!(
            split_servers(" http://a:1 , b:2").unwrap(),
            ["http://a:1", "b:2"]
        );
        assert!(split_servers("a,").unwrap_err().contains("empty URL"));
        assert!(split_servers("").is_err());
    }

    #[test]
    fn flags_win_over_the_context_which_wins_over_defaults() {
        let file = parse(FILE).unwrap();
        // No flags: the current context (dev).
        let s = Settings::resolve(&cli(&[]), Some(&file)).unwrap();
        assert_eq!(s.servers, ["http://127.0.0.1:7070"]);
        assert_eq!(s.servers_from, "server (context dev)");
        assert_eq!(s.ca, None);
        // --context prod: its servers and files.
        let s = Settings::resolve(&cli(&["--context", "prod"]), Some(&file)).unwrap();
        assert_eq!(s.servers.len(), 3);
        let ca = s.ca.unwrap();
        assert_eq!(ca.from, "ca (context prod)");
        assert_eq!(s.cert.unwrap().path, PathBuf::from("/home/op/op.pem"));
        assert_eq!(s.key.unwrap().from, "key (context prod)");
        assert_eq!(s.token_file.unwrap().from, "token_file (context prod)");
        // Flags win, one by one.
        let s = Settings::resolve(
            &cli(&[
                "--context",
                "prod",
                "--server",
                "http://x:1,http://y:2",
                "--ca",
                "mine.pem",
            ]),
            Some(&file),
        )
        .unwrap();
        assert_eq!(s.servers, ["http://x:1", "http://y:2"]);
        assert_eq!(s.servers_from, "--server");
        assert_eq!(s.ca.unwrap().from, "--ca");
        assert_eq!(s.cert.unwrap().from, "cert (context prod)");
        // VANE_TOKEN replaces the current context's token file, but not
        // that of a context named on purpose.
        let mut with_token = cli(&[]);
        with_token.token = Some(Secret("t".into()));
        let s = Settings::resolve(&with_token, Some(&file)).unwrap();
        assert_eq!(s.token_file, None);
        let mut with_token = cli(&["--context", "prod"]);
        with_token.token = Some(Secret("t".into()));
        let s = Settings::resolve(&with_token, Some(&file)).unwrap();
        assert_eq!(s.token.map(|t| t.0), None);
        assert_eq!(s.token_file.unwrap().from, "token_file (context prod)");
        // VANE_SERVER and VANE_CA (values from the environment) yield to a
        // named context, and win over the file's current context.
        let mut from_env = cli(&["--server", "http://env:1", "--ca", "env.pem"]);
        from_env.from_env = vec!["server".into(), "ca".into()];
        let s = Settings::resolve(&from_env, Some(&file)).unwrap();
        assert_eq!(s.servers, ["http://env:1"]);
        from_env.context = Some("prod".into());
        let s = Settings::resolve(&from_env, Some(&file)).unwrap();
        assert_eq!(s.servers.len(), 3);
        assert_eq!(s.servers_from, "server (context prod)");
        assert_eq!(s.ca.unwrap().from, "ca (context prod)");
        // No file, no flags: the built-in default.
        let s = Settings::resolve(&cli(&[]), None).unwrap();
        assert_eq!(s.servers, [DEFAULT_SERVER]);
    }

    #[test]
    fn unknown_contexts_are_usage_errors_naming_the_known_ones() {
        let file = parse(FILE).unwrap();
        let e = Settings::resolve(&cli(&["--context", "stage"]), Some(&file)).unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert_eq!(
            e.message,
            "--context (or VANE_CONTEXT) \"stage\": no such context in /etc/vane/config.yaml; known: dev, prod"
        );
        let e = Settings::resolve(&cli(&["--context", "stage"]), None).unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(e.message.contains("no config file"), "{}", e.message);
        let e = Settings::resolve(&cli(&["--server", "a,,b"]), None).unwrap_err();
        assert!(
            e.message.starts_with("--server \"a,,b\": an empty URL"),
            "{}",
            e.message
        );
    }

    #[test]
    fn use_context_edits_one_line_and_keeps_the_rest() {
        let edited = with_current_context(FILE, "prod");
        assert!(edited.starts_with("# my contexts\ncurrent_context: \"prod\"\ncontexts:"));
        assert_eq!(
            parse(&edited).unwrap().current_context.as_deref(),
            Some("prod")
        );
        let added = with_current_context("contexts: {}\n", "dev");
        assert_eq!(added, "current_context: \"dev\"\ncontexts: {}\n");
    }

    #[test]
    fn atomic_writes_leave_mode_0600_and_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = cli(&[]);
        c.config = Some(path.clone());
        assert_eq!(
            use_context(&c, "prod").unwrap(),
            "switched to context \"prod\"\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("current_context: \"prod\""), "{text}");
        let e = use_context(&c, "nope").unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(e.message.contains("known: dev, prod"), "{}", e.message);
        // A file without current_context gets one; flow style is rewritten.
        std::fs::write(&path, "{contexts: {a: {server: 'http://h:1'}}}").unwrap();
        use_context(&c, "a").unwrap();
        let f = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(f.current_context.as_deref(), Some("a"));
    }
}
