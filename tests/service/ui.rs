//! The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven over
//! WebDriver): log in with a token, submit an audit from the page, watch it finish, open its
//! report and plots, be refused another team's audit, open a scan's alert and acknowledge it.
//! Screenshots are kept under target/ui-screenshots/ (the test's artifacts).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::{free_port, organisms, Env};

pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub(crate) struct Driver(pub(crate) Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts ChromeDriver on a free port; it stops when the guard drops.
pub(crate) fn chromedriver() -> (Driver, u16) {
    let port = free_port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver"),
    );
    (driver, port)
}

/// Opens audit `id` on the dashboard and checks that each section `(id, needs a chart)` is
/// drawn, without a section error, and that the page recorded no script error; a screenshot of
/// each section as `{prefix}-{section}.png`. Skipped (outside CI) without chromedriver.
pub(crate) fn audit_sections_in_browser(
    env: &Env,
    token: &str,
    id: &str,
    sections: &[(&str, bool)],
    prefix: &str,
) {
    if !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI: chromium-driver is not installed"
        );
        return;
    }
    let (_driver, port) = chromedriver();
    let profile = env.dir.path().join(format!("chromium-{prefix}"));
    let ui = format!("http://127.0.0.1:{}/ui/", env.api_port);
    env.rt.block_on(async {
        let c = browser(port, &profile).await;
        log_in(&c, &ui, token).await;
        c.goto(&format!("{ui}#/audit/{id}")).await.unwrap();
        wait_text(
            &c,
            "#artifacts",
            |t| t.contains("results.json"),
            Duration::from_secs(30),
        )
        .await;
        // A finished audit cannot be cancelled: the button is hidden, whatever its CSS says.
        let cancel = c.find(Locator::Css("#cancel")).await.unwrap();
        assert!(
            !cancel.is_displayed().await.unwrap(),
            "Cancel shown on a finished audit"
        );
        for (section, chart) in sections {
            let node = c
                .find(Locator::Css(&format!("#{section}")))
                .await
                .unwrap_or_else(|_| panic!("no #{section} on the audit page"));
            let broken = c
                .find_all(Locator::Css(&format!("#{section} .section-error")))
                .await
                .unwrap();
            assert!(
                broken.is_empty(),
                "#{section}: {}",
                node.text().await.unwrap()
            );
            if *chart {
                let charts = c
                    .find_all(Locator::Css(&format!("#{section} [_echarts_instance_]")))
                    .await
                    .unwrap();
                assert!(!charts.is_empty(), "#{section} has no chart");
            }
            c.execute(
                "arguments[0].scrollIntoView()",
                vec![serde_json::to_value(&node).unwrap()],
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            shot(&c, &format!("{prefix}-{section}.png")).await;
        }
        assert_no_script_errors(&c).await;
        c.close().await.unwrap();
    });
}

/// Clicks the element `css` selects.
pub(crate) async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Types `text` into the field `css` selects.
pub(crate) async fn fill(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// Fails on any script error, unhandled rejection or CSP violation the dashboard recorded.
pub(crate) async fn assert_no_script_errors(c: &Client) {
    let errors = c
        .execute(
            "return window.__ndErrors || ['the dashboard did not load']",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "the dashboard recorded errors");
}

pub(crate) async fn browser(port: u16, profile: &Path) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                     format!("--user-data-dir={}", profile.display())]
        }
    });
    let caps: serde_json::Map<String, Value> = serde_json::from_value(caps).unwrap();
    // The connection to chromedriver is plain HTTP, but the client's TLS stack wants a provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let start = Instant::now();
    loop {
        match ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver: {e}"),
        }
    }
}

