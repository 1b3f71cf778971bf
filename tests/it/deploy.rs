//! The deployment assets in `deploy/`, checked so they cannot rot: the
//! systemd units pass `systemd-analyze verify` (with `ExecStart=` pointed
//! at the built binaries: the only change made to them), their command
//! lines, expanded as systemd expands them with the shipped environment
//! files, are accepted by the binaries, and run for real: vane-control
//! becomes ready and the agent materialises a pushed version, and both
//! stop on SIGTERM within the unit's `TimeoutStopSec`. The Kubernetes
//! manifests validate offline against the Kubernetes JSON schemas (strict:
//! an unknown field fails) and the ServiceMonitor against the Prometheus
//! Operator's CRD schema; their containers' arguments are accepted by the
//! binaries, and the policy they ship is accepted by vane-control. Each
//! checker is shown to refuse a broken file.
//!
//! The units cannot be started by systemd here (no systemd as PID 1 on a
//! build machine or in CI), so their sandboxing settings are verified, not
//! exercised.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vane_testkit::deploy_tools::{
    KUBERNETES_VERSIONS, SERVICE_MONITOR_CRD, VALIDATE_SCRIPT, kubernetes_validate_missing,
    locate_kubernetes_validate,
};
use vane_testkit::net::{free_addr, http_get};
use vane_testkit::process::{bin_dir, bin_path, spawn_announced, terminate_child, workspace_root};
use vane_testkit::{ControlServer, fixtures};

/// Where the units expect the binaries.
const INSTALLED_BIN: &str = "/usr/local/bin/";
/// The template instance the agent's unit is checked as.
const GROUP: &str = "edge";

fn deploy() -> PathBuf {
    workspace_root().join("deploy")
}

// ---- systemd ---------------------------------------------------------

/// A unit file's `[Service]` settings that matter here.
#[derive(Debug, Default)]
struct Unit {
    environment: Vec<(String, String)>,
    exec_start: String,
    timeout_stop: Duration,
}

/// systemd's specifiers in these units: `%i` (the instance), `%H` (the
/// host name) and `%%`.
fn specifiers(text: &str, instance: &str) -> String {
    text.replace("%%", "\u{0}")
        .replace("%i", instance)
        .replace("%H", "host-1")
        .replace('\u{0}', "%")
}

fn parse_unit(path: &Path, instance: &str) -> Unit {
    let text = std::fs::read_to_string(path).unwrap();
    let mut unit = Unit::default();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section != "[Service]" {
            continue;
        }
        let (key, value) = line.split_once('=').unwrap();
        match key {
            "Environment" => {
                for pair in value.split_whitespace() {
                    let (k, v) = pair.split_once('=').unwrap();
                    unit.environment
                        .push((k.to_owned(), specifiers(v, instance)));
                }
            }
            "ExecStart" => unit.exec_start = specifiers(value, instance),
            "TimeoutStopSec" => {
                let secs = value.strip_suffix('s').unwrap().parse().unwrap();
                unit.timeout_stop = Duration::from_secs(secs);
            }
            _ => {}
        }
    }
    assert!(
        !unit.exec_start.is_empty(),
        "{}: no ExecStart",
        path.display()
    );
    unit
}

/// `KEY=VALUE` lines of an environment file (values keep their spaces).
fn parse_env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `ExecStart=` expanded as systemd does: `${VAR}` is one word, a word
/// `$VAR` splits the value at white space (no word when empty).
fn expand(exec_start: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    for word in exec_start.split_whitespace() {
        if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
            let value = env.get(name).map_or("", String::as_str);
            words.extend(value.split_whitespace().map(str::to_owned));
            continue;
        }
        let mut out = String::new();
        let mut rest = word;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').unwrap() + start;
            let name = &rest[start + 2..end];
            out.push_str(env.get(name).map_or("", String::as_str));
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        words.push(out);
    }
    words
}

