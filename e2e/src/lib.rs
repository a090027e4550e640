//! Test harness for end-to-end tests: starts real `floe` processes on free
//! loopback ports with their own data directories, kills them with real
//! signals, and speaks raw Kafka protocol for the tests that need to send
//! what no well-behaved client would.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// The `floe` binary built next to the test executable.
pub fn floe_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FLOE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    dir.join("floe")
}

/// The `floectl` binary beside `floe`.
pub fn floectl_bin() -> PathBuf {
    floe_bin().with_file_name("floectl")
}

/// A port for a process a test starts (which binds it later, and again
/// after a restart). Taken below the kernel's ephemeral range (32768+), so
/// no outgoing connection can take it before the process binds it, and
/// reserved for the whole run with a lock file, so tests running at once
/// in other processes never pick the same one.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    const LOW: u16 = 10_000;
    const HIGH: u16 = 32_000;
    // A reservation older than any test run is stale.
    const STALE: Duration = Duration::from_secs(3600);
    let dir = std::env::temp_dir().join("floe-e2e-ports");
    std::fs::create_dir_all(&dir).expect("creating the port reservation directory");
    for _ in 0..10_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = LOW + (h.finish() % u64::from(HIGH - LOW)) as u16;
        let lock = dir.join(port.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {}
            Err(_) => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE);
                if stale {
                    let _ = std::fs::remove_file(&lock);
                }
                continue;
            }
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{HIGH}")
}

/// One `floe standalone` process.
pub struct Standalone {
    pub data_dir: PathBuf,
    pub port: u16,
    pub http_port: u16,
    config: Option<PathBuf>,
    /// More flags for `floe standalone`.
    args: Vec<String>,
    /// More environment variables for it.
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    /// Its storage server when it runs on S3 (see [`DefaultStorage`]).
    _moto: Option<Moto>,
    _tmp: Option<tempfile::TempDir>,
}

impl Standalone {
    /// Start with the default config.
    pub fn start() -> Result<Self> {
        Self::start_with_config("")
    }

    /// Start with `toml` as its config file (e.g. "[broker]\nmax_connections = 2").
    pub fn start_with_config(toml: &str) -> Result<Self> {
        Self::start_with_args(toml, &[])
    }

    /// [`Standalone::start_with_config`] with more flags (`args`).
    pub fn start_with_args(toml: &str, args: &[&str]) -> Result<Self> {
        Self::start_with_env(toml, args, &[])
    }

    /// [`Standalone::start_with_args`] with environment variables (`env`).
    pub fn start_with_env(toml: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut toml = toml.to_string();
        let mut moto = None;
        let names_storage = args
            .iter()
            .any(|a| a == "--storage" || a.starts_with("--storage="));
        if standalone_storage() == DefaultStorage::S3 && !names_storage {
            let m = Moto::start("floe-e2e")?;
            args.extend(["--storage".to_string(), m.url("objects")]);
            toml = with_test_wal_linger(&toml);
            moto = Some(m);
        }
        let config = if toml.is_empty() {
            None
        } else {
            let p = tmp.path().join("floe.toml");
            std::fs::write(&p, toml)?;
            Some(p)
        };
        let mut s = Self {
            data_dir,
            port: free_port(),
            http_port: free_port(),
            config,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log: tmp.path().join("floe.log"),
            _moto: moto,
            _tmp: Some(tmp),
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(floe_bin());
        cmd.arg("standalone")
            .arg("--listen")
            .arg(self.bootstrap())
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env(
                "FLOE_LOG",
                std::env::var("FLOE_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", floe_bin().display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // Ready: listening, and every partition recovered and writing.
            if TcpStream::connect(self.bootstrap()).is_ok()
                && http_get(self.http_port, "/readyz").is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "floe exited with {status} during start-up; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("floe did not start listening; log:\n{}", self.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, sig: &str) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill {sig} failed");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("floe did not exit after {sig}")
    }

    /// kill -9: no chance to flush, seal or checkpoint.
    pub fn kill9(&mut self) -> Result<()> {
        self.signal("-KILL")
    }

    /// SIGTERM: graceful shutdown (release every partition).
    pub fn terminate(&mut self) -> Result<()> {
        self.signal("-TERM")
    }

    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.terminate()?;
        }
        self.spawn()
    }

