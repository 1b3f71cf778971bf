//! The sidecar's `--template` files: parsing `SRC:DEST[:MODE]` (and the
//! short form `FILE`, which renders `--output`), loading and checking the
//! templates at startup, and rendering them over a configuration.
//!
//! Templates are Jinja2 (minijinja) with strict undefined: a name that is
//! not in the context is an error naming the template, the line and the
//! name, never an empty string. No auto-escaping whatever the file's
//! extension (config files are not HTML); a template's trailing newline
//! is kept. The context is the document `--output` is written as
//! (`group`, `version`, `hash`, `source` and the snapshot's fields).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// One `--template` flag as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateArg {
    /// The template file.
    pub(crate) src: PathBuf,
    /// Where it is rendered to; `None`: `--output` (the short form).
    pub(crate) dest: Option<PathBuf>,
    /// The rendered file's mode; `None`: `--output-mode`, else the default.
    pub(crate) mode: Option<u32>,
}

/// Parses `SRC:DEST[:MODE]` or `FILE` (paths may not contain `:`).
pub(crate) fn parse_template_arg(s: &str) -> Result<TemplateArg, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dest, mode) = match parts.as_slice() {
        [src] => (*src, None, None),
        [src, dest] => (*src, Some(*dest), None),
        [src, dest, mode] => (*src, Some(*dest), Some(*mode)),
        _ => {
            return Err(format!(
                "{s:?}: expected SRC:DEST[:MODE] or FILE (paths may not contain ':')"
            ));
        }
    };
    if src.is_empty() {
        return Err(format!("{s:?}: the template file (SRC) is empty"));
    }
    if dest.is_some_and(str::is_empty) {
        return Err(format!("{s:?}: the destination (DEST) is empty"));
    }
    let mode = match mode {
        None => None,
        Some(m) => Some(parse_mode(m).map_err(|e| format!("{s:?}: MODE {e}"))?),
    };
    Ok(TemplateArg {
        src: PathBuf::from(src),
        dest: dest.map(PathBuf::from),
        mode,
    })
}

/// Parses a file mode: three or four octal digits (`640`, `0640`), the
/// permission bits only (at most `0777`: no setuid, setgid or sticky bit).
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("{s:?} is not an octal file mode such as 0640"));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| format!("{s:?}: {e}"))?;
    if mode > 0o777 {
        return Err(format!(
            "{s:?}: only permission bits (at most 0777) may be set"
        ));
    }
    Ok(mode)
}

/// One loaded template and where it goes.
#[derive(Debug)]
pub(crate) struct Template {
    /// The template's name in errors: its file as given.
    pub(crate) name: String,
    /// The rendered file.
    pub(crate) dest: PathBuf,
    /// Its mode, when one was given with the template.
    pub(crate) mode: Option<u32>,
}

/// The templates, parsed at startup.
pub(crate) struct Templates {
    env: Environment<'static>,
    items: Vec<Template>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("items", &self.items)
            .finish_non_exhaustive()
    }
}

