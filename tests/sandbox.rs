//! The sandbox is deny-by-default: no file outside a granted folder, no
//! env var that was not granted, no call that was not granted.

use serde_json::json;
use steedos_tests::TestApp;

use crate::calls::forward;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_files_env_vars_and_calls_are_reachable() {
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("STEEDOS_TEST_INHERITED", "from-host") };
    let t = TestApp::start_with(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.inventory]
component = "{INVENTORY}"
[packages.probe]
component = "{PROBE}"
[packages.probe.grants]
dirs = [{ host = "{DIR}/ro", guest = "/ro", read_only = true }, { host = "{DIR}/rw", guest = "/rw" }]
env = { MODE = "sandboxed" }
env_inherit = ["STEEDOS_TEST_INHERITED"]
calls = ["greeter.*"]
[packages.bare]
component = "{PROBE}"
"#,
        |dir| {
            std::fs::create_dir(dir.join("ro")).expect("mkdir");
            std::fs::create_dir(dir.join("rw")).expect("mkdir");
            std::fs::write(dir.join("ro/hello.txt"), "hi there").expect("write");
            std::fs::write(dir.join("secret.txt"), "top secret").expect("write");
        },
    )
    .await;
    let read = |path: &str| t.call("probe.read-file", json!({ "path": path }));
    assert_eq!(
        read("/ro/hello.txt").await.expect("granted"),
        json!("hi there")
    );
    assert!(
        read("/ro/../secret.txt").await.is_err(),
        "no escape from a preopen"
    );
    assert!(read("/etc/passwd").await.is_err());
    assert!(read("secret.txt").await.is_err());
    let secret = t.dir.path().join("secret.txt").display().to_string();
    assert!(
        read(&secret).await.is_err(),
        "absolute host paths are not visible"
    );
    // Read-only means read-only; read-write means read-write.
    let write = |path: &str| t.call("probe.write-file", json!({ "path": path, "contents": "x" }));
    assert!(write("/ro/new.txt").await.is_err());
    assert!(!t.dir.path().join("ro/new.txt").exists());
    write("/rw/new.txt").await.expect("writable grant");
    assert_eq!(
        std::fs::read_to_string(t.dir.path().join("rw/new.txt")).expect("written"),
        "x"
    );

    let env = |name: &str| t.call("probe.env", json!({ "name": name }));
    assert_eq!(env("MODE").await.expect("env"), json!("sandboxed"));
    assert_eq!(
        env("STEEDOS_TEST_INHERITED").await.expect("env"),
        json!("from-host")
    );
    assert_eq!(env("PATH").await.expect("env"), json!(null));
    assert_eq!(env("HOME").await.expect("env"), json!(null));
    // A package without grants sees nothing.
    assert_eq!(
        t.call("bare.env", json!({"name": "MODE"}))
            .await
            .expect("env"),
        json!(null)
    );
    assert!(
        t.call("bare.read-file", json!({"path": "/ro/hello.txt"}))
            .await
            .is_err()
    );

    assert_eq!(
        forward(&t, "probe", "greeter.hello", json!({"name": "p"}))
            .await
            .expect("granted"),
        json!("Hello, p!")
    );
    let denied = forward(&t, "probe", "inventory.get-item", json!({"sku": "apple"}))
        .await
        .unwrap_err();
    assert!(
        denied.contains("denied")
            && denied.contains("inventory.get-item")
            && denied.contains("grants"),
        "{denied}"
    );
    let denied = forward(&t, "bare", "greeter.hello", json!({"name": "p"}))
        .await
        .unwrap_err();
    assert!(denied.contains("denied"), "{denied}");
}