    /// Wait (up to 10 s) for `text` to appear in the process log.
    pub fn wait_log(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log_text().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn metrics(&self) -> Result<String> {
        http_get(self.http_port, "/metrics")
    }

    /// Sum of a metric's samples whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> Result<f64> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }

    /// Keys of the storage objects whose name ends in `suffix`, on whichever
    /// storage it runs (its directory, or the bucket of its S3 server).
    pub fn object_keys(&self, suffix: &str) -> Result<Vec<String>> {
        match &self._moto {
            Some(m) => Ok(m
                .keys("objects/")?
                .into_iter()
                .filter(|k| k.ends_with(suffix))
                .collect()),
            None => Ok(files_with_suffix(&self.objects_dir(), suffix)
                .into_iter()
                .map(|p| p.display().to_string())
                .collect()),
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real etcd server (Debian's etcd-server) on free loopback ports with a
/// temporary data directory; killed when dropped.
pub struct Etcd {
    host: String,
    pub client_port: u16,
    /// How clients reach it when it is secured.
    security: Option<floe_meta::EtcdSecurity>,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Result<Self> {
        Self::start_on("127.0.0.1")
    }

    /// An etcd whose client URL is on `host` (an address of this machine,
    /// e.g. the bridge of network namespaces a test made).
    pub fn start_on(host: &str) -> Result<Self> {
        Self::launch(host, None)
    }

    /// An etcd serving clients over TLS only, with client-certificate
    /// authentication and role-based access on: the certificates are made
    /// in `pki` (one CA for etcd and the cluster, as a small installation
    /// might), and user `floe` (password in `floe.etcd-password` there) may
    /// read and write `/floe/` and nothing else. Returns it with the
    /// `[etcd]` settings a Floe process needs.
    pub fn start_secure(pki: &Path) -> Result<Self> {
        let (cert, key) = TestPki::generate_peer_from(pki, "etcd-server")?;
        let (client_cert, client_key) = TestPki::generate_peer_from(pki, "floe")?;
        let password_file = pki.join("floe.etcd-password");
        std::fs::write(&password_file, "s3cret-etcd-password\n")?;
        let security = floe_meta::EtcdSecurity {
            ca: Some(pki.join("ca.pem")),
            cert: Some(client_cert),
            key: Some(client_key),
            user: Some("floe".into()),
            password_file: Some(password_file),
        };
        let e = Self::launch("127.0.0.1", Some((cert, key, pki.join("ca.pem"), security)))?;
        e.enable_auth()?;
        Ok(e)
    }

    /// Users `root` and `floe` (role `floe`: read-write on `/floe/`), then
    /// authentication on: from here on every request needs a user.
    fn enable_auth(&self) -> Result<()> {
        let security = self.security.clone().expect("a secured etcd");
        let url = self.url();
        // On a thread of its own: callers may be inside a runtime.
        let setup = move || -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    use etcd_client::Permission;
                    let mut tls = etcd_client::TlsOptions::new().ca_certificate(
                        etcd_client::Certificate::from_pem(std::fs::read(
                            security.ca.as_ref().unwrap(),
                        )?),
                    );
                    tls = tls.identity(etcd_client::Identity::from_pem(
                        std::fs::read(security.cert.as_ref().unwrap())?,
                        std::fs::read(security.key.as_ref().unwrap())?,
                    ));
                    let opts = etcd_client::ConnectOptions::new().with_tls(tls);
                    let mut c = etcd_client::Client::connect([url], Some(opts)).await?;
                    c.user_add("root", "root-password", None).await?;
                    c.user_grant_role("root", "root").await?;
                    c.role_add("floe").await?;
                    c.role_grant_permission("floe", Permission::read_write("/floe/").with_prefix())
                        .await?;
                    let password =
                        std::fs::read_to_string(security.password_file.as_ref().unwrap())?;
                    c.user_add("floe", password.trim(), None).await?;
                    c.user_grant_role("floe", "floe").await?;
                    c.auth_enable().await?;
                    anyhow::Ok(())
                })
        };
        std::thread::spawn(setup)
            .join()
            .map_err(|_| anyhow::anyhow!("etcd auth set-up panicked"))?
    }

    /// How a Floe process reaches this etcd when it is secured (the
    /// `[etcd]` section).
    pub fn security(&self) -> floe_meta::EtcdSecurity {
        self.security.clone().unwrap_or_default()
    }

    /// The `[etcd]` section of a Floe config file for this etcd (empty when
    /// it is not secured).
    pub fn config_toml(&self) -> String {
        let Some(s) = &self.security else {
            return String::new();
        };
        let path = |p: &Option<PathBuf>| p.as_ref().unwrap().display().to_string();
        format!(
            "\n[etcd]\nca = {:?}\ncert = {:?}\nkey = {:?}\nuser = \"floe\"\npassword_file = {:?}\n",
            path(&s.ca),
            path(&s.cert),
            path(&s.key),
            path(&s.password_file),
        )
    }

    /// A client of this etcd through Floe's metadata layer.
    pub async fn meta(&self) -> Result<floe_meta::EtcdStore> {
        Ok(floe_meta::EtcdStore::connect_with(&[self.url()], &self.security()).await?)
    }

    fn launch(
        host: &str,
        tls: Option<(PathBuf, PathBuf, PathBuf, floe_meta::EtcdSecurity)>,
    ) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let client_port = free_port();
        let peer_port = free_port();
        let health_port = free_port();
        let log = tmp.path().join("etcd.log");
        let out = std::fs::File::create(&log)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{host}:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("floe-test")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("floe-test={peer}"))
            // Health over plain HTTP apart from the client port.
            .arg("--listen-metrics-urls")
            .arg(format!("http://{host}:{health_port}"))
            .arg("--log-level")
            .arg("warn");
        let mut security = None;
        if let Some((cert, key, ca, s)) = tls {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
            security = Some(s);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning etcd (apt-get install etcd-server)")?;
        let mut e = Self {
            host: host.to_string(),
            client_port,
            security,
            child: Some(child),
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get_from(host, health_port, "/health", Duration::from_secs(2))
                .map(|b| b.contains("\"health\":\"true\""))
                .unwrap_or(false)
            {
                return Ok(e);
            }
            if let Some(status) = e.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "etcd exited with {status}; log:\n{}",
                    std::fs::read_to_string(&e.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "etcd did not become healthy; log:\n{}",
            std::fs::read_to_string(&e.log).unwrap_or_default()
        )
    }

    /// The client URL, as given to `--etcd`.
    pub fn url(&self) -> String {
        let scheme = if self.security.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where a test cluster or standalone keeps its data unless the test
/// names its targets. Clusters run on an object store by default — each
/// its own moto server (one bucket), so brokers take the shared WAL
/// layout (`chunk_layout = "auto"`), as in production on S3 — and a
/// standalone on its data directory, as `floe standalone` does out of the
/// box. `FLOE_E2E_STORAGE=s3` puts every standalone on S3 too (the whole
/// suite on the shared layout); `FLOE_E2E_STORAGE=file` every cluster on
/// a directory (per-partition chunks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultStorage {
    File,
    S3,
}

/// `toml` with the shared WAL's linger at 5 ms, as for a low-latency
/// store (docs/operations.md): a loopback S3 server answers in a few ms,
/// and the default 100 ms would make every acked produce of the suite
/// wait a tenth of a second. And pages of 16 chunk records, so that the
/// suite's short-lived segments page their lists (the default 128 would
/// rarely be reached). A setting the test made itself stays.
fn with_test_wal_linger(toml: &str) -> String {
    let lines: String = ["wal_linger_ms = 5\n", "wal_chunk_page = 16\n"]
        .into_iter()
        .filter(|l| !toml.contains(l.split(' ').next().unwrap()))
        .collect();
    match toml.find("[broker]\n") {
        Some(i) => {
            let at = i + "[broker]\n".len();
            format!("{}{lines}{}", &toml[..at], &toml[at..])
        }
        None => format!("{toml}\n[broker]\n{lines}"),
    }
}

fn storage_mode() -> Option<DefaultStorage> {
    match std::env::var("FLOE_E2E_STORAGE").as_deref() {
        Ok("s3") => Some(DefaultStorage::S3),
        Ok("file") => Some(DefaultStorage::File),
        Ok("") | Err(_) => None,
        Ok(other) => panic!("FLOE_E2E_STORAGE={other}: expected `file` or `s3`"),
    }
}

/// The default storage of a test cluster (see [`DefaultStorage`]).
pub fn cluster_storage() -> DefaultStorage {
    storage_mode().unwrap_or(DefaultStorage::S3)
}

/// The default storage of a test standalone (see [`DefaultStorage`]).
pub fn standalone_storage() -> DefaultStorage {
    storage_mode().unwrap_or(DefaultStorage::File)
}

/// A real S3-compatible server (moto's `moto_server`, from PyPI
/// `moto[server]`) on a free loopback port, with one bucket; killed when
/// dropped. `FLOE_MOTO_SERVER` names the binary if it is not on PATH.
pub struct Moto {
    pub port: u16,
    pub bucket: String,
    child: Option<Child>,
}

impl Moto {
    pub fn start(bucket: &str) -> Result<Self> {
        Self::start_on(bucket, free_port())
    }

    fn start_on(bucket: &str, port: u16) -> Result<Self> {
        let bin = std::env::var("FLOE_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        // moto's conditional PUT is check-then-store without a lock; this
        // directory's sitecustomize.py serializes key writes so a create of
        // an existing key fails as on S3 (see the file).
        let patch = Path::new(env!("CARGO_MANIFEST_DIR")).join("moto");
        let pythonpath = match std::env::var_os("PYTHONPATH") {
            Some(p) if !p.is_empty() => {
                let mut v = patch.into_os_string();
                v.push(":");
                v.push(p);
                v
            }
            _ => patch.into_os_string(),
        };
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONPATH", pythonpath)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {bin} (pip install 'moto[server]')"))?;
        let mut m = Self {
            port,
            bucket: bucket.to_string(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(status) = m.http("PUT", &format!("/{bucket}")) {
                if status == 200 {
                    return Ok(m);
                }
                bail!("creating bucket {bucket}: HTTP {status}");
            }
            if Instant::now() > deadline {
                bail!("moto_server did not start on port {port}");
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait()? {
                if status.code() == Some(70) {
                    bail!("moto_server refused to start: this moto's S3 handlers are not the ones e2e/moto/sitecustomize.py makes atomic (pin the moto version in scripts/test.sh)");
                }
                bail!("moto_server exited with {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill the server (the target goes away, with its data).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start an empty server on the same port (a replaced target).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let fresh = Self::start_on(&self.bucket, self.port)?;
        *self = fresh;
        Ok(())
    }

    /// Every key under `prefix` in the bucket (ListObjectsV2, all pages).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{}?list-type=2&prefix={prefix}", self.bucket);
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", url_escape(t)));
            }
            let body = self.get_body(&path)?;
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    fn get_body(&self, path: &str) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .context("moto answered without a body")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_string())
    }

    /// A bodiless request; the status code.
    fn http(&self, method: &str, path: &str) -> Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(std::str::from_utf8(&head[9..12])?.parse()?)
    }

    /// A storage URL for this server (credentials in the query: moto takes
    /// any; real deployments take them from the environment).
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1&allow_http=true&access_key_id=testing&secret_access_key=testing",
            self.bucket, self.port
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One `floe broker` or `floe controller` process of a test cluster.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    pub http_port: u16,
    /// The Kafka port of a broker.
    pub port: Option<u16>,
    child: Option<Child>,
    log: PathBuf,
    /// A command the process runs under (e.g. `setpriv` dropping
    /// capabilities), empty for none.
    wrapper: Vec<String>,
}

impl Proc {
    fn spawn(&mut self) -> Result<()> {
        self.spawn_nowait()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not start; log:\n{}", self.name, self.log_text())
    }

    /// Whether the process answers /healthz.
    pub fn healthy(&self) -> bool {
        http_get_within(self.http_port, "/healthz", Duration::from_millis(200)).is_ok()
    }

    /// Start the (stopped) process again without waiting for it to answer,
    /// as a supervisor restarting a pod in place does.
    pub fn start_nowait(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is still running", self.name);
        }
        self.spawn_nowait()
    }

    fn spawn_nowait(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(floe_bin());
                c
            }
            None => Command::new(floe_bin()),
        };
        let child = cmd
            .args(&self.args)
            .env(
                "FLOE_LOG",
                std::env::var("FLOE_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Tests may give a `[faults]` section (test-only knobs).
            .env("FLOE_FAULT_INJECTION", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", floe_bin().display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Send a signal (e.g. "-KILL", "-STOP", "-CONT"). "-STOP" returns only
    /// once every thread of the process is stopped: `kill` returns when the
    /// stop is queued, and on a busy machine the process's threads go on
    /// running (reading requests, writing chunks) until one of them is
    /// scheduled to carry the stop out, which a test that then sends to the
    /// "frozen" process must not race with.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let Some(pid) = self.pid() else {
            bail!("{} is not running", self.name)
        };
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill {sig} {} failed", self.name);
        }
        if sig == "-STOP" {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !all_threads_stopped(pid) {
                if Instant::now() > deadline {
                    bail!("{} (pid {pid}) did not stop within 10 s", self.name);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Signal and wait for the process to exit.
    pub fn stop_with(&mut self, sig: &str) -> Result<()> {
        self.signal(sig)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait()?.is_some() {
                    self.child = None;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not exit after {sig}", self.name)
    }

    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop_with("-TERM")?;
        }
        self.spawn()
    }

    pub fn http(&self, path: &str) -> Result<String> {
        http_get(self.http_port, path)
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in
/// /proc/<pid>/task/<tid>/stat; a thread in the middle of a system call
/// stops as it returns).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // a thread that just exited
        };
        // "tid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        match state {
            Some('T') | Some('t') => any = true,
            Some('Z') | Some('X') => {}
            _ => return false,
        }
    }
    any
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    /// A failing test prints the end of every process's log, so a failure
    /// seen only in CI can be read from its output. `FLOE_E2E_KEEP_LOGS`
    /// names a directory to copy the whole logs to.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let keep = std::env::var_os("FLOE_E2E_KEEP_LOGS").map(PathBuf::from);
        let procs = self
            .controllers
            .iter()
            .chain(&self.brokers)
            .chain(&self.proxies);
        for p in procs {
            let text = p.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("----- {} (last {} lines) -----", p.name, tail.len());
            for l in tail {
                eprintln!("{l}");
            }
            if let Some(dir) = &keep {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join(format!("{}.log", p.name)), &text);
            }
        }
    }
}