/// The unit's command line with its `Environment=` defaults, then the
/// shipped environment file (when given) over them, then `overrides`.
fn command_line(
    unit: &Unit,
    env_file: Option<&Path>,
    overrides: &[(&str, &str)],
) -> (PathBuf, Vec<String>) {
    let mut env: BTreeMap<String, String> = unit.environment.iter().cloned().collect();
    if let Some(file) = env_file {
        env.extend(parse_env_file(file));
    }
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut words = expand(&unit.exec_start, &env);
    let program = words.remove(0);
    let name = program
        .strip_prefix(INSTALLED_BIN)
        .unwrap_or_else(|| panic!("{program} is not in {INSTALLED_BIN}"));
    (bin_path(name), words)
}

/// Runs `program ARGS --help`: clap refuses an unknown flag or a bad value
/// before it gets to `--help`, so exit 0 means every flag parses.
fn accepts(program: &Path, args: &[String]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {} refused ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `systemd-analyze verify` of `units` (file names in `dir`, instances
/// allowed): any message at all is a failure, since it reports unknown
/// settings as warnings with exit 0.
fn verify(dir: &Path, units: &[&str]) -> Result<(), String> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        // Documentation= man pages are not installed on a build machine.
        .arg("--man=no")
        .args(units.iter().map(|u| dir.join(u)))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): run `cargo xtask test`, which installs it")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, text.trim()))
    }
}

/// The shipped units copied to a temporary directory with `ExecStart=`
/// pointing at the built binaries (systemd-analyze checks that the program
/// exists and is executable); nothing else is changed.
fn units_for_verify() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bins = format!("{}/", bin_dir().display());
    for entry in std::fs::read_dir(deploy().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(INSTALLED_BIN), "{}", path.display());
            std::fs::write(
                dir.path().join(path.file_name().unwrap()),
                text.replace(INSTALLED_BIN, &bins),
            )
            .unwrap();
        }
    }
    dir
}

fn control_unit() -> Unit {
    parse_unit(&deploy().join("systemd/vane-control.service"), "")
}

fn agent_unit() -> Unit {
    parse_unit(&deploy().join("systemd/vane-agent@.service"), GROUP)
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let dir = units_for_verify();
    let agent = format!("vane-agent@{GROUP}.service");
    verify(dir.path(), &["vane-control.service", &agent]).unwrap();
}

#[test]
fn systemd_analyze_verify_refuses_a_broken_unit() {
    let dir = units_for_verify();
    let path = dir.path().join("vane-control.service");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("ProtectSystem=strict", "ProtectSytem=strict"),
    )
    .unwrap();
    let err = verify(dir.path(), &["vane-control.service"]).unwrap_err();
    assert!(err.contains("ProtectSytem"), "{err}");
}

#[test]
fn the_units_command_lines_are_accepted_by_the_binaries() {
    let env_files = [
        (control_unit(), deploy().join("systemd/vane-control.env")),
        (agent_unit(), deploy().join("systemd/vane-agent.env")),
    ];
    for (unit, env_file) in &env_files {
        // With the shipped environment file, and without one (it is optional).
        for file in [Some(env_file.as_path()), None] {
            let (program, args) = command_line(unit, file, &[]);
            accepts(&program, &args).unwrap();
        }
    }
    // The check is real: a flag the binary does not know is refused.
    let (program, args) = command_line(
        &env_files[0].0,
        None,
        &[("VANE_CONTROL_OPTS", "--shutdown-grace 10s --no-such-flag")],
    );
    let err = accepts(&program, &args).unwrap_err();
    assert!(err.contains("--no-such-flag"), "{err}");
}

