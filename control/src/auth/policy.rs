//! The policy file (`--policy`): which identity holds which role in which
//! groups, and the one question the services ask of it, [`Policy::allows`].
//!
//! ```yaml
//! bindings:
//!   - identity: operator      # exact, "prefix*" or "*"
//!     role: operator          # agent | reader | operator | admin
//!     groups: ["*"]           # exact, "prefix*" or "*"
//! ```
//!
//! Roles: `agent` may watch the groups bound; `reader` may get, history,
//! diff, status and audit; `operator` is a reader that may also push and
//! roll back; `admin` may do everything, watching included. Bindings add up:
//! an identity may do whatever any binding matching it allows.
//!
//! `anonymous_watch` (optional) lists groups that callers without any
//! credential may watch, and nothing else: for clients that cannot present
//! one (OpenFeature's flagd providers, whose flags a group may publish).

use std::fmt;

use serde::Deserialize;

/// Most bindings a policy may hold (a typo that repeats a line a million
/// times must not make every call scan them).
pub const MAX_BINDINGS: usize = 10_000;

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Open a watch stream of a group (agents).
    Watch,
    /// Get, History, Diff, Status, Audit.
    Read,
    /// Push, Rollback.
    Write,
    /// See private keys in clear (`show_secrets` on Get and Diff): role
    /// `admin` only.
    ReadSecrets,
}

impl Action {
    /// The action as a word for errors and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Watch => "watch",
            Self::Read => "read",
            Self::Write => "push to",
            Self::ReadSecrets => "read the private keys of",
        }
    }
}