/// The admin API token every test cluster's controllers use.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// How many of each process a cluster starts with, and its storage.
struct Layout<'a> {
    brokers: usize,
    controllers: usize,
    lease_ttl_ms: u64,
    storage_urls: &'a [String],
    replicas: usize,
    write_quorum: usize,
    wrapper: &'a [&'a str],
}

/// Starts Kafka processes (brokers, proxies) of a [`Cluster`] apart from
/// its own lists, e.g. brokers whose ids are pod ordinals.
#[derive(Clone)]
pub struct BrokerSpawner {
    etcd: String,
    broker_toml: PathBuf,
    dir: PathBuf,
    wrapper: Vec<String>,
}

impl BrokerSpawner {
    /// Broker `id` on fresh ports, answering /healthz when this returns;
    /// its log is `broker-<id>-<run>.log` in the cluster's directory.
    pub fn spawn(&self, id: i32, run: u32) -> Result<Proc> {
        self.kafka_proc(
            "broker",
            format!("broker-{id}-{run}"),
            &["--id", &id.to_string()],
        )
    }

    fn kafka_proc(&self, role: &str, name: String, extra: &[&str]) -> Result<Proc> {
        let (http_port, port) = (free_port(), free_port());
        let mut args: Vec<String> = vec![role.into(), "--etcd".into(), self.etcd.clone()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend([
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--http-listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--config".into(),
            self.broker_toml.display().to_string(),
        ]);
        let mut p = Proc {
            args,
            log: self.dir.join(format!("{name}.log")),
            name,
            http_port,
            port: Some(port),
            child: None,
            wrapper: self.wrapper.clone(),
        };
        p.spawn()?;
        Ok(p)
    }
}

/// A cluster on a real etcd: controllers and brokers as real processes,
/// storage in a shared temporary directory. Everything is killed on drop,
/// also when a test fails.
pub struct Cluster {
    pub controllers: Vec<Proc>,
    pub brokers: Vec<Proc>,
    /// Proxies (`add_proxy`): the client endpoints.
    pub proxies: Vec<Proc>,
    /// Broker config (TOML) every broker starts with.
    broker_toml: PathBuf,
    /// The controllers' `--storage`/`--replicas`/`--write-quorum` flags.
    storage_args: Vec<String>,
    /// What every Floe process runs under (see [`Proc`]).
    wrapper: Vec<String>,
    /// The S3-compatible server of its default storage target (see
    /// [`DefaultStorage`]).
    _moto: Option<Moto>,
    // Dropped last: processes first, then storage, etcd, the files.
    pub etcd: Etcd,
    tmp: tempfile::TempDir,
}

impl Cluster {
    /// Start etcd, `controllers` controllers and `brokers` brokers (ids
    /// 1..=brokers) with a short lease TTL (`lease_ttl_ms`).
    pub fn start(brokers: usize, controllers: usize, lease_ttl_ms: u64) -> Result<Self> {
        Self::start_with(brokers, controllers, lease_ttl_ms, "")
    }

