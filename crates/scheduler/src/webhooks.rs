//! Delivers alerts to the scans' webhooks from the outbox in PostgreSQL: at least once, each
//! with a delivery id that stays the same on every retry (receivers deduplicate on it), signed
//! with HMAC-SHA256 over the scan's secret, retried with exponential backoff until a 2xx.
//!
//! Headers, as the large webhook senders do it:
//! - `NeuroDiff-Delivery: <uuid>` and `NeuroDiff-Event: alert.raised`;
//! - `NeuroDiff-Signature: t=<unix seconds>,v1=<hex>`, where v1 = HMAC-SHA256(secret,
//!   "<t>.<body>"). A receiver recomputes it over the raw body and refuses a `t` far from its
//!   clock (a replay).
//!
//! Hosts are resolved at each attempt and, unless the deployment allows internal targets,
//! refused when any address is internal (loopback, private, link-local): the request then goes
//! to the address that was checked, so a DNS answer cannot change between check and use.
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use neurodiff_protocol::scan::{check_webhook_url, is_internal, shown_target};
use neurodiff_store::{DeliveryOutcome, DueDelivery};
use sha2::Sha256;
use tokio::sync::watch;

use crate::context::{SchedulerContext, WebhookSettings};

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn backoff(s: &WebhookSettings, attempts: i32) -> Duration {
    let factor = 1u32 << (attempts.max(1) - 1).min(16);
    // Saturating: an absurd base from the command line waits the cap, it does not panic.
    s.backoff_base
        .checked_mul(factor)
        .map_or(s.backoff_max, |d| d.min(s.backoff_max))
}

