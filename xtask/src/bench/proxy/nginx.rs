//! nginx's side of the benchmark: the upstream both proxies forward to (an
//! nginx answering `200 ok` from memory), nginx as the proxy under test
//! (HTTP, HTTPS with the certificate vane serves, and TCP through its
//! stream module), and starting either.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, ensure};

use super::report::Record;
use crate::harness::Proc;
use crate::process::{display, on_path, run as run_cmd};

/// The stream module of Debian's nginx (a dynamic module).
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The upstream's config: nginx answering from memory, one worker so it
/// leaves CPU to the proxies under test.
pub(crate) fn upstream_conf(dir: &Path, upstream: SocketAddr) -> String {
    [
        "daemon off;".to_owned(),
        "master_process on;".to_owned(),
        "worker_processes 1;".to_owned(),
        format!("pid {};", dir.join("upstream.pid").display()),
        format!("error_log {}/upstream-error.log warn;", dir.display()),
        "events { worker_connections 16384; }".to_owned(),
        "http {".to_owned(),
        "  access_log off;".to_owned(),
        "  keepalive_requests 1000000;".to_owned(),
        "  keepalive_timeout 300s;".to_owned(),
        "  server {".to_owned(),
        format!("    listen {upstream} reuseport backlog=4096;"),
        "    location / { return 200 \"ok\"; }".to_owned(),
        "  }".to_owned(),
        "}".to_owned(),
    ]
    .join("\n")
        + "\n"
}

/// Where nginx serves HTTPS, and the certificate it serves (vane's).
pub(crate) struct Https<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) cert: &'a Path,
    pub(crate) key: &'a Path,
}

/// The proxying `location` (and the server block's end) both of nginx's
/// HTTP servers end with.
const LOCATION: [&str; 10] = [
    "    location / {",
    "      proxy_pass http://up;",
    "      proxy_http_version 1.1;",
    "      proxy_set_header Connection \"\";",
    "      proxy_set_header Host $http_host;",
    "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "      proxy_connect_timeout 1s;",
    "      proxy_read_timeout 15s;",
    "    }",
    "  }",
];

/// nginx as the proxy under test, configured like vane's snapshot: HTTP on
/// `http`, HTTPS as `https` says, TCP on `tcp`, all to `upstream`.
/// `load_stream` is what [`stream_module`] returned.
pub(crate) fn proxy_conf(
    load_stream: &str,
    workers: usize,
    dir: &Path,
    upstream: SocketAddr,
    http: SocketAddr,
    https: &Https<'_>,
    tcp: SocketAddr,
) -> String {
    let mut lines: Vec<String> = [
        load_stream.to_owned(),
        "daemon off;".to_owned(),
        "master_process on;".to_owned(),
        format!("worker_processes {workers};"),
        format!("pid {};", dir.join("nginx.pid").display()),
        format!("error_log {}/nginx-error.log warn;", dir.display()),
        "worker_rlimit_nofile 65536;".to_owned(),
        "events { worker_connections 16384; }".to_owned(),
        "http {".to_owned(),
        "  access_log off;".to_owned(),
        "  keepalive_requests 1000000;".to_owned(),
        "  keepalive_timeout 300s;".to_owned(),
        "  upstream up {".to_owned(),
        format!("    server {upstream};"),
        "    keepalive 512;".to_owned(),
        "    keepalive_requests 1000000;".to_owned(),
        "  }".to_owned(),
        "  server {".to_owned(),
        format!("    listen {http} reuseport backlog=4096;"),
    ]
    .into();
    lines.extend(LOCATION.map(str::to_owned));
    lines.extend([
        "  server {".to_owned(),
        format!("    listen {} ssl reuseport backlog=4096;", https.addr),
        format!("    ssl_certificate {};", https.cert.display()),
        format!("    ssl_certificate_key {};", https.key.display()),
        "    ssl_protocols TLSv1.2 TLSv1.3;".to_owned(),
    ]);
    lines.extend(LOCATION.map(str::to_owned));
    lines.extend([
        "}".to_owned(),
        "stream {".to_owned(),
        format!("  upstream up_tcp {{ server {upstream}; }}"),
        "  server {".to_owned(),
        format!("    listen {tcp} reuseport backlog=4096;"),
        "    proxy_pass up_tcp;".to_owned(),
        "    proxy_connect_timeout 1s;".to_owned(),
        "  }".to_owned(),
        "}".to_owned(),
    ]);
    lines.join("\n") + "\n"
}

