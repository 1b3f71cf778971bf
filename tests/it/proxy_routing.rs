//! vane-proxy routing end to end: host (exact, wildcard, case, port), path
//! (prefix, exact, regex) and header (exact, regex, present) matches with
//! first-match-wins, the 404 a client can read, header rewriting, h2c on the
//! same port, TCP proxying, route changes reaching open connections, and the
//! admin endpoint.

#![allow(clippy::unwrap_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vane_model::SnapshotSpec;
use vane_model::spec::{HeaderMatchSpec, RouteMatchSpec, RouteSpec};
use vane_testkit::ControlServer;
use vane_testkit::net::free_addr;
use vane_testkit::proxy::spec::{cluster, http_listener, prefix, table, tcp_listener};
use vane_testkit::proxy::{Backend, HttpClient, OneConnection, ProxyProcess, TcpBackend, push};

const GROUP: &str = "edge";

fn route(name: &str, m: RouteMatchSpec, cluster: &str) -> RouteSpec {
    RouteSpec {
        name: Some(name.into()),
        matcher: Some(m),
        cluster: cluster.into(),
        ..RouteSpec::default()
    }
}

fn header(name: &str, exact: Option<&str>, regex: Option<&str>, present: bool) -> HeaderMatchSpec {
    HeaderMatchSpec {
        name: name.into(),
        exact: exact.map(Into::into),
        regex: regex.map(Into::into),
        present: present.then_some(true),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_path_and_headers_first_match_wins() {
    let server = ControlServer::start();
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
        Backend::start("e").await,
    ];
    let web = free_addr();
    let db = free_addr();
    let tcp_backend = TcpBackend::start("tcp-1").await;
    let any = RouteMatchSpec::default();
    let spec = SnapshotSpec {
        listeners: vec![
            http_listener("web", web, "main"),
            tcp_listener("db", db, "tcp"),
        ],
        route_tables: vec![table(
            "main",
            vec![
                route(
                    "canary",
                    RouteMatchSpec {
                        path_prefix: Some("/".into()),
                        headers: vec![header("x-canary", Some("yes"), None, false)],
                        ..any.clone()
                    },
                    "c",
                ),
                route(
                    "tier",
                    RouteMatchSpec {
                        headers: vec![header("x-tier", None, Some("gold|silver"), false)],
                        ..any.clone()
                    },
                    "c",
                ),
                route(
                    "debug",
                    RouteMatchSpec {
                        headers: vec![header("x-debug", None, None, true)],
                        ..any.clone()
                    },
                    "d",
                ),
                route(
                    "host-exact",
                    RouteMatchSpec {
                        host: Some("api.example.com".into()),
                        ..any.clone()
                    },
                    "a",
                ),
                route(
                    "host-wild",
                    RouteMatchSpec {
                        host: Some("*.example.com".into()),
                        ..any.clone()
                    },
                    "b",
                ),
                route(
                    "exact",
                    RouteMatchSpec {
                        path_exact: Some("/exact".into()),
                        ..any.clone()
                    },
                    "d",
                ),
                route(
                    "regex",
                    RouteMatchSpec {
                        path_regex: Some("/items/[0-9]+".into()),
                        ..any.clone()
                    },
                    "e",
                ),
                prefix("api", "/api", "a"),
            ],
        )],
        clusters: {
            let mut c: Vec<_> = backends
                .iter()
                .map(|b| cluster(&b.id, "round_robin", &[(b.addr, 1)]))
                .collect();
            c.push(cluster("tcp", "round_robin", &[(tcp_backend.addr, 1)]));
            c
        },
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "p1", GROUP, &[]);
    proxy.wait_version(v);
    assert_eq!(proxy.readyz(), 200);

    let http = HttpClient::http1();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        // Header routes come first and win over everything after them.
        (
            "/exact",
            &[("x-canary", "yes"), ("host", "api.example.com")],
            "c",
        ),
        ("/anything", &[("x-tier", "silver")], "c"),
        ("/anything", &[("x-debug", "")], "d"),
        // Exact host, any case, port stripped; before the wildcard.
        ("/exact", &[("host", "API.Example.com:8080")], "a"),
        ("/", &[("host", "www.example.com")], "b"),
        ("/", &[("host", "a.b.example.com")], "b"),
        // The bare domain is not matched by "*.example.com".
        ("/api/x", &[("host", "example.com")], "a"),
        ("/exact", &[("host", "other")], "d"),
        ("/items/42", &[], "e"),
        ("/api", &[], "a"),
        ("/apiary", &[], "a"),
    ];
    for (path, headers, want) in cases {
        let r = http.get(web, path, headers).await.unwrap();
        assert_eq!(r.status, 200, "{path} {headers:?}: {r:?}");
        assert_eq!(r.header("x-backend"), *want, "{path} {headers:?}");
        assert_eq!(r.body, *want);
    }
    // No match: a 404 the client can tell from an upstream's.
    for (path, headers) in [
        ("/exact/x", &[][..]),
        ("/items/4x", &[][..]),
        ("/", &[("x-tier", "bronze")][..]),
        ("/", &[("x-canary", "no")][..]),
    ] {
        let r = http.get(web, path, headers).await.unwrap();
        assert_eq!(r.status, 404, "{path} {headers:?}: {r:?}");
        assert_eq!(r.header("x-vane-error"), "no_route");
        assert!(r.header("x-backend").is_empty());
    }

    // Header rewriting: x-forwarded-for appended, hop-by-hop headers (and
    // those named by Connection) removed, Host kept.
    let r = http
        .get(
            web,
            "/api/h",
            &[
                ("x-forwarded-for", "10.1.1.1"),
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("host", "svc.internal"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.header("x-seen-forwarded-for"), "10.1.1.1, 127.0.0.1");
    assert_eq!(r.header("x-seen-private"), "");
    assert_eq!(r.header("x-seen-host"), "svc.internal");
    assert_eq!(r.header("x-seen-path"), "/api/h");

    // h2c with prior knowledge on the same port; the upstream gets HTTP/1.1
    // with a Host header taken from :authority.
    let h2 = HttpClient::h2c();
    for _ in 0..3 {
        let r = h2.get(web, "/items/7", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-backend"), "e");
        assert_eq!(r.header("x-seen-host"), web.to_string());
    }
    let r = h2.get(web, "/nope", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-vane-error"), "no_route");

    // TCP: bytes both ways through the tcp listener.
    let mut s = tokio::net::TcpStream::connect(db).await.unwrap();
    let mut greeting = [0u8; 6];
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"tcp-1\n");
    s.write_all(b"ping through vane").await.unwrap();
    let mut echo = [0u8; 17];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping through vane");
    drop(s);

    // Admin: the running configuration, the agent's status, metrics.
    let dump = proxy.config_dump();
    assert_eq!(dump["version"], v);
    assert_eq!(dump["source"], "live");
    assert_eq!(dump["snapshot"]["route_tables"][0]["name"], "main");
    let listeners = dump["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 2, "{dump}");
    let status = proxy.status();
    assert_eq!(status["version"], v);
    assert_eq!(status["state"], "healthy");
    assert_eq!(status["source"], "live");
    assert_eq!(proxy.admin_get("/healthz").0, 200);
    let ok = proxy.metric(
        "vane_proxy_requests_total",
        &[
            "listener=\"web\"",
            "route=\"regex\"",
            "cluster=\"e\"",
            "class=\"2xx\"",
        ],
    );
    assert_eq!(ok, 4.0);
    let no_route = proxy.metric(
        "vane_proxy_requests_total",
        &["listener=\"web\"", "route=\"\"", "class=\"4xx\""],
    );
    assert_eq!(no_route, 5.0);
    assert!(
        proxy.metric(
            "vane_proxy_request_duration_seconds_count",
            &["route=\"api\""]
        ) >= 3.0
    );
    assert_eq!(proxy.metric("vane_proxy_config_version", &[]), v as f64);
    assert_eq!(proxy.metric("vane_agent_config_version", &[]), v as f64);
    assert_eq!(proxy.metric("vane_agent_healthy", &[]), 1.0);
    assert_eq!(
        proxy.metric("vane_proxy_connections_total", &["listener=\"db\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_reach_open_connections_and_removed_routes_leave_metrics() {
    let server = ControlServer::start();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let web = free_addr();
    let mut spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table(
            "main",
            vec![prefix("old", "/old", "a"), prefix("all", "/", "a")],
        )],
        clusters: vec![
            cluster("a", "round_robin", &[(a.addr, 1)]),
            cluster("b", "round_robin", &[(b.addr, 1)]),
        ],
        ..SnapshotSpec::default()
    };
    let v1 = push(&server, GROUP, &spec);
    let proxy = ProxyProcess::follow(&server, "p2", GROUP, &[]);
    proxy.wait_version(v1);

    let mut conn = OneConnection::open(web).await.unwrap();
    assert_eq!(conn.get("/x").await.unwrap().header("x-backend"), "a");
    assert_eq!(conn.get("/old").await.unwrap().header("x-backend"), "a");

    spec.route_tables = vec![table("main", vec![prefix("all", "/", "b")])];
    let v2 = push(&server, GROUP, &spec);
    proxy.wait_version(v2);
    // The same keep-alive connection (the listener was left alone) now
    // routes by the new table.
    for _ in 0..5 {
        let r = conn.get("/x").await.unwrap();
        assert_eq!(r.header("x-backend"), "b");
    }
    assert_eq!(
        proxy.metric("vane_proxy_connections_total", &["listener=\"web\""]),
        1.0
    );
    // The removed route's series are gone; the kept one continues.
    let metrics = proxy.metrics();
    assert!(!metrics.contains("route=\"old\""), "{metrics}");
    assert!(metrics.contains("route=\"all\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_closed() {
    let server = ControlServer::start();
    let a = Backend::start("a").await;
    let web = free_addr();
    let spec = SnapshotSpec {
        listeners: vec![http_listener("web", web, "main")],
        route_tables: vec![table("main", vec![prefix("all", "/", "a")])],
        clusters: vec![cluster("a", "round_robin", &[(a.addr, 1)])],
        ..SnapshotSpec::default()
    };
    let v = push(&server, GROUP, &spec);
    let dir = server.scratch();
    let proxy = ProxyProcess::start(
        &[server.url()],
        "idle",
        GROUP,
        &dir.join("cache"),
        &dir.join("logs"),
        &["--idle-timeout", "500ms"],
    );
    proxy.wait_version(v);

    // A connection that is used keeps going past the idle timeout.
    let mut busy = OneConnection::open(web).await.unwrap();
    for _ in 0..8 {
        assert_eq!(busy.get("/").await.unwrap().status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // One that never sends anything, and one that never finishes its
    // headers, are closed within two periods.
    let mut silent = tokio::net::TcpStream::connect(web).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(web).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut slow] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed within the idle timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
}