    /// [`Cluster::start`] with more `[broker]` settings (TOML lines).
    pub fn start_with(
        brokers: usize,
        controllers: usize,
        lease_ttl_ms: u64,
        extra_broker_toml: &str,
    ) -> Result<Self> {
        Self::start_with_pool(
            brokers,
            controllers,
            lease_ttl_ms,
            extra_broker_toml,
            &[],
            1,
            1,
        )
    }

    /// [`Cluster::start_with`] over a storage pool of `storage` URLs with R
    /// replicas and write quorum W (empty: one local directory, R = W = 1).
    pub fn start_with_pool(
        brokers: usize,
        controllers: usize,
        lease_ttl_ms: u64,
        extra_broker_toml: &str,
        storage_urls: &[String],
        replicas: usize,
        write_quorum: usize,
    ) -> Result<Self> {
        Self::start_wrapped(
            brokers,
            controllers,
            lease_ttl_ms,
            extra_broker_toml,
            storage_urls,
            replicas,
            write_quorum,
            &[],
        )
    }

    /// [`Cluster::start_with_pool`] with every Floe process started under
    /// `wrapper` (a command and its arguments, e.g. `setpriv ... --`).
    #[allow(clippy::too_many_arguments)]
    pub fn start_wrapped(
        brokers: usize,
        controllers: usize,
        lease_ttl_ms: u64,
        extra_broker_toml: &str,
        storage_urls: &[String],
        replicas: usize,
        write_quorum: usize,
        wrapper: &[&str],
    ) -> Result<Self> {
        let layout = Layout {
            brokers,
            controllers,
            lease_ttl_ms,
            storage_urls,
            replicas,
            write_quorum,
            wrapper,
        };
        Self::assemble(
            Etcd::start()?,
            tempfile::tempdir()?,
            layout,
            extra_broker_toml,
        )
    }