impl Templates {
    /// Reads and parses every template. A short form's destination is
    /// `output`; there may be at most one, and no two templates (nor a
    /// template and `--output`'s own JSON/YAML) may write the same file.
    /// The error names the flag, the file, the line and the reason.
    pub(crate) fn load(args: &[TemplateArg], output: Option<&Path>) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| format!("--template: {e}"))?;
        env.set_syntax(syntax);
        env.add_filter("tojson", tojson);
        env.add_filter("toyaml", toyaml);
        let mut items = Vec::with_capacity(args.len());
        let mut dests = BTreeSet::new();
        for arg in args {
            let name = arg.src.display().to_string();
            let dest = match (&arg.dest, output) {
                (Some(d), _) => d.clone(),
                (None, Some(o)) => o.to_path_buf(),
                (None, None) => {
                    return Err(format!(
                        "--template {name}: no destination: give SRC:DEST, or --output for the short form"
                    ));
                }
            };
            if !dests.insert(dest.clone()) {
                return Err(format!(
                    "--template {name}: {} is written by another --template (or is --output while a short-form --template renders it)",
                    dest.display()
                ));
            }
            let source = std::fs::read_to_string(&arg.src)
                .map_err(|e| format!("--template {name}: cannot read: {e}"))?;
            env.add_template_owned(name.clone(), source)
                .map_err(|e| format!("--template {}", describe(&e, &name)))?;
            items.push(Template {
                name,
                dest,
                mode: arg.mode,
            });
        }
        // `--output` without a short-form template: its JSON/YAML, which
        // must not be a template's destination too.
        if let Some(o) = output
            && !args.iter().any(|a| a.dest.is_none())
            && dests.contains(o)
        {
            return Err(format!(
                "--template: {} is also --output; use the short form --template FILE to render --output from a template",
                o.display()
            ));
        }
        Ok(Self { env, items })
    }

    /// The templates, in flag order.
    pub(crate) fn items(&self) -> &[Template] {
        &self.items
    }

    /// The template that renders `--output` (the short form), if any.
    pub(crate) fn for_output(&self, output: &Path) -> Option<&Template> {
        self.items.iter().find(|t| t.dest == output)
    }

    /// Renders `t` over `doc`; the error names the template file, the line
    /// and what went wrong (an undefined name: that name).
    pub(crate) fn render(&self, t: &Template, doc: &serde_json::Value) -> Result<Vec<u8>, String> {
        let template = self
            .env
            .get_template(&t.name)
            .map_err(|e| format!("template {}", describe(&e, &t.name)))?;
        template
            .render(Value::from(minijinja::value::Serde(doc)))
            .map(String::into_bytes)
            .map_err(|e| format!("template {}", describe(&e, &t.name)))
    }
}

/// `FILE:LINE: what` (the error's own template name when it has
/// one: an `{% include %}` fails in the included file).
fn describe(e: &Error, fallback: &str) -> String {
    let name = e.name().unwrap_or(fallback);
    let what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => format!("{name}:{line}: {what}"),
        None => format!("{name}: {what}"),
    }
}

/// `value | tojson` or `value | tojson(indent=2)`: JSON text. Unlike the
/// builtin, an undefined value is an error (the builtin writes `null`,
/// which would hide a typo).
fn tojson(value: &Value, indent: Option<usize>) -> Result<Value, Error> {
    defined(value, "tojson")?;
    let text = match indent {
        None => serde_json::to_string(value),
        Some(n) => {
            let pad = vec![b' '; n];
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(value, &mut ser)
                .map(|()| String::from_utf8_lossy(&out).into_owned())
        }
    }
    .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(text))
}

/// `value | toyaml`: YAML text (a block, ending in a newline).
fn toyaml(value: &Value) -> Result<Value, Error> {
    defined(value, "toyaml")?;
    let text = yaml_serde::to_string(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("toyaml: {e}")))?;
    Ok(Value::from_safe_string(text))
}

