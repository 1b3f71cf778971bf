//! A control server that enforces a policy with bearer tokens: the token
//! file written from `(identity, token)` pairs (their SHA-256, as operators
//! write it), the policy from its YAML text, whose path is returned so a
//! test can rewrite it (the server reloads it).

use std::path::PathBuf;

use sha2::Digest as _;

use crate::ControlServer;

/// Starts a server with `--policy` (the text `policy`), `--tokens` (for
/// `tokens`) and `extra` flags; returns it and the policy file's path.
pub fn start_with_policy(
    tokens: &[(&str, &str)],
    policy: &str,
    extra: &[&str],
) -> (ControlServer, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let entries: String = tokens
        .iter()
        .map(|(id, token)| {
            format!(
                "  - identity: {id}\n    sha256: {}\n",
                hex::encode(sha2::Sha256::digest(token.as_bytes()))
            )
        })
        .collect();
    let tokens_path = dir.join("tokens.yaml");
    std::fs::write(&tokens_path, format!("tokens:\n{entries}")).unwrap();
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let mut args = vec![
        "--policy",
        policy_path.to_str().unwrap(),
        "--tokens",
        tokens_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (ControlServer::start_with(&args), policy_path)
}

/// Writes `token` to a file beside the policy, for `vanectl --token-file`.
pub fn token_file(policy: &std::path::Path, name: &str, token: &str) -> PathBuf {
    let path = policy.with_file_name(name);
    std::fs::write(&path, token).unwrap();
    path
}

/// The `Authorization` header line for curl.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}
