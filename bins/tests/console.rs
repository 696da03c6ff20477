//! The web console in a real headless Chromium (WebDriver through `chromedriver`), against a
//! real platform: sign in, create a database and a role, connect with `psql` through the
//! gateway, watch `booting` then `ready`, the idle stop and its span on the timeline, a
//! handoff's phases; a branch; sign out. Screenshots of each step are kept under
//! `target/tmp/console-screenshots/`. Also: the cookie's flags, a forged request without the
//! CSRF token refused, wrong API keys throttled.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use spg::testing::webdriver::Driver;

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_manages_and_shows_a_database_in_a_real_browser() {
    let Some(driver) = Driver::start().await else {
        panic!("chromedriver is missing: apt-get install chromium chromium-driver (.ci/run does)");
    };
    let t = TestPlatform::start_with(Duration::from_secs(5), |c| {
        // Wrong keys locked out after four, with short delays (the defaults take a minute).
        c.http_limits.key_throttle = spg_core::throttle::ThrottlePolicy {
            free_failures: 1,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            lockout_after: 4,
            ..Default::default()
        };
    })
    .await;
    let base = t.p().api_url();
    let profile = tempfile::tempdir().unwrap();
    let b = driver.browser(profile.path()).await;

    // Sign in with the API key.
    b.goto(&format!("{base}/console")).await;
    let key = b.wait_for("#api-key", T).await;
    b.type_into(&key, "not-the-key").await;
    b.click(&b.find("#sign-in").await.unwrap()).await;
    b.wait_text("#sign-in-error", T, |s| s.contains("Sign-in failed"))
        .await;
    let key = b.find("#api-key").await.unwrap();
    b.type_into(&key, API_KEY).await;
    b.click(&b.find("#sign-in").await.unwrap()).await;
    b.wait_text("#databases tbody", T, |s| s.contains(DB)).await;
    b.screenshot(&shots().join("01-signed-in.png")).await;
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "spg_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    // The page's script cannot read it.
    let visible = b.execute("return document.cookie").await;
    assert!(!visible.as_str().unwrap_or_default().contains("spg_session"));

    // Create a database and a role; the password is shown once, with the DSN.
    let name = b.find("#new-db").await.unwrap();
    b.type_into(&name, "shop").await;
    b.click(&b.find("#create-db").await.unwrap()).await;
    b.wait_text("#detail-name", T, |s| s == "shop").await;
    let role = b.find("#role-name").await.unwrap();
    b.type_into(&role, "clerk").await;
    b.click(&b.find("#create-role").await.unwrap()).await;
    let password = b.wait_text("#role-password", T, |s| s.len() >= 16).await;
    let dsn = b
        .wait_text("#dsn", T, |s| s.contains("clerk") && s.contains("/shop"))
        .await;
    b.screenshot(&shots().join("02-database-and-role.png"))
        .await;
    assert!(
        dsn.contains("<password>"),
        "the DSN never shows the password: {dsn}"
    );

    // Connect with psql through the gateway: the console shows booting, then ready.
    let dsn = dsn.replace("<password>", &password);
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(psql_bin())
            .args(["-X", "-A", "-t", "-d", &dsn, "-c", "SELECT current_user"])
            .env("PGSSLROOTCERT", t.ca_file())
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "clerk");
    b.wait_text("tr[data-db=shop] .state", T, |s| s == "ready")
        .await;
    let history = b
        .wait_text("#transitions", T, |s| s.contains("→ ready"))
        .await;
    let booting = history.find("→ booting").expect("booting shown");
    let ready = history.find("→ ready").expect("ready shown");
    assert!(
        ready < booting,
        "newest first: ready after booting\n{history}"
    );
    b.wait_for("#wake-chart rect.bar", T).await;
    b.wait_text("#boot-steps", T, |s| {
        s.contains("checkout") && s.contains("total")
    })
    .await;
    b.screenshot(&shots().join("03-ready.png")).await;

    // Idle stop (5 s): stopped, and the ready span stands on the timeline.
    b.wait_text("tr[data-db=shop] .state", T, |s| s == "stopped")
        .await;
    b.wait_for("#timeline rect[data-state=ready]", T).await;
    let spans = b.find_all("#timeline rect").await.len();
    assert!(
        spans >= 4,
        "stopped, booting, ready, stopping, stopped: {spans}"
    );
    b.screenshot(&shots().join("04-idle-stopped.png")).await;

    // Wake from the console, then hand off to L2 and watch the phases.
    b.click(&b.find("tr[data-db=shop] .action-wake").await.unwrap())
        .await;
    b.wait_text("tr[data-db=shop] .state", T, |s| s == "ready")
        .await;
    // A session keeps it awake (past the idle timeout) through the handoff.
    let (holder, conn) = tokio_postgres::connect(&dsn, tls_maker(&t)).await.unwrap();
    tokio::spawn(conn);
    holder.simple_query("SELECT 1").await.unwrap();
    b.execute("document.querySelector('#handoff-profile').value = 'L2'; return true")
        .await;
    b.click(&b.find("#handoff").await.unwrap()).await;
    let phases = b
        .wait_text("#handoff-phases", T, |s| s.contains("steady"))
        .await;
    for phase in ["preparing", "frozen", "draining", "switching", "steady"] {
        assert!(phases.contains(phase), "{phase} not shown:\n{phases}");
    }
    b.wait_text("tr[data-db=shop]", T, |s| s.contains("L2"))
        .await;
    b.screenshot(&shots().join("05-handoff.png")).await;

    // Branch it from the console: the branch is listed and opened, with the parent's data.
    holder
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    b.type_into(&b.find("#branch-name").await.unwrap(), "shop_pr1")
        .await;
    b.click(&b.find("#create-branch").await.unwrap()).await;
    let made = b
        .wait_text("#branch-made", T, |s| s.starts_with("shop_pr1:"))
        .await;
    assert!(made.contains("shop at now"), "{made}");
    b.wait_text("#detail-name", T, |s| s == "shop_pr1").await;
    b.wait_for("tr[data-db=shop_pr1]", T).await;
    b.screenshot(&shots().join("06-branch.png")).await;
    let branch_dsn = dsn.replace("/shop?", "/shop_pr1?");
    let (bc, conn) = tokio_postgres::connect(&branch_dsn, tls_maker(&t))
        .await
        .unwrap();
    tokio::spawn(conn);
    let v: i32 = bc
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    drop(bc);

    // A forged request with the session cookie but without the CSRF token is refused.
    let cookie = format!("spg_session={}", session["value"].as_str().unwrap());
    let http = common::daemons::https_client(&std::fs::read(t.ca_file()).unwrap());
    let forged = http
        .post(format!("{base}/v1/databases"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let body: Value = forged.json().await.unwrap();
    assert_eq!(body["error"]["code"], "csrf");
    // The same session reads without a token.
    let read = http
        .get(format!("{base}/v1/databases/shop"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    // Sign out: the session ends.
    b.click(&b.find("#sign-out").await.unwrap()).await;
    b.wait_for("#sign-in-view:not([hidden])", T).await;
    b.screenshot(&shots().join("06-signed-out.png")).await;
    let after = http
        .get(format!("{base}/v1/databases"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    assert!(b.cookies().await.iter().all(|c| c["name"] != "spg_session"));
    b.quit().await;

    // Wrong keys are throttled: soon 429 for this address.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = http
            .post(format!("{base}/console/session"))
            .json(&json!({"api_key": "wrong"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    drop(holder);
    t.shutdown().await;
}