fn defined(value: &Value, filter: &str) -> Result<(), Error> {
    if value.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            format!("{filter} of an undefined value"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_args_parse() {
        assert_eq!(
            parse_template_arg("a.tmpl").unwrap(),
            TemplateArg {
                src: "a.tmpl".into(),
                dest: None,
                mode: None
            }
        );
        assert_eq!(
            parse_template_arg("/t/a.tmpl:/etc/app.conf").unwrap(),
            TemplateArg {
                src: "/t/a.tmpl".into(),
                dest: Some("/etc/app.conf".into()),
                mode: None
            }
        );
        let a = parse_template_arg("a.tmpl:b.conf:0640").unwrap();
        assert_eq!((a.dest, a.mode), (Some("b.conf".into()), Some(0o640)));
        assert_eq!(
            parse_template_arg("a:b:600").unwrap().mode,
            Some(0o600),
            "three digits"
        );
        for (bad, says) in [
            ("a:b:0649", "not an octal file mode"),
            ("a:b:rw", "not an octal file mode"),
            ("a:b:", "not an octal file mode"),
            ("a:b:4755", "at most 0777"),
            (":b", "SRC"),
            ("a:", "DEST"),
            ("", "SRC"),
            ("a:b:0640:x", "paths may not contain ':'"),
        ] {
            let e = parse_template_arg(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("64").is_err());
        assert!(parse_mode("01777").is_err());
        assert!(parse_mode("0x644").is_err());
    }

    fn load(
        files: &[(&str, &str)],
        args: &[&str],
        output: Option<&str>,
    ) -> Result<Templates, String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let args: Vec<TemplateArg> = args
            .iter()
            .map(|a| {
                let mut t = parse_template_arg(a).unwrap();
                t.src = dir.path().join(&t.src);
                t.dest = t.dest.map(|d| dir.path().join(d));
                t
            })
            .collect();
        let output = output.map(|o| dir.path().join(o));
        Templates::load(&args, output.as_deref())
    }

    fn doc() -> serde_json::Value {
        serde_json::json!({
            "version": 3, "hash": "abc", "source": "live",
            "values": {"mode": "fast", "n": 2},
            "listeners": [{"name": "web", "port": 8080}]
        })
    }

    #[test]
    fn renders_over_the_document_with_filters() {
        let t = load(
            &[(
                "a.tmpl",
                "v{{ version }} {{ values.mode | upper }}\n{% for l in listeners %}{{ l.name }}={{ l.port }}\n{% endfor %}{{ values | tojson }}\n{{ values | toyaml }}",
            )],
            &["a.tmpl:out"],
            None,
        )
        .unwrap();
        let out = String::from_utf8(t.render(&t.items()[0], &doc()).unwrap()).unwrap();
        assert_eq!(
            out,
            "v3 FAST\nweb=8080\n{\"mode\":\"fast\",\"n\":2}\nmode: fast\nn: 2\n"
        );
    }

    #[test]
    fn an_undefined_name_is_an_error_naming_file_line_and_name() {
        let t = load(
            &[
                ("a.tmpl", "ok\n{{ values.mdoe }}\n"),
                ("b.tmpl", "{{ nope | tojson }}"),
            ],
            &["a.tmpl:x", "b.tmpl:y"],
            None,
        )
        .unwrap();
        let e = t.render(&t.items()[0], &doc()).unwrap_err();
        assert!(e.starts_with("template "), "{e}");
        assert!(e.contains("a.tmpl:2: undefined value"), "{e}");
        assert!(e.contains("`values.mdoe`"), "{e}");
        let e = t.render(&t.items()[1], &doc()).unwrap_err();
        assert!(e.contains("b.tmpl:1: undefined value"), "{e}");
    }

    #[test]
    fn a_syntax_error_is_reported_at_load_with_file_and_line() {
        let e = load(&[("bad.tmpl", "a\nb\n{% if x %}\n")], &["bad.tmpl:x"], None).unwrap_err();
        assert!(e.starts_with("--template /"), "{e}");
        assert!(e.contains("bad.tmpl:"), "{e}");
        assert!(e.contains("syntax error"), "{e}");
        let e = load(&[], &["missing.tmpl:x"], None).unwrap_err();
        assert!(e.contains("missing.tmpl: cannot read"), "{e}");
    }

    #[test]
    fn destinations_are_checked() {
        let e = load(&[("a.tmpl", "")], &["a.tmpl"], None).unwrap_err();
        assert!(e.contains("no destination"), "{e}");
        let e = load(
            &[("a.tmpl", ""), ("b.tmpl", "")],
            &["a.tmpl", "b.tmpl"],
            Some("o"),
        )
        .unwrap_err();
        assert!(e.contains("written by another --template"), "{e}");
        let e = load(&[("a.tmpl", "")], &["a.tmpl:o"], Some("o")).unwrap_err();
        assert!(e.contains("is also --output"), "{e}");
        let t = load(&[("a.tmpl", "x")], &["a.tmpl"], Some("o")).unwrap();
        assert!(t.items()[0].dest.ends_with("o"));
    }
}