/// Polls the page until `selector` exists and `check` holds for its text.
pub(crate) async fn wait_text(
    c: &Client,
    selector: &str,
    check: impl Fn(&str) -> bool,
    timeout: Duration,
) -> String {
    let start = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Css(selector)).await {
            if let Ok(t) = e.text().await {
                if check(&t) {
                    return t;
                }
            }
        }
        if start.elapsed() > timeout {
            let url = c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let body = match c.find(Locator::Css("body")).await {
                Ok(b) => b.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("timed out waiting for {selector} on {url}; the page says:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Logs in on the dashboard at `ui` with `token` and waits for the audit list.
pub(crate) async fn log_in(c: &Client, ui: &str, token: &str) {
    c.goto(&format!("{ui}#/audits")).await.unwrap();
    wait_text(c, "#login", |_| true, Duration::from_secs(20)).await;
    fill(c, "#token", token).await;
    click(c, "#login").await;
    wait_text(c, "#audits", |_| true, Duration::from_secs(20)).await;
}

pub(crate) async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(name), png).unwrap();
}

#[test]
fn the_dashboard_logs_in_submits_follows_refuses_and_shows_alerts() {
    if !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI: chromium-driver is not installed (scripts/test.sh installs it)"
        );
        eprintln!("no chromedriver: the browser test is skipped (apt-get install chromium chromium-driver)");
        return;
    }
    let mut env = Env::new(None);
    let org = organisms(env.dir.path());
    env.start(&[("w1", &[])]);
    let token = env.token("ui-team");
    let other = env.token("ui-others");
    let (base, ft) = (org.join("base"), org.join("rank-update"));
    let foreign = env.submit(
        &other,
        json!({"base": base, "finetuned": org.join("attn-scaled"), "analyses": ["weights"]}),
    );
    // A scan whose first checkpoint breaks its rule, so the team has an alert to open.
    let watch = env.dir.path().join("watch");
    std::fs::create_dir_all(watch.join("step-1")).unwrap();
    for e in std::fs::read_dir(&ft).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), watch.join("step-1").join(e.file_name())).unwrap();
    }
    let (status, scan) = env.json(
        "POST",
        "/v1/scans",
        &token,
        Some(
            json!({"name": "nightly", "source": watch, "base": base, "every_s": 2,
            "audit": {"analyses": ["weights"]},
            "rules": [{"name": "low-rank-large", "severity": "high", "scope": "tensor",
                       "metric": "rel_fro", "op": ">", "value": 0.2,
                       "and": [{"metric": "stable_rank", "op": "<", "value": 4.5}]}]}),
        ),
    );
    assert_eq!(status, 201, "{scan}");

    let (_driver, port) = chromedriver();
    let profile = env.dir.path().join("chromium-profile");
    let ui = format!("http://127.0.0.1:{}/ui/", env.api_port);
    let base_s = base.display().to_string();
    let ft_s = ft.display().to_string();
    env.rt.block_on(async {
        let c = browser(port, &profile).await;
        // Without a token the dashboard asks for one; a wrong one is refused.
        c.goto(&format!("{ui}#/audits")).await.unwrap();
        wait_text(&c, "#login", |_| true, Duration::from_secs(20)).await;
        fill(&c, "#token", "nd_wrong").await;
        click(&c, "#login").await;
        wait_text(&c, "#error", |t| t.contains("401"), Duration::from_secs(20)).await;
        let field = c.find(Locator::Css("#token")).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(&token).await.unwrap();
        shot(&c, "01-login.png").await;
        click(&c, "#login").await;
        wait_text(&c, "#audits", |_| true, Duration::from_secs(20)).await;

        // Submit from the page; the page follows the audit until it succeeds.
        c.goto(&format!("{ui}#/submit")).await.unwrap();
        wait_text(&c, "#submit-form", |_| true, Duration::from_secs(20)).await;
        fill(&c, "#f-base", &base_s).await;
        fill(&c, "#f-finetuned", &ft_s).await;
        let analyses = c.find(Locator::Css("#f-analyses")).await.unwrap();
        analyses.clear().await.unwrap();
        analyses.send_keys("weights").await.unwrap();
        shot(&c, "02-submit.png").await;
        click(&c, "#f-submit").await;
        let status = wait_text(
            &c,
            "#audit-status",
            |t| t == "succeeded" || t == "failed",
            Duration::from_secs(180),
        )
        .await;
        assert_eq!(status, "succeeded");
        let url = c.current_url().await.unwrap().to_string();
        let id = url.rsplit('/').next().unwrap().to_string();
        // Plots drawn by the vendored ECharts, the report in its frame, the artifacts listed.
        wait_text(
            &c,
            "#artifacts",
            |t| t.contains("report.html"),
            Duration::from_secs(30),
        )
        .await;
        let charts = c
            .find_all(Locator::Css("[_echarts_instance_]"))
            .await
            .unwrap();
        assert!(!charts.is_empty(), "no ECharts plot on the audit page");
        c.find(Locator::Css("#report-frame")).await.unwrap();
        shot(&c, "03-audit.png").await;
        c.execute(
            "document.querySelector('[_echarts_instance_]').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        shot(&c, "03b-audit-plots.png").await;
        assert_no_script_errors(&c).await;

        // The audit list shows it, with its status.
        c.goto(&format!("{ui}#/audits")).await.unwrap();
        wait_text(
            &c,
            &format!("#audits tr[data-id='{id}'] .status"),
            |t| t.contains("succeeded"),
            Duration::from_secs(20),
        )
        .await;
        shot(&c, "04-audits.png").await;

        // Another team's audit is refused (not found, as if it did not exist).
        c.goto(&format!("{ui}#/audit/{foreign}")).await.unwrap();
        let refusal = wait_text(&c, "#error", |t| t.contains("404"), Duration::from_secs(20)).await;
        assert!(refusal.contains("not found"), "{refusal}");
        shot(&c, "05-refused.png").await;

        // The scan's alert: listed, opened, acknowledged.
        c.goto(&format!("{ui}#/alerts")).await.unwrap();
        let row = {
            let start = Instant::now();
            loop {
                c.refresh().await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(r) = c.find(Locator::Css("#alerts tr[data-id]")).await {
                    break r;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(180),
                    "no alert appeared"
                );
            }
        };
        shot(&c, "06-alerts.png").await;
        row.click().await.unwrap();
        let detail = wait_text(
            &c,
            "#alert-detail",
            |t| t.contains("low-rank-large"),
            Duration::from_secs(20),
        )
        .await;
        assert!(detail.contains("high"), "{detail}");
        shot(&c, "07-alert.png").await;
        click(&c, "#ack").await;
        // The button itself: the detail always has an "acknowledged" row label.
        wait_text(&c, "#ack", |t| t == "Acknowledged", Duration::from_secs(20)).await;

        // The scan's page: its run and the trend of what its rule watches.
        let scan_id = scan["id"].as_str().unwrap();
        c.goto(&format!("{ui}#/scan/{scan_id}")).await.unwrap();
        wait_text(
            &c,
            "#runs",
            |t| t.contains("step-1"),
            Duration::from_secs(20),
        )
        .await;
        shot(&c, "08-scan.png").await;
        assert_no_script_errors(&c).await;

        // Two audits side by side: the one submitted and the one the scan started, picked in
        // the list.
        c.goto(&format!("{ui}#/audits")).await.unwrap();
        let start = Instant::now();
        let picks = loop {
            let p = c
                .find_all(Locator::Css("#audits tr[data-id] input.pick"))
                .await
                .unwrap();
            if p.len() >= 2 {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "fewer than two audits listed"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        picks[0].click().await.unwrap();
        picks[1].click().await.unwrap();
        click(&c, "#compare-btn").await;
        let compared = wait_text(
            &c,
            "#compare-metrics",
            |t| t.contains("metric"),
            Duration::from_secs(20),
        )
        .await;
        assert!(compared.contains("rel"), "{compared}");
        let charts = c
            .find_all(Locator::Css("[_echarts_instance_]"))
            .await
            .unwrap();
        assert!(!charts.is_empty(), "no overlay on the compare page");
        shot(&c, "08b-compare.png").await;
        assert_no_script_errors(&c).await;
        c.close().await.unwrap();
    });
    let (_, alerts) = env.json("GET", "/v1/alerts?state=acknowledged", &token, None);
    assert_eq!(
        alerts["alerts"].as_array().unwrap().len(),
        1,
        "acknowledged from the page"
    );
}
