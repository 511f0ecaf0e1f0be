//! Starts the real service for a test: a database of its own on the PostgreSQL server, its own
//! stream prefix on Redis (or a private redis-server it can restart), artifacts under a prefix of
//! its own in Garage's bucket (a local directory where no S3 server is configured, never in CI),
//! and `neurodiff api`, `scheduler` and `worker` processes that it kills when dropped.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use neurodiff_store::{Blobs, Db};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_neurodiff");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The token the test deployment reads `/metrics` with.
pub const METRICS_TOKEN: &str = "metrics-token-of-the-operator";

pub struct Env {
    pub rt: tokio::runtime::Runtime,
    pub db: Db,
    admin_url: String,
    db_name: String,
    pub db_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub object_store: String,
    /// Where tests upload models (`s3://` checkpoints): allowed by the policy, apart from
    /// the artifact store, which is never readable as a model.
    pub models_store: Option<String>,
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    pub api_port: u16,
    /// More environment for every process this test starts.
    pub extra_env: Vec<(String, String)>,
}

fn with_database(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => format!("{url}/{name}"),
    }
}

impl Env {
    pub fn new(redis_url: Option<String>) -> Env {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let admin_url =
            std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test.sh sets it)");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("nd_it_{}", &id[..12]);
        let db_url = with_database(&admin_url, &db_name);
        let db = rt.block_on(async {
            let admin = Db::connect(&admin_url).await.expect("database server");
            sqlx::query(&format!("CREATE DATABASE {db_name}"))
                .execute(&admin.pool)
                .await
                .expect("create the test database");
            let db = Db::connect(&db_url).await.expect("test database");
            db.migrate().await.expect("migrations");
            db
        });
        let s3 = std::env::var("AWS_ENDPOINT_URL").is_ok();
        assert!(
            s3 || std::env::var("CI").is_err(),
            "CI: no S3 server configured; source scripts/garage.sh"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let object_store = if s3 {
            format!("s3://neurodiff/it-{id}")
        } else {
            format!("file://{}/objects", dir.path().display())
        };
        let models_store = s3.then(|| format!("s3://neurodiff/models-{id}"));
        Env {
            models_store,
            rt,
            db,
            admin_url,
            db_name,
            db_url,
            redis_url: redis_url.unwrap_or_else(|| {
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
            }),
            prefix: format!("nd-it-{id}"),
            object_store,
            dir,
            children: Vec::new(),
            api_port: free_port(),
            extra_env: Vec::new(),
        }
    }

