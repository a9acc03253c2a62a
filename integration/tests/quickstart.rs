//! The quickstart as the README promises it: `weir run` with no arguments
//! serves the embedded example, and the commands it prints behave as printed.
//! It uses the quickstart's fixed ports (8080, 8081, 9090, 9901).

use std::process::{Command, Stdio};
use std::time::Duration;

use weir_integration::*;

#[test]
fn weir_run_without_arguments_serves_the_quickstart() {
    let runtime = tempfile::tempdir().unwrap();
    let log = runtime.path().join("weir.log");
    let _weir = Process::spawn(
        "weir run",
        Command::new(weir_bin())
            .arg("run")
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let admin = "127.0.0.1:9901".parse().unwrap();
    wait_for("the quickstart", Duration::from_secs(60), || http_get(admin, "/healthz").is_ok_and(|(s, _)| s == 200));
    let printed = std::fs::read_to_string(&log).unwrap();
    assert!(printed.contains("curl --interface 127.0.0.2 http://127.0.0.1:8080/public/hello"), "{printed}");

    let api = "http://127.0.0.1:8080";
    assert_eq!(curl_from(FRONTEND, &[&format!("{api}/public/hello")]).status, 200);
    let denied = curl_from(FRONTEND, &[&format!("{api}/private")]);
    assert_eq!((denied.status, denied.body.as_str()), (403, "Access denied\r\n"));
    let order = curl_from(
        FRONTEND,
        &["-X", "POST", "-H", "Content-Type: application/json", "-d", "{\"item\": 1}", &format!("{api}/api/orders")],
    );
    assert_eq!(order.status, 200);
    assert_eq!(curl_from(CRAWLER, &[&format!("{api}/robots.txt")]).status, 200);
    assert_eq!(curl_from(CRAWLER, &[&format!("{api}/public/hello")]).status, 403);
    assert_eq!(curl(&[&format!("{api}/public/hello")]).status, 0, "world is dropped");
    let h2 = curl_from(FRONTEND, &["--http2-prior-knowledge", &format!("{api}/public/h2")]);
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"));
    let admin_api = "http://127.0.0.1:8081/admin/users";
    assert_eq!(curl_from(FRONTEND, &[admin_api]).status, 401);
    assert_eq!(curl_from(FRONTEND, &["-H", "x-api-key: 0123456789abcdef0123456789abcdef", admin_api]).status, 200);
}

#[test]
fn weir_init_writes_a_quickstart_that_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("qs");
    let init = Command::new(weir_bin()).arg("init").arg(&target).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let check = Command::new(weir_bin())
        .args(["policy", "check", "--config"])
        .arg(&target)
        .arg(target.join("policies/demo-api.yaml"))
        .arg(target.join("policies/demo-admin.yaml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let again = Command::new(weir_bin()).arg("init").arg(&target).output().unwrap();
    assert!(!again.status.success(), "init never overwrites");
}