    /// A cluster with its internal traffic secured: every process holds a
    /// certificate of one cluster CA (`[internal_tls]`), so brokers take
    /// Kafka requests and tail subscriptions only over mutual TLS with
    /// it; etcd is served over TLS with client certificates and user
    /// authentication (see [`Etcd::start_secure`]); controllers take moves
    /// only with the admin token. The PKI is in [`Cluster::pki`].
    pub fn start_secure(
        brokers: usize,
        controllers: usize,
        lease_ttl_ms: u64,
        extra_broker_toml: &str,
    ) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let pki = tmp.path().join("pki");
        std::fs::create_dir_all(&pki)?;
        TestPki::generate(&pki)?;
        let (cert, key) = TestPki::generate_peer_from(&pki, "floe-internal")?;
        let etcd = Etcd::start_secure(&pki)?;
        let toml = format!(
            "{extra_broker_toml}\n[internal_tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n{}",
            pki.join("ca.pem").display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            etcd.config_toml(),
        );
        let layout = Layout {
            brokers,
            controllers,
            lease_ttl_ms,
            storage_urls: &[],
            replicas: 1,
            write_quorum: 1,
            wrapper: &[],
        };
        Self::assemble(etcd, tmp, layout, &toml)
    }

    /// Where [`Cluster::start_secure`] made its certificates (`ca.pem`,
    /// `ca.key`, `floe-internal.pem`/`.key`, ...).
    pub fn pki(&self) -> PathBuf {
        self.tmp.path().join("pki")
    }

    fn assemble(
        etcd: Etcd,
        tmp: tempfile::TempDir,
        layout: Layout<'_>,
        extra_broker_toml: &str,
    ) -> Result<Self> {
        let Layout {
            brokers,
            controllers,
            lease_ttl_ms,
            storage_urls,
            replicas,
            write_quorum,
            wrapper,
        } = layout;
        let storage = tmp.path().join("objects");
        std::fs::create_dir_all(&storage)?;
        let mut storage_args = Vec::new();
        let mut moto = None;
        let urls: Vec<String> = if !storage_urls.is_empty() {
            storage_urls.to_vec()
        } else if cluster_storage() == DefaultStorage::S3 {
            let m = Moto::start("floe-e2e")?;
            let url = m.url("objects");
            moto = Some(m);
            vec![url]
        } else {
            vec![format!("file://{}", storage.display())]
        };
        for u in urls {
            storage_args.push("--storage".to_string());
            storage_args.push(u);
        }
        storage_args.extend([
            "--replicas".to_string(),
            replicas.to_string(),
            "--write-quorum".to_string(),
            write_quorum.to_string(),
        ]);
        let broker_toml = tmp.path().join("broker.toml");
        let mut toml = format!(
            "[broker]\nlease_ttl_ms = {lease_ttl_ms}\nretention_check_interval_ms = 1000\n{extra_broker_toml}"
        );
        if moto.is_some() {
            toml = with_test_wal_linger(&toml);
        }
        std::fs::write(&broker_toml, toml)?;
        let mut c = Self {
            controllers: Vec::new(),
            brokers: Vec::new(),
            proxies: Vec::new(),
            broker_toml,
            storage_args,
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
            _moto: moto,
            etcd,
            tmp,
        };
        for i in 0..controllers {
            c.add_controller(i, lease_ttl_ms)?;
        }
        for _ in 0..brokers {
            c.add_broker()?;
        }
        Ok(c)
    }