    pub fn blobs(&self) -> Blobs {
        Blobs::from_url(&self.object_store).expect("object store")
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("DATABASE_URL", &self.db_url)
            .env("REDIS_URL", &self.redis_url)
            .env("NEURODIFF_QUEUE_PREFIX", &self.prefix)
            .env("NEURODIFF_OBJECT_STORE", &self.object_store)
            .env("NEURODIFF_CACHE_DIR", self.dir.path().join("cache"))
            // The reference policy: this test's directory (the worker's cache inside it stays
            // closed) and its model prefix in the bucket.
            .env("NEURODIFF_ALLOW_LOCAL", self.dir.path())
            // Quotas are tested on the API itself; here (and in the load benchmark) they must
            // not be what limits a run.
            .env("NEURODIFF_QUOTA_ACTIVE", "100000")
            .env("NEURODIFF_QUOTA_PER_MINUTE", "100000")
            // Webhook receivers are started by the tests on loopback; retries come quickly.
            .env("NEURODIFF_WEBHOOK_ALLOW_INTERNAL", "true")
            .env("NEURODIFF_WEBHOOK_BACKOFF_MS", "300")
            // A checkpoint is audited at the second poll that sees it unchanged, however soon.
            .env("NEURODIFF_SCAN_SETTLE_MS", "0")
            .env("RUST_LOG", "info");
        if let Some(models) = &self.models_store {
            c.env("NEURODIFF_ALLOW_S3", models);
        }
        c.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts `neurodiff ARGS`, its output in `{name}.log`.
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.log(name)).expect("log file");
        let child = self
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn neurodiff");
        self.children.push((name.to_string(), child));
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.children {
            if n == name {
                c.kill().expect("kill");
                c.wait().expect("reap");
            }
        }
        self.children.retain(|(n, _)| n != name);
    }

    /// The process id of a child.
    pub fn pid(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
            .expect("a child of that name")
    }

    /// SIGTERM, then waits for the process to exit; its exit status.
    pub fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .expect("a child of that name");
        let (_, mut child) = self.children.remove(i);
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        child.wait().expect("wait")
    }

    /// API, scheduler (short lease and backoff, so recovery is quick) and the given workers:
    /// (name, extra args).
    pub fn start(&mut self, workers: &[(&str, &[&str])]) {
        let bind = format!("127.0.0.1:{}", self.api_port);
        self.spawn(
            "api",
            &["api", "--bind", &bind, "--metrics-token", METRICS_TOKEN],
        );
        self.start_scheduler("scheduler");
        for (name, extra) in workers {
            self.start_worker(name, extra);
        }
        let url = format!("http://{bind}/healthz");
        wait_for("the API", Duration::from_secs(30), || {
            ureq::get(&url).call().ok().map(|_| ())
        });
    }

    /// A scheduler with a short lease, backoff and reaping period, so recovery is quick.
    pub fn start_scheduler(&mut self, name: &str) {
        self.spawn(
            name,
            &[
                "scheduler",
                "--name",
                name,
                "--poll-ms",
                "200",
                "--lease-timeout-ms",
                "2000",
                "--backoff-base-ms",
                "200",
                "--max-deliveries",
                "8",
                "--reap-ms",
                "1000",
            ],
        );
    }

    pub fn start_worker(&mut self, name: &str, extra: &[&str]) {
        let mut args = vec!["worker", "--name", name, "--renew-ms", "300"];
        args.extend_from_slice(extra);
        self.spawn(name, &args);
    }

    pub fn token(&self, team: &str) -> String {
        self.rt.block_on(async {
            let t = self.db.ensure_team(team).await.expect("team");
            self.db.create_token(&t, "it").await.expect("token")
        })
    }

    /// (status, body) of a request to the API.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.api_port))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut resp = agent
            .run(req.body(body.unwrap_or_default()).expect("request"))
            .expect("HTTP");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .expect("body");
        (resp.status().as_u16(), bytes)
    }

    pub fn json(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let (status, bytes) = self.http(method, path, Some(token), body.map(|b| b.to_string()));
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub fn submit(&self, token: &str, body: Value) -> String {
        let (status, audit) = self.json("POST", "/v1/audits", token, Some(body));
        assert_eq!(status, 202, "{audit}");
        audit["id"].as_str().expect("id").to_string()
    }

    /// Waits for a terminal status and returns the audit.
    pub fn wait_done(&self, token: &str, id: &str, timeout: Duration) -> Value {
        wait_for(&format!("audit {id} to finish"), timeout, || {
            let (_, a) = self.json("GET", &format!("/v1/audits/{id}"), token, None);
            matches!(
                a["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
            .then_some(a)
        })
    }

    /// `neurodiff ARGS` as a client of this service with `token`; its stdout (it must succeed).
    pub fn client(&self, token: &str, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .env(
                "NEURODIFF_SERVER",
                format!("http://127.0.0.1:{}", self.api_port),
            )
            .env("NEURODIFF_TOKEN", token)
            .output()
            .expect("neurodiff");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!(
                "--- {name}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (admin_url, db_name) = (self.admin_url.clone(), self.db_name.clone());
        self.rt.block_on(async {
            self.db.pool.close().await;
            if let Ok(admin) = Db::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                    .execute(&admin.pool)
                    .await;
            }
        });
    }
}

/// Writes the model organisms (base, rank-update, attn-scaled, lora) under `dir`.
pub fn organisms(dir: &Path) -> PathBuf {
    let out = dir.join("org");
    let status = Command::new(BIN)
        .args(["organisms", "--out"])
        .arg(&out)
        .status()
        .expect("neurodiff organisms");
    assert!(status.success());
    out
}

/// A copy of the cached trained organisms in `dir/trained`, inside what the policy lets a
/// team read.
pub fn trained_organisms(dir: &Path) -> PathBuf {
    let out = dir.join("trained");
    let status = Command::new(BIN)
        .args(["organisms", "--trained", "--quiet", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("neurodiff organisms --trained");
    assert!(status.success());
    out
}

impl Env {
    /// A corpus the service may read: in the models' object store when there is one (the
    /// service reads corpora from there), else a local file beside the test's other files.
    pub fn corpus(&self, name: &str, text: Vec<u8>) -> String {
        match &self.models_store {
            Some(store) => {
                let blobs = Blobs::from_url(store).expect("models store");
                self.rt
                    .block_on(blobs.put(&format!("corpora/{name}"), bytes::Bytes::from(text)))
                    .expect("corpus upload");
                format!("{store}/corpora/{name}")
            }
            None => {
                let local = self.dir.path().join(name);
                std::fs::write(&local, text).expect("corpus file");
                local.display().to_string()
            }
        }
    }
}

/// The embedded audit of the same pair, for comparison.
pub fn embedded(dir: &Path, args: &[&str]) -> Value {
    let out = dir.join("embedded");
    let status = Command::new(BIN)
        .arg("audit")
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .stdout(Stdio::null())
        .status()
        .expect("neurodiff audit");
    assert!(status.success());
    serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
        .expect("json")
}

/// Asserts two JSON documents are equal, numbers to a relative 1e-9, ignoring `skip` keys.
pub fn assert_close(a: &Value, b: &Value, path: &str, skip: &[&str]) {
    assert_within(a, b, path, skip, 1e-9);
}

/// Asserts two JSON documents are equal, numbers to a relative `rel`, ignoring `skip` keys.
pub fn assert_within(a: &Value, b: &Value, path: &str, skip: &[&str], rel: f64) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (x - y).abs() <= rel * x.abs().max(y.abs()) + 1e-12,
                "{path}: {x} vs {y}"
            );
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys: Vec<_> = x.keys().filter(|k| !skip.contains(&k.as_str())).collect();
            let other: Vec<_> = y.keys().filter(|k| !skip.contains(&k.as_str())).collect();
            assert_eq!(keys, other, "{path}: keys differ");
            for k in keys {
                assert_within(&x[k], &y[k], &format!("{path}.{k}"), skip, rel);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: lengths differ");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_within(p, q, &format!("{path}[{i}]"), skip, rel);
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

/// A private redis-server on `port`. With `snapshots`, it keeps its snapshot (`SAVE`) there and
/// loads it when started again; without, it keeps nothing on disk.
pub fn redis_server(port: u16, snapshots: Option<&Path>) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    if let Some(dir) = snapshots {
        cmd.arg("--dir").arg(dir).args(["--dbfilename", "dump.rdb"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (Debian's redis-server package)");
    wait_for("redis-server", Duration::from_secs(10), || {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("PONG")
            .then_some(())
    });
    child
}
