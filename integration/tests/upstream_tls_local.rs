//! TLS from weir to the upstream: a real nginx serving TLS (and h2 by
//! ALPN) with a certificate from a test CA; weir checks it against the
//! listener's `ca` and `server_name`, and presents its own certificate to
//! an nginx that asks for one.

use std::net::SocketAddr;

use weir::observe::flow::Verdict;
use weir_integration::*;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "443", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: "/public/.*"}
              - {method: GET, path: "/whoami"}
"#;

/// A listener named `name` on a free port, towards `upstream` with `tls`
/// (the `upstream_tls:` mapping's body).
fn listener(name: &str, port: u16, upstream: SocketAddr, tls: &str) -> String {
    format!(
        "  - name: {name}\n    bind: 127.0.0.1:{port}\n    upstream: {upstream}\n    \
         destination: {{labels: {{app: api}}, port: 443}}\n    upstream_tls: {{{tls}}}\n"
    )
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

#[test]
fn weir_speaks_tls_to_the_upstream_and_checks_its_certificate() {
    let pki = TestPki::new(&["api.internal"]);
    let nginx = Nginx::start_tls(&pki, false);
    let mutual = Nginx::start_tls(&pki, true);
    let ca = pki.ca.display();
    let (cert, key) = (pki.client_cert.display(), pki.client_key.display());
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let checked = format!("server_name: api.internal, ca: {ca}");
    let listeners = [
        listener("checked", ports[0], nginx.addr, &checked),
        listener("wrong-name", ports[1], nginx.addr, &format!("server_name: other.internal, ca: {ca}")),
        // the system's roots do not know the test CA
        listener("system-roots", ports[2], nginx.addr, "server_name: api.internal"),
        listener("no-client-cert", ports[3], mutual.addr, &checked),
        listener("client-cert", ports[4], mutual.addr, &format!("{checked}, cert: {cert}, key: {key}")),
        listener("h2", ports[5], nginx.addr, &checked) + "    upstream_protocol: http2\n",
    ];
    let config = format!(
        "admin: ADMIN\nendpoints:\n  - {{name: frontend, address: {FRONTEND}, labels: {{app: frontend}}}}\n\
         listeners:\n{}",
        listeners.concat()
    );
    let weir = Weir::start(&config, &[("api.yaml", POLICY)]);

    // checked: HTTP/1.1 over TLS, SNI sent, rules judged as ever
    let ok = curl_from(FRONTEND, &[&url(ports[0], "/public/hello.txt")]);
    assert_eq!((ok.status, ok.body.as_str()), (200, "hello from nginx\n"), "{ok:?}");
    let who = curl_from(FRONTEND, &[&url(ports[0], "/whoami")]);
    assert_eq!(who.body, "sni=api.internal client=\n", "{who:?}");
    assert_eq!(curl_from(FRONTEND, &[&url(ports[0], "/admin/secret.txt")]).status, 403);
    assert!(!nginx.access_log().contains("/admin/secret.txt"));
    assert!(nginx.access_log().contains("\"GET /public/hello.txt HTTP/1.1\" 200"), "{}", nginx.access_log());

    // h2 to the upstream, negotiated by ALPN
    let h2 = curl_from(FRONTEND, &[&url(ports[5], "/public/hello.txt")]);
    assert_eq!(h2.status, 200, "{h2:?}");
    assert!(nginx.access_log().contains("\"GET /public/hello.txt HTTP/2.0\" 200"), "{}", nginx.access_log());
    // an HTTP/2 client through the HTTP/1.1 listener: weir speaks HTTP/1.1 upstream
    let from_h2 = curl_from(FRONTEND, &["--http2-prior-knowledge", &url(ports[0], "/whoami")]);
    assert_eq!(from_h2.status, 200, "{from_h2:?}");

    // a certificate not for the name asked, or from a CA weir does not
    // trust: no request reaches nginx, the client gets 503 and the flow says why
    let before = nginx.access_log().lines().count();
    for (port, why) in [(ports[1], "not valid for name"), (ports[2], "UnknownIssuer")] {
        let refused = curl_from(FRONTEND, &[&url(port, "/public/hello.txt")]);
        assert_eq!(refused.status, 503, "{refused:?}");
        let flow = weir.wait_flow("protocol=http&verdict=error", why, |f| {
            f.listener == if port == ports[1] { "wrong-name" } else { "system-roots" }
        });
        let reason = flow.reason.unwrap_or_default();
        assert!(reason.contains("TLS with") && reason.contains(why), "{reason}");
        assert_eq!(flow.verdict, Verdict::Error);
    }
    assert_eq!(nginx.access_log().lines().count(), before, "{}", nginx.access_log());

    // mutual TLS: nginx refuses weir without a certificate, and serves it with one
    let without = curl_from(FRONTEND, &[&url(ports[3], "/whoami")]);
    assert_eq!(without.status, 400, "nginx: no required SSL certificate was sent: {without:?}");
    let with = curl_from(FRONTEND, &[&url(ports[4], "/whoami")]);
    assert_eq!(with.body, "sni=api.internal client=CN=weir\n", "{with:?}");
}

#[test]
fn an_upstream_tls_setting_that_cannot_work_is_refused() {
    let pki = TestPki::new(&["api.internal"]);
    let missing = pki.dir.path().join("missing.pem");
    for (tls, why) in [
        (format!("ca: {}", missing.display()), "missing.pem"),
        (format!("ca: {}", pki.server_key.display()), "no PEM certificate found"),
        (format!("server_name: 'not a name', ca: {}", pki.ca.display()), "neither a DNS name nor an IP address"),
        (format!("ca: {}, cert: {}", pki.ca.display(), pki.client_cert.display()), "give both `cert` and `key`"),
    ] {
        let config =
            format!("admin: ADMIN\nlisteners:\n{}", listener("api", free_port(), "127.0.0.1:9".parse().unwrap(), &tls));
        let log = match Weir::try_start_wrapped(&config, &[("api.yaml", POLICY)], &[], &[]) {
            Ok(_) => panic!("{tls}: weir started"),
            Err(log) => log,
        };
        assert!(log.contains("upstream_tls") && log.contains(why), "{tls}: {log}");
    }
}