/// A role a binding grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Watch the groups bound.
    Agent,
    /// Read the groups bound.
    Reader,
    /// Read, push and roll back the groups bound.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// Whether this role permits `action`.
    pub fn permits(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Self::Admin, _)
                | (Self::Agent, Action::Watch)
                | (Self::Reader, Action::Read)
                | (Self::Operator, Action::Read | Action::Write)
        )
    }

    /// The role's name as written in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Reader => "reader",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// A name pattern: exact, `prefix*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Parses a pattern; `*` may only end it.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if let Some(star) = s.find('*')
            && star != s.len() - 1
        {
            return Err(format!(
                "{s:?}: '*' may only end a pattern (\"prefix*\" or \"*\")"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }

    /// Whether the pattern matches every name.
    pub fn is_everything(&self) -> bool {
        self.0 == "*"
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One binding: identities matching `identity` hold `role` in `groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Which identities.
    pub identity: Pattern,
    /// What they may do.
    pub role: Role,
    /// Where.
    pub groups: Vec<Pattern>,
}

/// A parsed policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    bindings: Vec<Binding>,
    /// Groups anonymous callers may watch.
    anonymous_watch: Vec<Pattern>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    bindings: Vec<BindingFile>,
    #[serde(default)]
    anonymous_watch: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingFile {
    identity: String,
    role: Role,
    groups: Vec<String>,
}

impl Policy {
    /// Parses the policy file's text. Errors name the field
    /// (`bindings[2].groups[0]: ...`).
    pub fn parse(text: &str) -> Result<Self, String> {
        // yaml_serde's errors name the path (`bindings[0].role: ...`).
        let file: PolicyFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        if file.bindings.len() > MAX_BINDINGS {
            return Err(format!(
                "bindings: {} bindings, over the limit of {MAX_BINDINGS}",
                file.bindings.len()
            ));
        }
        let mut bindings = Vec::with_capacity(file.bindings.len());
        for (i, b) in file.bindings.into_iter().enumerate() {
            let identity =
                Pattern::parse(&b.identity).map_err(|e| format!("bindings[{i}].identity: {e}"))?;
            if b.groups.is_empty() {
                return Err(format!(
                    "bindings[{i}].groups: must name at least one group (\"*\" for all)"
                ));
            }
            let groups = b
                .groups
                .iter()
                .enumerate()
                .map(|(j, g)| {
                    Pattern::parse(g).map_err(|e| format!("bindings[{i}].groups[{j}]: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            bindings.push(Binding {
                identity,
                role: b.role,
                groups,
            });
        }
        if file.anonymous_watch.len() > MAX_BINDINGS {
            return Err(format!(
                "anonymous_watch: {} patterns, over the limit of {MAX_BINDINGS}",
                file.anonymous_watch.len()
            ));
        }
        let anonymous_watch = file
            .anonymous_watch
            .iter()
            .enumerate()
            .map(|(j, g)| Pattern::parse(g).map_err(|e| format!("anonymous_watch[{j}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            bindings,
            anonymous_watch,
        })
    }

    /// Whether a caller without credentials may watch `group`
    /// (`anonymous_watch`); no other action is ever allowed to one.
    pub fn allows_anonymous(&self, action: Action, group: &str) -> bool {
        action == Action::Watch && self.anonymous_watch.iter().any(|g| g.matches(group))
    }

    /// Whether `identity` may do `action` in `group`.
    pub fn allows(&self, identity: &str, action: Action, group: &str) -> bool {
        self.bindings.iter().any(|b| {
            b.role.permits(action)
                && b.identity.matches(identity)
                && b.groups.iter().any(|g| g.matches(group))
        })
    }

    /// Whether `identity` may do `action` in every group (a `*` binding):
    /// what listing every group's status or audit needs.
    pub fn allows_everywhere(&self, identity: &str, action: Action) -> bool {
        self.bindings.iter().any(|b| {
            b.role.permits(action)
                && b.identity.matches(identity)
                && b.groups.iter().any(Pattern::is_everything)
        })
    }

    /// The bindings that apply to `identity` (for `WhoAmI`).
    pub fn bindings_of<'a>(&'a self, identity: &'a str) -> impl Iterator<Item = &'a Binding> + 'a {
        self.bindings
            .iter()
            .filter(move |b| b.identity.matches(identity))
    }

    /// How many bindings there are.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether there are no bindings (nobody may do anything).
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
bindings:
  - identity: operator
    role: operator
    groups: ["*"]
  - identity: reader
    role: reader
    groups: ["*"]
  - identity: agent-edge
    role: agent
    groups: [edge]
  - identity: "team-a-*"
    role: operator
    groups: ["a-*"]
"#;

    #[test]
    fn roles_and_patterns() {
        let p = Policy::parse(POLICY).unwrap();
        assert!(p.allows("operator", Action::Write, "edge"));
        assert!(p.allows("operator", Action::Read, "anything"));
        assert!(!p.allows("operator", Action::Watch, "edge"));
        assert!(p.allows("reader", Action::Read, "edge"));
        assert!(!p.allows("reader", Action::Write, "edge"));
        assert!(p.allows("agent-edge", Action::Watch, "edge"));
        assert!(!p.allows("agent-edge", Action::Watch, "edge2"));
        assert!(!p.allows("agent-edge", Action::Read, "edge"));
        assert!(p.allows("team-a-ci", Action::Write, "a-payments"));
        assert!(!p.allows("team-a-ci", Action::Write, "b-payments"));
        assert!(!p.allows("team-a", Action::Write, "a-payments"));
        assert!(!p.allows("stranger", Action::Read, "edge"));
        assert!(p.allows_everywhere("reader", Action::Read));
        assert!(!p.allows_everywhere("team-a-ci", Action::Read));
        assert_eq!(p.bindings_of("operator").count(), 1);
    }

    #[test]
    fn anonymous_callers_may_only_watch_the_groups_granted() {
        let p = Policy::parse("bindings: []\nanonymous_watch: [shop, 'public-*']\n").unwrap();
        assert!(p.allows_anonymous(Action::Watch, "shop"));
        assert!(p.allows_anonymous(Action::Watch, "public-flags"));
        assert!(!p.allows_anonymous(Action::Watch, "edge"));
        assert!(!p.allows_anonymous(Action::Read, "shop"));
        assert!(!p.allows_anonymous(Action::Write, "shop"));
        // Not a binding: "*" identities do not gain anything from it.
        assert!(!p.allows("someone", Action::Watch, "shop"));
        let e = Policy::parse("bindings: []\nanonymous_watch: ['a*b']\n").unwrap_err();
        assert!(e.starts_with("anonymous_watch[0]: "), "{e}");
        assert!(
            !Policy::parse("bindings: []")
                .unwrap()
                .allows_anonymous(Action::Watch, "shop")
        );
    }

    #[test]
    fn admin_may_do_everything() {
        let p = Policy::parse("bindings: [{identity: root, role: admin, groups: ['*']}]").unwrap();
        for action in [Action::Watch, Action::Read, Action::Write] {
            assert!(p.allows("root", action, "g"));
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = Policy::parse("bindings: [{identity: x, role: king, groups: ['*']}]").unwrap_err();
        assert!(
            e.starts_with("bindings[0].role: unknown variant `king`"),
            "{e}"
        );
        let e = Policy::parse("bindings: [{identity: x, role: admin, groups: []}]").unwrap_err();
        assert_eq!(
            e,
            "bindings[0].groups: must name at least one group (\"*\" for all)"
        );
        let e =
            Policy::parse("bindings: [{identity: x, role: admin, groups: ['a*b']}]").unwrap_err();
        assert!(e.starts_with("bindings[0].groups[0]: \"a*b\""), "{e}");
        let e =
            Policy::parse("bindings: [{identity: '', role: admin, groups: ['*']}]").unwrap_err();
        assert_eq!(e, "bindings[0].identity: must not be empty");
        let e = Policy::parse("bindings: [{identity: x, role: admin, groups: ['*'], extra: 1}]")
            .unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
        assert!(Policy::parse("nope: 1").is_err());
    }
}