/// Makes sure nginx's stream module can be loaded; returns the
/// `load_module` line to put in the config (empty when it is built in).
pub(crate) fn stream_module() -> Result<String> {
    let out = Command::new("nginx").arg("-V").output()?;
    let configure = String::from_utf8_lossy(&out.stderr).into_owned();
    if configure.contains("--with-stream ") || configure.ends_with("--with-stream") {
        return Ok(String::new());
    }
    if !Path::new(STREAM_MODULE).exists() {
        println!(
            "==> nginx's stream module (TCP proxying) is not installed: it is a separate \
             Debian package, libnginx-mod-stream"
        );
        install_package("libnginx-mod-stream")?;
        ensure!(
            Path::new(STREAM_MODULE).exists(),
            "installed libnginx-mod-stream, but {STREAM_MODULE} is still missing"
        );
    }
    Ok(format!("load_module {STREAM_MODULE};"))
}

/// `apt-get install -y PACKAGE` (after an `apt-get update` if the first
/// attempt fails, e.g. on a fresh container with no package lists).
fn install_package(package: &str) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root() && on_path("apt-get"),
        "install the Debian package {package} (needs root and apt-get) and run again"
    );
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut cmd)
    };
    if install().is_err() {
        let mut update = Command::new("apt-get");
        update
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut update)?;
        install()?;
    }
    Ok(())
}

pub(crate) fn start_nginx(
    name: &'static str,
    dir: &Path,
    conf: &str,
    rec: &mut Record,
) -> Result<Proc> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut test = Command::new("nginx");
    test.arg("-t").arg("-p").arg(&prefix).arg("-c").arg(&path);
    let out = test.output()?;
    ensure!(
        out.status.success(),
        "nginx -t refused the {name} config:\n{}\n{conf}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(&prefix).arg("-c").arg(&path);
    rec.commands.push(display(&cmd));
    rec.configs
        .push((format!("nginx.conf ({name})"), conf.to_owned()));
    let log = std::fs::File::create(prefix.join("stderr.log"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("cannot start nginx ({name})"))?;
    Ok(Proc::new(name, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_their_addresses() {
        let up = SocketAddr::from(([127, 0, 0, 1], 20001));
        let http = SocketAddr::from(([127, 0, 0, 1], 20002));
        let tcp = SocketAddr::from(([127, 0, 0, 1], 20003));
        let dir = Path::new("/tmp/vane-bench-x");
        assert!(upstream_conf(dir, up).contains("listen 127.0.0.1:20001 reuseport"));
        let https = Https {
            addr: SocketAddr::from(([127, 0, 0, 1], 20004)),
            cert: Path::new("/tmp/site.pem"),
            key: Path::new("/tmp/site.key"),
        };
        let conf = proxy_conf("", 3, dir, up, http, &https, tcp);
        assert!(conf.contains("listen 127.0.0.1:20004 ssl reuseport"));
        assert!(conf.contains("ssl_certificate /tmp/site.pem;"));
        assert_eq!(conf.matches("proxy_pass http://up;").count(), 2);
        assert!(conf.contains("worker_processes 3;"));
        assert!(conf.contains("listen 127.0.0.1:20002 reuseport"));
        assert!(conf.contains("upstream up_tcp { server 127.0.0.1:20001; }"));
    }
}