    fn add_controller(&mut self, i: usize, lease_ttl_ms: u64) -> Result<()> {
        let http_port = free_port();
        let admin_port = free_port();
        let name = format!("controller-{i}");
        let token_file = self.tmp.path().join("admin.token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;
        let mut p = Proc {
            args: vec![
                "controller".into(),
                "--etcd".into(),
                self.etcd.url(),
                "--id".into(),
                name.clone(),
                "--http-listen".into(),
                format!("127.0.0.1:{http_port}"),
                "--lease-ttl-ms".into(),
                lease_ttl_ms.to_string(),
                "--admin-listen".into(),
                format!("127.0.0.1:{admin_port}"),
                "--admin-token-file".into(),
                token_file.display().to_string(),
                "--config".into(),
                self.broker_toml.display().to_string(),
            ],
            log: self.tmp.path().join(format!("{name}.log")),
            name,
            http_port,
            port: None,
            child: None,
            wrapper: self.wrapper.clone(),
        };
        p.args.extend(self.storage_args.iter().cloned());
        p.spawn()?;
        self.controllers.push(p);
        Ok(())
    }

    /// Start one more broker (id = its index + 1); returns its index.
    pub fn add_broker(&mut self) -> Result<usize> {
        let id = self.brokers.len() + 1;
        let p = self.kafka_proc("broker", format!("broker-{id}"), &["--id", &id.to_string()])?;
        self.brokers.push(p);
        Ok(id - 1)
    }

    /// Start a broker or proxy process (`role`) on fresh Kafka and HTTP
    /// ports with the cluster's etcd and config, plus `extra` flags.
    fn kafka_proc(&self, role: &str, name: String, extra: &[&str]) -> Result<Proc> {
        self.broker_spawner().kafka_proc(role, name, extra)
    }

    /// What starts brokers of this cluster under ids of the caller's
    /// choosing (the pods of a kubelet twin).
    pub fn broker_spawner(&self) -> BrokerSpawner {
        BrokerSpawner {
            etcd: self.etcd.url(),
            broker_toml: self.broker_toml.clone(),
            dir: self.tmp.path().to_path_buf(),
            wrapper: self.wrapper.clone(),
        }
    }

    /// Restart every controller with `extra` flags added (e.g.
    /// `--balance-on-join false`).
    pub fn restart_controllers_with(&mut self, extra: &[&str]) -> Result<()> {
        for c in &mut self.controllers {
            c.stop_with("-TERM")?;
            c.args.extend(extra.iter().map(|a| a.to_string()));
            c.restart()?;
        }
        Ok(())
    }

    /// Wait until broker `id`'s registration is gone from etcd (its lease
    /// lapsed after a kill), so that it can start again under its id.
    pub async fn wait_broker_gone(&self, id: i32, timeout: Duration) -> Result<()> {
        use floe_meta::MetadataStore;
        let meta = self.meta().await?;
        let deadline = Instant::now() + timeout;
        while meta.get(&floe_meta::keys::broker(id)).await?.is_some() {
            if Instant::now() > deadline {
                bail!("broker {id} is still registered after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The admin API URL of controller `i` (floectl's --controller).
    pub fn admin_url(&self, i: usize) -> String {
        let args = &self.controllers[i].args;
        let at = args.iter().position(|a| a == "--admin-listen").unwrap();
        let scheme = if args.iter().any(|a| a == "--admin-tls-cert") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", args[at + 1])
    }

    /// The cluster's scratch directory (logs, token, configs).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Run floectl against controller `i` (unless `args` name another
    /// `--controller`) with the cluster's token plus `args`: (exit code, stdout, stderr).
    pub fn floectl(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(floectl_bin());
        if !args.contains(&"--controller") {
            cmd.arg("--controller").arg(self.admin_url(i));
        }
        let out = cmd
            .args(args)
            .env("FLOE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("FLOE_ADMIN_TOKEN_FILE")
            .output()
            .expect("running floectl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Start one more proxy; returns its index.
    pub fn add_proxy(&mut self) -> Result<usize> {
        let i = self.proxies.len();
        let p = self.kafka_proc("proxy", format!("proxy-{i}"), &[])?;
        self.proxies.push(p);
        Ok(i)
    }

    /// Every proxy's Kafka address, comma-separated: what clients bootstrap
    /// with when they go through the proxy tier.
    pub fn proxy_bootstrap(&self) -> String {
        self.proxies
            .iter()
            .filter_map(|b| b.port)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every broker's Kafka address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .filter_map(|b| b.port)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Kafka addresses of every broker but the one at `index`.
    pub fn bootstrap_except(&self, index: usize) -> String {
        self.brokers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .filter_map(|(_, b)| b.port)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the controller that leads now, if one does.
    pub fn leading_controller(&self) -> Option<usize> {
        self.controllers
            .iter()
            .position(|c| c.http("/v1/leader").is_ok())
    }

    /// Wait (up to `timeout`) until a controller leads.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leading_controller() {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                bail!("no controller leads after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ask the leading controller to move a partition; returns the new epoch.
    /// (The controller answers 409 when the assignment changed under the
    /// move, e.g. while it reassigns after a restart; that is retried.)
    pub fn move_partition(&self, topic: &str, partition: i32, broker: i32) -> Result<i32> {
        let mut attempt = 0;
        loop {
            let leader = self.wait_leader(Duration::from_secs(30))?;
            match http_post_with(
                self.controllers[leader].http_port,
                &format!("/v1/move?topic={topic}&partition={partition}&broker={broker}"),
                Some(ADMIN_TOKEN),
            ) {
                Ok(body) => return Ok(body.trim().parse()?),
                Err(e) if attempt < 5 && e.to_string().contains(" 409 ") => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A client of the cluster's etcd (through Floe's own metadata layer).
    pub async fn meta(&self) -> Result<floe_meta::EtcdStore> {
        self.etcd.meta().await
    }

    /// The state a partition's owner publishes in etcd, if it has one.
    pub async fn partition_state(
        meta: &dyn floe_meta::MetadataStore,
        topic: &str,
        partition: i32,
    ) -> Result<Option<floe_meta::schema::PartitionStateRecord>> {
        use prost::Message;
        let Some(t) = meta.get(&floe_meta::keys::topic(topic)).await? else {
            bail!("no topic {topic}");
        };
        let t = floe_meta::schema::TopicRecord::decode(t.value)?;
        let id = floe_common::PartitionId::new(floe_common::Uuid::from_slice(&t.id)?, partition);
        match meta.get(&floe_meta::keys::partition_state(id)).await? {
            Some(kv) => Ok(Some(floe_meta::schema::PartitionStateRecord::decode(
                kv.value,
            )?)),
            None => Ok(None),
        }
    }

    /// Log of every process, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self
            .controllers
            .iter()
            .chain(&self.brokers)
            .chain(&self.proxies)
        {
            out += &format!("===== {}\n{}\n", p.name, p.log_text());
        }
        out
    }
}

pub fn http_post(port: u16, path: &str) -> Result<String> {
    http_post_with(port, path, None)
}

/// [`http_post`] with `Authorization: Bearer <token>`.
pub fn http_post_with(port: u16, path: &str, token: Option<&str>) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("POST {path}: {head}: {body}");
    }
    Ok(body.to_string())
}

pub fn http_get(port: u16, path: &str) -> Result<String> {
    http_get_within(port, path, Duration::from_secs(5))
}

/// [`http_get`] that gives up after `timeout` without an answer (a process
/// whose listener is bound but which does not serve yet).
pub fn http_get_within(port: u16, path: &str, timeout: Duration) -> Result<String> {
    http_get_from("127.0.0.1", port, path, timeout)
}

/// GET `path` from `host:port` (an IPv4 address); the body of a 200 answer.
pub fn http_get_from(host: &str, port: u16, path: &str, timeout: Duration) -> Result<String> {
    let ip: std::net::Ipv4Addr = host.parse().with_context(|| format!("address {host:?}"))?;
    let mut s = TcpStream::connect_timeout(&std::net::SocketAddr::from((ip, port)), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// Files under `dir` whose name ends with `suffix`.
/// The text of every `<tag>...</tag>` in `xml`, in order.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_string());
        rest = &rest[j + close.len()..];
    }
    out
}

/// `s` with everything but unreserved URL characters percent-encoded.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

/// A raw Kafka protocol connection.
pub struct RawClient {
    pub stream: TcpStream,
    correlation: i32,
}

impl RawClient {
    pub fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(Self {
            stream,
            correlation: 0,
        })
    }

    /// Connect to a SASL_PLAINTEXT listener and log in with PLAIN.
    pub fn connect_sasl_plain(addr: &str, user: &str, password: &str) -> Result<Self> {
        use kafka_protocol::messages::{
            SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
            SaslHandshakeResponse,
        };
        let mut c = Self::connect(addr)?;
        let h: SaslHandshakeResponse = c.call(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        )?;
        if h.error_code != 0 {
            bail!("SaslHandshake: error {}", h.error_code);
        }
        let a: SaslAuthenticateResponse = c.call(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from(format!("\0{user}\0{password}"))),
        )?;
        if a.error_code != 0 {
            bail!(
                "SaslAuthenticate: error {} {:?}",
                a.error_code,
                a.error_message
            );
        }
        Ok(c)
    }

    /// Send raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// True if the server closed the connection (EOF or reset) within 5 s.
    pub fn closed_by_server(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        matches!(self.stream.read(&mut buf), Ok(0) | Err(_))
            && !matches!(self.stream.read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Encode and send a request; return the response body bytes.
    pub fn request<R: Encodable>(&mut self, api: ApiKey, version: i16, body: &R) -> Result<Bytes> {
        let mut b = BytesMut::new();
        body.encode(&mut b, version)?;
        self.request_bytes(api, version, &b)
    }

    /// Send a request whose body is already encoded (a version the codec
    /// does not write); return the response body bytes.
    pub fn request_bytes(&mut self, api: ApiKey, version: i16, body: &[u8]) -> Result<Bytes> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("floe-e2e")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, api.request_header_version(version))?;
        buf.put_slice(body);
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut resp)?;
        let mut resp = Bytes::from(resp);
        let h = ResponseHeader::decode(&mut resp, api.response_header_version(version))?;
        if h.correlation_id != self.correlation {
            bail!(
                "correlation id {} != {}",
                h.correlation_id,
                self.correlation
            );
        }
        Ok(resp)
    }

    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
    ) -> Result<Resp> {
        let mut b = self.request(api, version, body)?;
        let r = Resp::decode(&mut b, version)?;
        if b.has_remaining() {
            bail!("{} trailing bytes in response", b.remaining());
        }
        Ok(r)
    }
}

/// Create a topic with configs through the Kafka admin API.
pub async fn create_topic_with(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = admin
        .create_topics(
            &[t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok(), "creating topic {name}: {r:?}");
}

/// Create a topic through the Kafka admin API (librdkafka) and assert it
/// was created.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with(bootstrap, name, partitions, &[]).await
}

/// Everything in the topic, per partition: (offset, payload).
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> std::collections::HashMap<i32, Vec<(i64, Vec<u8>)>> {
    read_all_within(bootstrap, topic, partitions, Duration::from_secs(60))
}

/// [`read_all`], giving up after `timeout`.
pub fn read_all_within(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> std::collections::HashMap<i32, Vec<(i64, Vec<u8>)>> {
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut total = 0;
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
        let (_, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        total += hi;
    }
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    c.assign(&tpl).unwrap();
    let mut got: std::collections::HashMap<i32, Vec<(i64, Vec<u8>)>> =
        std::collections::HashMap::new();
    let deadline = Instant::now() + timeout;
    while (got.values().map(Vec::len).sum::<usize>() as i64) < total && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            // Transport errors from a dead bootstrap broker are transient.
            let Ok(m) = m else { continue };
            got.entry(m.partition())
                .or_default()
                .push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    got
}

/// The partition of `__consumer_offsets` (16 partitions) that holds
/// `group`: Java's `String.hashCode` of the name, as Kafka and Floe place
/// groups.
pub fn offsets_partition(group: &str) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    (if h == i32::MIN { 0 } else { h.abs() }) % 16
}

/// The broker id FindCoordinator names for `group`, asked of the first
/// address in `bootstrap` (retried for 30 s while there is none).
pub fn find_coordinator(bootstrap: &str, group: &str) -> i32 {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let addr = bootstrap.split(',').next().unwrap();
        let mut raw = RawClient::connect(addr).unwrap();
        let req = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![StrBytes::from_string(group.to_string())]);
        let resp: FindCoordinatorResponse = raw.call(ApiKey::FindCoordinator, 4, &req).unwrap();
        let c = &resp.coordinators[0];
        if c.error_code == 0 {
            return c.node_id.0;
        }
        assert!(Instant::now() < deadline, "no coordinator: {c:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Partition → leader broker, as Metadata tells a client (None: no leader).
pub fn leaders(bootstrap: &str, topic: &str) -> std::collections::BTreeMap<i32, Option<i32>> {
    use rdkafka::consumer::Consumer;
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| (p.id(), (p.leader() >= 0).then_some(p.leader())))
        .collect()
}

/// A throwaway PKI made with the openssl CLI: a CA, a server certificate
/// for 127.0.0.1 and a client certificate, all signed by the CA (PEM files).
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Run the openssl CLI in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt package openssl)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A key and a certificate `{name}.key`/`{name}.pem` for subject `CN=cn`,
/// signed by `ca.pem`/`ca.key` in `dir`, with the extensions `ext`.
fn issue(dir: &Path, name: &str, cn: &str, ext: &str) -> Result<(PathBuf, PathBuf)> {
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(
        dir.join(&extfile),
        format!("basicConstraints=CA:FALSE\n{ext}"),
    )?;
    openssl(
        dir,
        &[
            &["req"][..],
            &EC,
            &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &extfile,
        ],
    )?;
    Ok((dir.join(pem), dir.join(key)))
}

const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";

impl TestPki {
    pub fn generate(dir: &Path) -> Result<Self> {
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &EC,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=floe-e2e-ca",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        )?;
        let (server_cert, server_key) = issue(dir, "server", "floe-e2e-server", SERVER_EXT)?;
        let (client_cert, client_key) = issue(
            dir,
            "client",
            "floe-e2e-client",
            "extendedKeyUsage=clientAuth\n",
        )?;
        Ok(TestPki {
            ca: dir.join("ca.pem"),
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// Another server certificate for 127.0.0.1 with subject `CN=cn`, signed
    /// by the CA [`TestPki::generate`] made in `dir`: (cert, key).
    pub fn generate_server_from(dir: &Path, cn: &str) -> Result<(PathBuf, PathBuf)> {
        issue(dir, cn, cn, SERVER_EXT)
    }

    /// A certificate for both ends of a TLS connection (server and client
    /// use; 127.0.0.1) with subject `CN=cn`, signed by the CA in `dir`:
    /// what one cluster process presents.
    pub fn generate_peer_from(dir: &Path, cn: &str) -> Result<(PathBuf, PathBuf)> {
        issue(
            dir,
            cn,
            cn,
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
    }

    /// A client certificate with subject `CN=cn` signed by the CA in `dir`.
    pub fn generate_client_from(dir: &Path, cn: &str) -> Result<(PathBuf, PathBuf)> {
        issue(dir, cn, cn, "extendedKeyUsage=clientAuth\n")
    }
}

/// An idempotent acks=all librdkafka producer at `bootstrap` (linger 5 ms,
/// two minutes to deliver), as the load of the failure tests uses.
pub fn idempotent_producer(bootstrap: &str) -> rdkafka::producer::FutureProducer {
    idempotent_producer_config(bootstrap).create().unwrap()
}

/// The configuration of [`idempotent_producer`], to add to.
pub fn idempotent_producer_config(bootstrap: &str) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000");
    c
}
