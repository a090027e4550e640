//! Test harness for end-to-end tests: starts real `floe` processes on free
//! loopback ports with their own data directories, kills them with real
//! signals, and speaks raw Kafka protocol for the tests that need to send
//! what no well-behaved client would.

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `floe standalone` process.
pub struct Standalone {
    pub data_dir: PathBuf,
    pub port: u16,
    pub http_port: u16,
    config: Option<PathBuf>,
    child: Option<Child>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Standalone {
    /// Start with the default config.
    pub fn start() -> Result<Self> {
        Self::start_with_config("")
    }

    /// Start with `toml` as its config file (e.g. "[broker]\nmax_connections = 2").
    pub fn start_with_config(toml: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
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
            child: None,
            log: tmp.path().join("floe.log"),
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
            .env("FLOE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
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
    pub client_port: u16,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let client_port = free_port();
        let peer_port = free_port();
        let log = tmp.path().join("etcd.log");
        let out = std::fs::File::create(&log)?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name")
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
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning etcd (apt-get install etcd-server)")?;
        let mut e = Self {
            client_port,
            child: Some(child),
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get(client_port, "/health")
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
        format!("http://127.0.0.1:{}", self.client_port)
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

pub fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
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
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("floe-e2e")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, api.request_header_version(version))?;
        body.encode(&mut buf, version)?;
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
