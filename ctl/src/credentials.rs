//! vanectl's credentials: the CA and client certificate for `https://`
//! servers (`--ca`, `--cert`, `--key`) and the bearer token (`--token-file`
//! or `VANE_TOKEN`), read and checked before connecting so that a bad file
//! is a usage error (exit 2). The checks themselves are `vane-tls`'s, the
//! same the agent makes.

use std::time::Duration;

use tonic::transport::ClientTlsConfig;
use vane_tls::pem::{check_ca, check_identity};
use vane_tls::{BearerInterceptor, BearerToken, ClientIdentity, ClientTls, TlsPart};

use crate::args::Secret;
use crate::config::{Settings, Sourced};
use crate::error::CliError;

/// What vanectl presents to the server, checked.
#[derive(Default)]
pub(crate) struct Credentials {
    /// `--ca`, `--cert` and `--key`; no CA: the public web PKI roots.
    tls: ClientTls,
    /// `authorization: Bearer <token>`.
    token: Option<BearerToken>,
}

impl Credentials {
    /// Reads and checks the files and the token the settings name (from
    /// the command line or the context); errors name where each came from.
    pub(crate) fn load(settings: &Settings) -> Result<Self, CliError> {
        let read = |s: &Sourced| {
            std::fs::read(&s.path).map_err(|e| {
                CliError::usage(format!("{} {}: cannot read: {e}", s.from, s.path.display()))
            })
        };
        let ca_pem = match &settings.ca {
            None => None,
            Some(ca) => {
                let pem = read(ca)?;
                check_ca(&pem).map_err(|e| {
                    CliError::usage(format!("{} {}: {e}", ca.from, ca.path.display()))
                })?;
                Some(pem)
            }
        };
        let identity = match (&settings.cert, &settings.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let (cert_pem, key_pem) = (read(cert)?, read(key)?);
                check_identity(&cert_pem, &key_pem).map_err(|(part, why)| {
                    CliError::usage(match part {
                        TlsPart::Key => format!(
                            "{} {} (for {} {}): {why}",
                            key.from,
                            key.path.display(),
                            cert.from,
                            cert.path.display()
                        ),
                        TlsPart::Cert | TlsPart::Ca => {
                            format!("{} {}: {why}", cert.from, cert.path.display())
                        }
                    })
                })?;
                Some(ClientIdentity { cert_pem, key_pem })
            }
            // clap enforces the pair (`requires`), environment included;
            // the config file is checked when it is read.
            (Some(_), None) => return Err(CliError::usage("--cert: needs --key (or VANE_KEY)")),
            (None, Some(_)) => return Err(CliError::usage("--key: needs --cert (or VANE_CERT)")),
        };
        let token = match (&settings.token_file, &settings.token) {
            (Some(file), Some(_)) if file.from == "--token-file" => {
                return Err(CliError::usage(
                    "--token-file (or VANE_TOKEN_FILE) and VANE_TOKEN are both set: give one",
                ));
            }
            (Some(file), _) => {
                let text = std::fs::read_to_string(&file.path).map_err(|e| {
                    CliError::usage(format!(
                        "{} {}: cannot read: {e}",
                        file.from,
                        file.path.display()
                    ))
                })?;
                Some(BearerToken::new(&text).map_err(|e| {
                    CliError::usage(format!("{} {}: {e}", file.from, file.path.display()))
                })?)
            }
            (None, Some(Secret(token))) => Some(
                BearerToken::new(token).map_err(|e| CliError::usage(format!("VANE_TOKEN: {e}")))?,
            ),
            (None, None) => None,
        };
        Ok(Self {
            tls: ClientTls { ca_pem, identity },
            token,
        })
    }

    /// Whether a CA or a client certificate was given: then the server
    /// must be `https://`, and a URL without a scheme gets that one.
    pub(crate) fn wants_tls(&self) -> bool {
        self.tls.is_configured()
    }

    /// tonic's TLS settings (for an `https://` URL); `timeout` bounds the handshake.
    pub(crate) fn tls_config(&self, timeout: Duration) -> ClientTlsConfig {
        self.tls.tonic_config(timeout)
    }

    /// Adds the bearer token, if any, to every call.
    pub(crate) fn interceptor(&self) -> BearerInterceptor {
        BearerInterceptor(self.token.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;
    use clap::Parser as _;

    use crate::args::Cli;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(
            std::iter::once("vanectl")
                .chain(args.iter().copied())
                .chain(["status"]),
        )
        .unwrap()
    }

    /// The settings of `cli` without a config file.
    fn load(c: &Cli) -> Result<Credentials, CliError> {
        Credentials::load(&Settings::resolve(c, None)?)
    }

    /// ca.pem, operator.pem/.key of that CA, and a key of another pair.
    fn files() -> (tempfile::TempDir, [String; 4]) {
        let dir = tempfile::tempdir().unwrap();
        let ca = vane_pki::Ca::new("test CA").unwrap();
        let pair = ca.issue(&vane_pki::LeafParams::client("operator")).unwrap();
        let other = ca.issue(&vane_pki::LeafParams::client("reader")).unwrap();
        let path = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(path("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(path("operator.pem"), &pair.cert_pem).unwrap();
        std::fs::write(path("operator.key"), &pair.key_pem).unwrap();
        std::fs::write(path("reader.key"), &other.key_pem).unwrap();
        let paths = [
            path("ca.pem"),
            path("operator.pem"),
            path("operator.key"),
            path("reader.key"),
        ];
        (dir, paths)
    }

    fn usage(c: &Cli) -> String {
        let e = load(c).err().unwrap();
        assert_eq!(e.kind, Failure::Usage, "{e}");
        e.message
    }

    #[test]
    fn good_files_load() {
        let (_dir, [ca, cert, key, _]) = files();
        let c = load(&cli(&["--ca", &ca, "--cert", &cert, "--key", &key])).unwrap();
        assert!(c.wants_tls());
        assert!(c.token.is_none());
        let none = load(&cli(&[])).unwrap();
        assert!(!none.wants_tls());
    }

    #[test]
    fn bad_files_are_usage_errors_naming_the_flag() {
        let (dir, [ca, cert, key, other_key]) = files();
        let missing = dir.path().join("nope.pem").display().to_string();
        let e = usage(&cli(&["--ca", &missing]));
        assert!(
            e.starts_with(&format!("--ca {missing}: cannot read: ")),
            "{e}"
        );
        let e = usage(&cli(&["--ca", &key]));
        assert_eq!(
            e,
            format!("--ca {key}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
        );
        let e = usage(&cli(&["--cert", &key, "--key", &key]));
        assert!(
            e.starts_with(&format!("--cert {key}: no PEM certificate")),
            "{e}"
        );
        let e = usage(&cli(&["--cert", &cert, "--key", &ca]));
        assert!(
            e.starts_with(&format!(
                "--key {ca} (for --cert {cert}): no PEM private key"
            )),
            "{e}"
        );
        let e = usage(&cli(&["--cert", &cert, "--key", &other_key]));
        assert_eq!(
            e,
            format!(
                "--key {other_key} (for --cert {cert}): does not belong to the certificate (its public key differs)"
            )
        );
    }

    #[test]
    fn tokens_come_from_one_place_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let file = file.display().to_string();
        let c = load(&cli(&["--token-file", &file])).unwrap();
        assert_eq!(c.token.unwrap().header().to_str().unwrap(), "Bearer s3cret");

        let mut from_env = cli(&[]);
        from_env.token = Some(Secret("t0ken".into()));
        let c = load(&from_env).unwrap();
        assert_eq!(c.token.unwrap().header().to_str().unwrap(), "Bearer t0ken");
        assert!(!format!("{from_env:?}").contains("t0ken"));

        let mut both = cli(&["--token-file", &file]);
        both.token = Some(Secret("t0ken".into()));
        assert!(usage(&both).contains("both set"));

        let mut empty = cli(&[]);
        empty.token = Some(Secret(" ".into()));
        assert_eq!(usage(&empty), "VANE_TOKEN: the token is empty");
        let mut spaced = cli(&[]);
        spaced.token = Some(Secret("a b".into()));
        assert!(usage(&spaced).starts_with("VANE_TOKEN: the token holds ' '"));
    }
}