/// Polls `GET path` on `addr` until it answers 200; panics after 30 s.
fn wait_ok(addr: std::net::SocketAddr, path: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = http_get(addr, path) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} on {addr} never answered 200; log:\n{}",
            vane_testkit::process::read_lossy(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_units_run_and_stop_within_their_stop_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state/vane-control");
    let admin = free_addr().to_string();

    // vane-control exactly as its unit starts it with the shipped
    // environment file; only the state directory and the ports differ.
    let control = control_unit();
    let (program, args) = command_line(
        &control,
        Some(&deploy().join("systemd/vane-control.env")),
        &[
            ("VANE_LISTEN", "127.0.0.1:0"),
            ("VANE_ADMIN_LISTEN", &admin),
        ],
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("/var/lib/vane-control", data.to_str().unwrap()))
        .collect();
    let control_log = tmp.path().join("control.log");
    let mut cmd = Command::new(program);
    cmd.args(&args);
    let (control_child, listen) = spawn_announced(cmd, "vane-control listening on ", &control_log);
    let admin_addr = admin.parse().unwrap();
    wait_ok(admin_addr, "/readyz", &control_log);
    let server = format!("http://{listen}");
    vane_testkit::vanectl(
        &server,
        &[
            "push",
            GROUP,
            "-f",
            fixtures::example_path().to_str().unwrap(),
        ],
    )
    .ok();

    // The agent likewise: its cache, output and admin port moved here.
    let cache = tmp.path().join(format!("state/vane-agent/{GROUP}"));
    let run = tmp.path().join(format!("run/vane-agent/{GROUP}"));
    std::fs::create_dir_all(&run).unwrap();
    let agent = agent_unit();
    let (program, args) = command_line(
        &agent,
        Some(&deploy().join("systemd/vane-agent.env")),
        &[("VANE_CONTROL", &server)],
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace(
                &format!("/var/lib/vane-agent/{GROUP}"),
                cache.to_str().unwrap(),
            )
            .replace(&format!("/run/vane-agent/{GROUP}"), run.to_str().unwrap())
            .replace("127.0.0.1:7072", "127.0.0.1:0")
        })
        .collect();
    let agent_log = tmp.path().join("agent.log");
    let mut cmd = Command::new(program);
    cmd.args(&args);
    let (agent_child, agent_admin) =
        spawn_announced(cmd, "vane-agent admin listening on ", &agent_log);
    wait_ok(agent_admin.parse().unwrap(), "/readyz", &agent_log);
    let output: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert!(output.is_object(), "{output}");

    // SIGTERM, as systemctl stop sends (KillSignal=SIGTERM): both exit 0
    // well within TimeoutStopSec, before systemd would SIGKILL them.
    for (child, unit, name) in [
        (agent_child, &agent, "vane-agent"),
        (control_child, &control, "vane-control"),
    ] {
        let started = Instant::now();
        let status = terminate_child(child, unit.timeout_stop)
            .unwrap_or_else(|| panic!("{name} did not stop within {:?}", unit.timeout_stop));
        assert!(status.success(), "{name} exited {status}");
        assert!(started.elapsed() < unit.timeout_stop, "{name}");
    }
}

// ---- Kubernetes --------------------------------------------------------

/// What the validation script reports (see its docstring).
struct Validation {
    errors: Vec<String>,
    resources: u64,
    containers: Vec<serde_json::Value>,
    config_maps: Vec<serde_json::Value>,
}