/// Where to connect, checked against the policy; Err: a permanent refusal. The URL is parsed
/// as the client parses it, so the host checked is the host connected to.
async fn target(
    url: &str,
    allow_internal: bool,
) -> Result<(Option<String>, Vec<SocketAddr>), String> {
    check_webhook_url(url, allow_internal)?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{}`: {e}", shown_target(url)))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err("an http(s) URL without credentials".into());
    }
    let port = parsed.port_or_known_default().ok_or("no port")?;
    let (name, addrs): (Option<String>, Vec<SocketAddr>) = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
        Some(url::Host::Ipv6(ip)) => (None, vec![SocketAddr::new(ip.into(), port)]),
        Some(url::Host::Domain(d)) => {
            let addrs = tokio::net::lookup_host((d, port))
                .await
                .map_err(|e| format!("cannot resolve `{d}`: {e}"))?
                .collect();
            (Some(d.to_string()), addrs)
        }
        None => return Err("no host".into()),
    };
    if addrs.is_empty() {
        return Err("cannot resolve the host: no address".into());
    }
    if !allow_internal {
        if let Some(a) = addrs.iter().find(|a| is_internal(a.ip())) {
            return Err(format!(
                "the host resolves to an internal address ({}); refused",
                a.ip()
            ));
        }
    }
    Ok((name, addrs))
}

/// One attempt: (status, error, outcome).
async fn attempt(
    s: &WebhookSettings,
    d: &DueDelivery,
) -> (Option<i32>, Option<String>, DeliveryOutcome) {
    let retry = |attempts| {
        if attempts >= s.max_attempts {
            DeliveryOutcome::GiveUp
        } else {
            DeliveryOutcome::RetryIn(backoff(s, attempts).as_secs_f64())
        }
    };
    let (host, addrs) = match tokio::time::timeout(s.timeout, target(&d.url, s.allow_internal))
        .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) if e.starts_with("cannot resolve") => return (None, Some(e), retry(d.attempts)),
        Ok(Err(e)) => return (None, Some(e), DeliveryOutcome::GiveUp),
        Err(_) => {
            return (
                None,
                Some("resolving the host timed out".into()),
                retry(d.attempts),
            )
        }
    };
    // No proxy from the environment: it would resolve and connect where it likes.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(s.timeout)
        .user_agent(concat!("NeuroDiff-Webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(host) = &host {
        builder = builder.resolve_to_addrs(host, &addrs);
    }
    let client = builder.build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            return (
                None,
                Some(format!("client: {}", e.without_url())),
                retry(d.attempts),
            )
        }
    };
    let t = chrono::Utc::now().timestamp();
    let sent = client
        .post(&d.url)
        .header("content-type", "application/json")
        .header("NeuroDiff-Delivery", d.id.to_string())
        .header("NeuroDiff-Event", "alert.raised")
        .header("NeuroDiff-Signature", signature(&d.secret, t, &d.body))
        .body(d.body.clone())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => (
            Some(i32::from(r.status().as_u16())),
            None,
            DeliveryOutcome::Delivered,
        ),
        Ok(r) => (
            Some(i32::from(r.status().as_u16())),
            Some(format!("the receiver answered {}", r.status())),
            retry(d.attempts),
        ),
        // Named by scheme, host and port: reqwest's message would carry the whole URL, whose
        // path or query may hold the receiver's secret.
        Err(e) => (
            None,
            Some(format!(
                "request to {} failed: {}",
                shown_target(&d.url),
                e.without_url()
            )),
            retry(d.attempts),
        ),
    }
}

/// Sends what is due; the number delivered.
pub async fn deliver_due(ctx: &SchedulerContext) -> Result<usize, neurodiff_store::StoreError> {
    let s = &ctx.scans.webhooks;
    let lease = s.timeout.as_secs_f64() + 30.0;
    let due = ctx.db.claim_deliveries(16, lease).await?;
    let results = futures::future::join_all(due.iter().map(|d| attempt(s, d))).await;
    let mut delivered = 0;
    for (d, (status, error, outcome)) in due.iter().zip(results) {
        if outcome == DeliveryOutcome::Delivered {
            delivered += 1;
        } else {
            tracing::warn!(delivery = %d.id, attempts = d.attempts, error = error.as_deref().unwrap_or(""), "webhook delivery failed");
        }
        ctx.db
            .delivery_attempted(d.id, d.attempts, status, error.as_deref(), outcome)
            .await?;
    }
    Ok(delivered)
}

/// The delivery loop, apart from the scheduler's passes so that a slow receiver holds up
/// nothing else.
pub async fn run(ctx: SchedulerContext, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        match deliver_due(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(delivered = n, "webhooks delivered"),
            Err(e) => tracing::warn!(error = %e, "webhook pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.poll) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_time_and_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = signature("Jefe", 0, "");
        assert!(sig.starts_with("t=0,v1="));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(signature("k", 1, "a"), signature("k", 2, "a"));
        assert_ne!(signature("k", 1, "a"), signature("j", 1, "a"));
    }

    #[test]
    fn hosts_that_parse_to_internal_addresses_are_refused_at_delivery() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Each passes as a host name or a public-looking literal; each is loopback, the
        // unspecified address or a mapped private one once parsed as the client parses it.
        for url in [
            "http://2130706433/hook",
            "http://0/hook",
            "http://0x7f.1/hook",
            "http://[::ffff:10.0.0.1]/hook",
        ] {
            let refused = rt.block_on(target(url, false));
            assert!(refused.is_err(), "{url}: {refused:?}");
        }
        assert!(rt.block_on(target("http://2130706433/hook", true)).is_ok());
        assert!(rt
            .block_on(target("http://93.184.215.14/hook", false))
            .is_ok());
    }

    #[test]
    fn failed_deliveries_name_the_target_without_its_path_or_query() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let s = WebhookSettings {
            allow_internal: true,
            timeout: Duration::from_secs(2),
            ..WebhookSettings::default()
        };
        // A closed port on loopback: the request fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let d = DueDelivery {
            id: uuid::Uuid::new_v4(),
            url: format!("http://127.0.0.1:{port}/hooks/sekrit-path?token=sekrit-query"),
            secret: "s".into(),
            body: "{}".into(),
            attempts: 1,
        };
        let (_, error, _) = rt.block_on(attempt(&s, &d));
        let error = error.expect("an error");
        assert!(!error.contains("sekrit"), "{error}");
        assert!(
            error.contains(&format!("http://127.0.0.1:{port}")),
            "{error}"
        );
        for (url, shown) in [
            (
                "https://u:p@hooks.example.com/x?k=v",
                "https://hooks.example.com:443",
            ),
            ("http://[::1]:8080/a", "http://[::1]:8080"),
            ("ftp://h/k", "ftp://h"),
        ] {
            assert_eq!(shown_target(url), shown);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = WebhookSettings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5),
            ..WebhookSettings::default()
        };
        assert_eq!(backoff(&s, 1), Duration::from_secs(1));
        assert_eq!(backoff(&s, 3), Duration::from_secs(4));
        assert_eq!(backoff(&s, 9), Duration::from_secs(5));
        let huge = WebhookSettings {
            backoff_base: Duration::from_secs(u64::MAX / 2),
            ..s.clone()
        };
        assert_eq!(backoff(&huge, 12), huge.backoff_max);
    }
}
