//! What a package's lifecycle shows in the host's logs: guest logs under
//! the `guest` target with the package's name, and `stopped` called on the
//! old version when a package is upgraded. Each test names its package
//! uniquely, since the log capture is the whole process's.

use std::time::Duration;

use steedos_tests::{TestApp, guests, logs};

/// The captured lines of `package` (by its field) that contain `text`.
fn lines(package: &str, text: &str) -> Vec<String> {
    logs()
        .text()
        .lines()
        .filter(|l| {
            l.contains(&format!("package=\"{package}\""))
                || l.contains(&format!("package={package} "))
        })
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_logs_arrive_under_the_guest_target_with_the_package_name() {
    let logs = logs();
    let _t = TestApp::start(
        r#"
[packages.audit-log-target]
component = "{AUDIT}"
"#,
    )
    .await;
    // audit logs this at info from its `started`.
    let line = logs
        .line_with(
            &["audit-log-target", "audit started, keeping the last"],
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|| panic!("no guest log line:\n{}", logs.text()));
    assert!(line.contains(" INFO guest: "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_calls_stopped_on_the_old_version() {
    let logs = logs();
    let name = "audit-upgraded";
    let t = TestApp::start(&format!(
        r#"
[packages.{name}]
component = "{{AUDIT}}"
"#
    ))
    .await;
    let started = logs
        .line_with(&[name, "audit started"], Duration::from_secs(10))
        .await;
    assert!(started.is_some(), "{}", logs.text());
    assert!(lines(name, "audit stopped").is_empty());
    let bytes = std::fs::read(guests::AUDIT).expect("audit component");
    let done = t.app.deploy(name, &bytes, &[]).await.expect("upgrade");
    assert!(done.contains("upgraded"), "{done}");
    // The new version started, and the old one was told to stop.
    let both = steedos_tests::eventually(Duration::from_secs(10), || async {
        (lines(name, "audit started").len() == 2 && lines(name, "audit stopped").len() == 1)
            .then_some(())
    })
    .await;
    assert!(
        both.is_some(),
        "started: {:?}\nstopped: {:?}",
        lines(name, "audit started"),
        lines(name, "audit stopped")
    );
}