/// Runs the schema validation over the manifests in `dir`.
fn validate_manifests(dir: &Path) -> Validation {
    let root = workspace_root();
    let target = bin_dir().parent().unwrap().to_path_buf();
    let pythonpath = locate_kubernetes_validate(&target);
    if let Some(missing) = kubernetes_validate_missing(&pythonpath) {
        panic!("{missing}");
    }
    let out = Command::new("python3")
        .arg(root.join(VALIDATE_SCRIPT))
        .arg("--crd")
        .arg(root.join(SERVICE_MONITOR_CRD))
        .arg("--versions")
        .arg(KUBERNETES_VERSIONS.join(","))
        .arg(dir)
        .env("PYTHONPATH", &pythonpath)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{VALIDATE_SCRIPT} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = |key: &str| report[key].as_array().unwrap().clone();
    Validation {
        errors: list("errors")
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect(),
        resources: report["resources"].as_u64().unwrap(),
        containers: list("containers"),
        config_maps: list("config_maps"),
    }
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let report = validate_manifests(&deploy().join("kubernetes"));
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(report.resources >= 12, "{}", report.resources);

    // Every Vane container is probed on its admin port: readiness (or, for
    // the sidecar, startup: the application waits for it) on /readyz,
    // liveness on /healthz.
    let vane: Vec<_> = report
        .containers
        .iter()
        .filter(|c| {
            c["command"][0]
                .as_str()
                .unwrap_or("")
                .starts_with(INSTALLED_BIN)
        })
        .collect();
    assert_eq!(vane.len(), 3, "{vane:#?}");
    for c in vane {
        let ready = c["probes"]["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .or(c["probes"]["startupProbe"]["httpGet"]["path"].as_str());
        assert_eq!(ready, Some("/readyz"), "{c:#}");
        assert_eq!(
            c["probes"]["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{c:#}"
        );
    }
}

#[test]
fn the_schema_validation_refuses_a_broken_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let kubernetes = deploy().join("kubernetes");
    let statefulset = std::fs::read_to_string(kubernetes.join("embedded/statefulset.yaml"))
        .unwrap()
        .replace("          readinessProbe:", "          readynessProbe:");
    let monitor = std::fs::read_to_string(kubernetes.join("base/servicemonitor.yaml"))
        .unwrap()
        .replace("      interval: 30s", "      interval: [30s]");
    std::fs::write(dir.path().join("statefulset.yaml"), statefulset).unwrap();
    std::fs::write(dir.path().join("servicemonitor.yaml"), monitor).unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  \
         - statefulset.yaml\n  - servicemonitor.yaml\n  - missing.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("orphan.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    let errors = validate_manifests(dir.path()).errors;
    let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(has("'readynessProbe' was unexpected"), "{errors:#?}");
    assert!(has("spec.endpoints.0.interval"), "{errors:#?}");
    assert!(has("missing.yaml does not exist"), "{errors:#?}");
    assert!(
        has("orphan.yaml: listed in no kustomization.yaml"),
        "{errors:#?}"
    );
}

/// `$(VAR)` in a container's arguments, as the kubelet expands them.
fn kubelet_expand(arg: &str, env: &serde_json::Value) -> String {
    let mut out = arg.to_owned();
    for (name, value) in env.as_object().unwrap() {
        out = out.replace(&format!("$({name})"), value.as_str().unwrap());
    }
    assert!(
        !out.contains("$("),
        "{arg}: a variable the container does not define"
    );
    out
}

#[test]
fn the_manifests_container_args_are_accepted_by_the_binaries() {
    let report = validate_manifests(&deploy().join("kubernetes"));
    let mut checked = 0;
    for c in &report.containers {
        let Some(program) = c["command"][0].as_str() else {
            continue;
        };
        let Some(name) = program.strip_prefix(INSTALLED_BIN) else {
            continue;
        };
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| kubelet_expand(a.as_str().unwrap(), &c["env"]))
            .collect();
        accepts(&bin_path(name), &args).unwrap_or_else(|e| panic!("{}: {e}", c["file"]));
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn the_shipped_policy_is_accepted_by_vane_control() {
    let report = validate_manifests(&deploy().join("kubernetes"));
    let policy = report
        .config_maps
        .iter()
        .find(|c| c["name"] == "ConfigMap/vane-control-policy")
        .and_then(|c| c["data"]["policy.yaml"].as_str())
        .expect("the policy ConfigMap")
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    // It starts with the policy (a policy it cannot read stops it), and the
    // policy is in force: an anonymous push is refused.
    let server = ControlServer::start_with(&["--policy", path.to_str().unwrap()]);
    let push = server.ctl(&[
        "push",
        "shop",
        "-f",
        fixtures::example_path().to_str().unwrap(),
    ]);
    assert_eq!(push.code, 1, "{push:?}");
    assert!(
        push.stderr
            .contains("needs a client certificate or a bearer token"),
        "{push:?}"
    );
}
