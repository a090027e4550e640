//! The deployment artefacts under deploy/: the Helm chart rendered, linted
//! and validated through Helm's Go SDK (deploy/test/chart.py), the chart's
//! rendered containers run as real processes, one network namespace per
//! pod, serving a librdkafka client, and the Terraform module's own tests.
//!
//! No Kubernetes API server runs here: the test plays the kubelet's part
//! for what Floe's containers see (their args, their environment with the
//! downward API's pod IP, name and pod-index label, their mounted config
//! files, their own network stack), and says so in each step.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floe_e2e::{floe_bin, floectl_bin, http_get_from, read_all, Etcd};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python with helm-python-sdk, kubernetes-validate and PyYAML
/// (scripts/test.sh makes target/deploy-venv).
fn deploy_python() -> PathBuf {
    std::env::var("FLOE_DEPLOY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/deploy-venv/bin/python"))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_chart_renders_lints_and_validates() {
    let (ok, out, err) = run(Command::new(deploy_python())
        .arg(repo().join("deploy/test/chart.py"))
        .arg("check"));
    assert!(ok, "chart check failed:\n{out}\n{err}");
    for set in [
        "minimal-external-etcd",
        "bundled-etcd",
        "multi-zone-irsa",
        "operator",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("ok {set}: lint, golden,"))
                    && l.contains("valid for Kubernetes 1.30.0 and 1.34.0")),
            "value set {set} not checked:\n{out}"
        );
    }
    let bad = out
        .lines()
        .filter(|l| l.starts_with("ok bad values"))
        .count();
    assert_eq!(
        bad, 10,
        "every bad value set fails with its message:\n{out}"
    );
    // The operator's CRD and the objects it renders (its golden files) are
    // valid Kubernetes objects too, and the chart's FloeCluster fits the CRD.
    for file in [
        "deploy/helm/floe/crds/floeclusters.floe.dev.yaml",
        "operator/tests/golden/default.yaml",
        "operator/tests/golden/tuned.yaml",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("ok {file}: "))
                && l.contains("valid for Kubernetes 1.30.0 and 1.34.0")),
            "{file} not validated:\n{out}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok operator: ") && l.contains("FloeCluster")),
        "{out}"
    );
    assert!(out.contains("ok NOTES.txt"), "{out}");
}

#[test]
fn terraform_formats_and_its_values_module_passes_its_tests() {
    let tf = |dir: &Path, args: &[&str]| {
        run(Command::new("terraform")
            .current_dir(dir)
            .args(args)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .env("CHECKPOINT_DISABLE", "1"))
    };
    let (ok, out, err) = tf(
        &repo(),
        &["fmt", "-check", "-recursive", "deploy/terraform"],
    );
    assert!(ok, "terraform fmt -check: {out}{err}");
    let module = repo().join("deploy/terraform/modules/floe-values");
    let (ok, out, err) = tf(&module, &["init", "-input=false", "-no-color"]);
    assert!(ok, "terraform init: {out}{err}");
    let (ok, out, err) = tf(&module, &["test", "-no-color"]);
    assert!(ok, "terraform test: {out}{err}");
    assert!(out.contains("4 passed, 0 failed"), "{out}");
}

/// Network namespaces on one bridge: one "host" per pod, as a cluster
/// gives each pod its own IP and ports. Removed on drop.
struct Hosts {
    id: u32,
    subnet: String,
    made: Vec<String>,
}

impl Hosts {
    fn new() -> Hosts {
        // A bridge nobody else has: tests run in parallel processes, each
        // takes the first free id from its own starting point.
        let start = std::process::id() % 200;
        let id = (0..200)
            .map(|k| (start + k) % 200 + 20)
            .find(|id| {
                Command::new("ip")
                    .args([
                        "link",
                        "add",
                        "name",
                        &format!("flbr{id}"),
                        "type",
                        "bridge",
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("a free bridge name");
        let h = Hosts {
            id,
            subnet: format!("10.213.{id}"),
            made: Vec::new(),
        };
        let bridge = h.bridge();
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", h.gateway()),
            "dev",
            &bridge,
        ]);
        sh(&["ip", "link", "set", &bridge, "up"]);
        h
    }

    fn bridge(&self) -> String {
        format!("flbr{}", self.id)
    }

    /// This machine's address on the bridge.
    fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A new namespace with its address: (name, IP).
    fn add(&mut self) -> (String, String) {
        let n = self.made.len();
        let ns = format!("fl{}h{n}", self.id);
        let ip = format!("{}.{}", self.subnet, 10 + n);
        let (outer, inner) = (format!("fl{}v{n}", self.id), format!("fl{}p{n}", self.id));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["ip", "netns", "add", &ns]);
        self.made.push(ns.clone());
        sh(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        sh(&["ip", "link", "set", &inner, "netns", &ns]);
        sh(&["ip", "link", "set", &outer, "master", &self.bridge(), "up"]);
        let exec = |args: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", &ns];
            a.extend_from_slice(args);
            sh(&a);
        };
        exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
        exec(&["ip", "link", "set", &inner, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        (ns, ip)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.made {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

fn sh(args: &[&str]) {
    let (ok, out, err) = run(Command::new(args[0]).args(&args[1..]));
    assert!(ok, "{args:?}: {out}{err}");
}

/// A rendered container running as a process in its own namespace.
struct Pod {
    name: String,
    ip: String,
    http_port: u16,
    child: Child,
    log: PathBuf,
}

impl Drop for Pod {
    fn drop(&mut self) {
        // By PID: `ip netns exec` execs the process itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The container's environment as the kubelet gives it: `value`s with
/// `$(VAR)` expanded from the variables before them, and the downward API
/// fields Floe's chart uses. Paths under a mounted volume point into
/// `root` (the test cannot mount over this machine's /etc).
fn environment(
    container: &Value,
    pod: &str,
    ip: &str,
    ordinal: Option<usize>,
    mounts: &[(String, PathBuf)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_string();
            for (k, x) in &env {
                v = v.replace(&format!("$({k})"), x);
            }
            v
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match f {
                "status.podIP" => ip.to_string(),
                "metadata.name" => pod.to_string(),
                "metadata.labels['apps.kubernetes.io/pod-index']" => ordinal
                    .unwrap_or_else(|| {
                        panic!("{pod}: pod-index label on a pod no StatefulSet made")
                    })
                    .to_string(),
                other => panic!("{pod}: field {other} is not given by this test"),
            }
        } else {
            panic!("{pod}: env {e} is not given by this test");
        };
        env.push((name, relocate(&value, mounts)));
    }
    assert!(
        container["envFrom"].as_array().is_none_or(|a| a.is_empty()),
        "{pod}: envFrom is not given by this test"
    );
    env
}

fn relocate(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, local) in mounts {
        if let Some(rest) = value.strip_prefix(path.as_str()) {
            return format!("{}{rest}", local.display());
        }
    }
    value.to_string()
}

fn container_port(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {}", container["ports"]))["containerPort"]
        .as_u64()
        .unwrap() as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_processes_run_in_their_own_hosts_and_serve_a_kafka_client() {
    let mut hosts = Hosts::new();
    let etcd = Etcd::start_on(&hosts.gateway()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("objects");
    let token = "deploy-test-token";
    let values = format!(
        "etcd:\n  endpoints: [\"{etcd}\"]\n\
         storage:\n  targets:\n\
         \x20   - url: file://{d}/t0\n      zone: zone-a\n\
         \x20   - url: file://{d}/t1\n      zone: zone-b\n\
         \x20   - url: file://{d}/t2\n      zone: zone-c\n\
         \x20 replicas: 3\n  writeQuorum: 2\n\
         admin:\n  token: {token}\n  console: true\n\
         controller:\n  replicas: 2\n\
         broker:\n  replicas: 3\n  config:\n    lease_ttl_ms: 6000\n\
         proxy:\n  replicas: 2\n  config:\n    lease_ttl_ms: 3000\n",
        etcd = etcd.url(),
        d = data.display(),
    );
    for t in ["t0", "t1", "t2"] {
        std::fs::create_dir_all(data.join(t)).unwrap();
    }
    let values_file = tmp.path().join("values.yaml");
    std::fs::write(&values_file, &values).unwrap();
    let (ok, out, err) = run(Command::new(deploy_python())
        .arg(repo().join("deploy/test/chart.py"))
        .arg("pods")
        .arg(&values_file));
    assert!(ok, "rendering {values}: {err}");
    let rendered: Value = serde_json::from_str(&out).unwrap();

    // Every Floe workload, replicas times, each in a namespace of its own.
    let mut pods: Vec<(String, Pod)> = Vec::new();
    for w in rendered["workloads"].as_array().unwrap() {
        let (kind, name) = (w["kind"].as_str().unwrap(), w["name"].as_str().unwrap());
        assert!(
            w["command"].is_null(),
            "{name}: a Floe container runs the image's entrypoint"
        );
        assert!(w["image"].as_str().unwrap().contains("floe"), "{name}");
        let component = w["component"].as_str().unwrap().to_string();
        for ordinal in 0..w["replicas"].as_u64().unwrap() as usize {
            let pod = format!("{name}-{ordinal}");
            let (ns, ip) = hosts.add();
            let root = tmp.path().join(&pod);
            let mut mounts = Vec::new();
            for (path, text) in w["files"].as_object().unwrap() {
                let local = root.join(path.trim_start_matches('/'));
                std::fs::create_dir_all(local.parent().unwrap()).unwrap();
                std::fs::write(&local, text.as_str().unwrap()).unwrap();
                let dir = Path::new(path)
                    .parent()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                mounts.push((dir.clone(), root.join(dir.trim_start_matches('/'))));
            }
            mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            let sts = (kind == "StatefulSet").then_some(ordinal);
            let env = environment(w, &pod, &ip, sts, &mounts);
            let args: Vec<String> = w["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| relocate(a.as_str().unwrap(), &mounts))
                .collect();
            let log = tmp.path().join(format!("{pod}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(floe_bin())
                .args(&args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            pods.push((
                component.clone(),
                Pod {
                    name: pod,
                    ip,
                    http_port: container_port(w, "http"),
                    child,
                    log,
                },
            ));
        }
    }
    let count = |c: &str| pods.iter().filter(|(k, _)| k == c).count();
    assert_eq!(
        (count("controller"), count("broker"), count("proxy")),
        (2, 3, 2),
        "the workloads the values ask for"
    );

    // Ready as their readiness probes see them (GET /readyz on the port
    // named http), or their logs say why not.
    let deadline = Instant::now() + Duration::from_secs(90);
    for (_, p) in pods.iter_mut() {
        loop {
            if http_get_from(&p.ip, p.http_port, "/readyz", Duration::from_secs(2)).is_ok() {
                break;
            }
            let exited = p.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "{} not ready ({exited:?}); its log:\n{}",
                    p.name,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // A client reaches the proxies' Service: its port's target is the
    // proxies' `kafka` container port, at a proxy pod's address.
    let service = rendered["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["selector"]["app.kubernetes.io/component"] == "proxy")
        .expect("the proxies' Service");
    let port = service["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kafka")
        .unwrap();
    assert_eq!(port["targetPort"], "kafka");
    let proxies: Vec<&Pod> = pods
        .iter()
        .filter(|(c, _)| c == "proxy")
        .map(|(_, p)| p)
        .collect();
    let bootstrap = proxies
        .iter()
        .map(|p| format!("{}:{}", p.ip, port["port"]))
        .collect::<Vec<_>>()
        .join(",");
    floe_e2e::create_topic(&bootstrap, "deployed", 6).await;
    let producer: FutureProducer = floe_e2e::idempotent_producer_config(&bootstrap)
        .create()
        .unwrap();
    let n = 600;
    let mut acks = Vec::new();
    for i in 0..n {
        let v = format!("record-{i}");
        acks.push(
            producer
                .send_result(
                    FutureRecord::<(), _>::to("deployed")
                        .partition(i % 6)
                        .payload(&v),
                )
                .map_err(|(e, _)| e),
        );
    }
    for a in acks {
        a.unwrap().await.unwrap().expect("acked");
    }
    let log = read_all(&bootstrap, "deployed", 6);
    let mut got: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (p, records) in &log {
        for (_, v) in records {
            got.entry(*p)
                .or_default()
                .push(String::from_utf8(v.clone()).unwrap());
        }
    }
    for p in 0..6 {
        let want: Vec<String> = (0..n)
            .filter(|i| i % 6 == p)
            .map(|i| format!("record-{i}"))
            .collect();
        assert_eq!(got.get(&p), Some(&want), "partition {p}");
    }

    // floectl through the controllers' admin port, with the chart's token:
    // three brokers, and the pool seeded with the targets' zones.
    let controller = &pods.iter().find(|(c, _)| c == "controller").unwrap().1;
    let admin = format!("http://{}:9647", controller.ip);
    let floectl = |args: &[&str]| {
        run(Command::new(floectl_bin())
            .args(["--controller", &admin, "--token", token, "-o", "json"])
            .args(args))
    };
    let (ok, out, err) = floectl(&["status"]);
    assert!(ok, "floectl status: {err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["brokers"].as_array().map(Vec::len), Some(3), "{out}");
    let (ok, out, err) = floectl(&["storage", "list"]);
    assert!(ok, "floectl storage list: {err}");
    let pool: Value = serde_json::from_str(&out).unwrap();
    let zones: Vec<&str> = pool["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["zone"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(zones, ["zone-a", "zone-b", "zone-c"], "{out}");
    assert_eq!(pool["replicas"], 3, "{out}");
    // admin.console: the web console's login page on the same port.
    let login = http_get_from(
        &controller.ip,
        9647,
        "/console/login",
        Duration::from_secs(10),
    )
    .expect("the console's login page");
    assert!(login.contains("Floe console"), "{login}");
    assert!(login.contains("name=\"token\""), "{login}");
    drop(pods);
    drop(etcd);
}

/// A minimal Debian root filesystem with what the runtime base provides
/// (glibc, libgcc, CA certificates; no shell), built from Debian's packages
/// with mmdebstrap (no image registry is reachable here), cached in target/.
fn runtime_rootfs() -> PathBuf {
    let cache = repo().join("target/deploy-rootfs");
    let done = cache.join(".complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&cache);
        let (ok, out, err) = run(Command::new("mmdebstrap")
            .args([
                "--variant=extract",
                "--include=libc6,libgcc-s1,ca-certificates",
                "--quiet",
                "bookworm",
            ])
            .arg(&cache));
        assert!(ok, "mmdebstrap: {out}{err}");
        std::fs::write(&done, "").unwrap();
    }
    cache
}

fn podman(args: &[&str]) -> String {
    let (ok, out, err) = run(Command::new("podman").args(args));
    assert!(ok, "podman {args:?}: {out}{err}");
    out.trim().to_string()
}

/// Images and containers this test made, removed on drop.
#[derive(Default)]
struct Podman {
    images: Vec<String>,
    containers: Vec<String>,
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("podman").args(["umount", c]).output();
            let _ = Command::new("podman").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("podman").args(["rmi", "-f", i]).output();
        }
        // The build's intermediate stages (untagged).
        let _ = Command::new("podman")
            .args(["image", "prune", "-f"])
            .output();
    }
}

/// The image built from deploy/docker/Dockerfile by podman (BINARIES=
/// prebuilt, on a runtime base made from Debian's packages), checked as
/// built (user, entrypoint, labels, no shell), then `floe standalone` run
/// from its filesystem as its user with its environment, serving kcat.
///
/// `podman run` cannot start containers on this machine: crun's
/// setrlimit(RLIMIT_NPROC) is refused (EPERM; the sandbox withholds
/// CAP_SYS_RESOURCE), whatever --ulimit says. So the container's own
/// filesystem (`podman mount`) is run under chroot in a network namespace
/// of its own instead, which is what the runtime would do minus cgroups and
/// seccomp (docs/deploy.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_floe_standalone_in_it_serves_kcat() {
    let dockerfile = repo().join("deploy/docker/Dockerfile");
    let hadolint = deploy_python().parent().unwrap().join("hadolint");
    let (ok, out, err) = run(Command::new(&hadolint).arg(&dockerfile));
    assert!(ok, "hadolint: {out}{err}");

    let mut made = Podman::default();
    let tag = format!("e2e-{}", std::process::id());
    let base = format!("localhost/floe-runtime-base:{tag}");
    let image = format!("localhost/floe:{tag}");
    let rootfs = runtime_rootfs();
    for shell in ["bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash"] {
        assert!(!rootfs.join(shell).exists(), "{shell} in the runtime base");
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, out, err) = run(Command::new("podman")
        .args(["import", "-", &base])
        .stdin(tar.stdout.take().unwrap()));
    assert!(tar.wait().unwrap().success(), "tar of the runtime base");
    assert!(ok, "podman import: {out}{err}");
    made.images.push(base.clone());
    // The BINARIES=prebuilt stage takes target/image/{floe,floectl,floe-operator}.
    let staged = repo().join("target/image");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::copy(floe_bin(), staged.join("floe")).unwrap();
    std::fs::copy(floectl_bin(), staged.join("floectl")).unwrap();
    std::fs::copy(
        floe_bin().with_file_name("floe-operator"),
        staged.join("floe-operator"),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new("podman")
        .current_dir(repo())
        .args(["build", "--quiet", "-f", "deploy/docker/Dockerfile"])
        .args(["--build-arg", "BINARIES=prebuilt"])
        .args(["--build-arg", &format!("RUNTIME_IMAGE={base}")])
        .args(["-t", &image, "."]));
    assert!(ok, "podman build: {out}{err}");
    made.images.push(image.clone());

    let config: Value = serde_json::from_str(&podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &image,
    ]))
    .unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let entrypoint = strings(&config["Entrypoint"]);
    let cmd = strings(&config["Cmd"]);
    assert_eq!(entrypoint, ["/usr/local/bin/floe"]);
    assert_eq!(cmd, ["standalone"]);
    let user = config["User"].as_str().unwrap().to_string();
    let (uid, gid) = user.split_once(':').expect("User uid:gid");
    let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
    assert_ne!(uid, 0, "runs as a non-root user");
    for label in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
    ] {
        assert!(
            config["Labels"][label].is_string(),
            "label {label}: {config}"
        );
    }
    let env: Vec<(String, String)> = strings(&config["Env"])
        .into_iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    let container = podman(&["create", &image]);
    made.containers.push(container.clone());
    let root = PathBuf::from(podman(&["mount", &container]));
    for bin in [
        "usr/local/bin/floe",
        "usr/local/bin/floectl",
        "usr/local/bin/floe-operator",
    ] {
        assert!(root.join(bin).exists(), "{bin} in the image");
    }
    for shell in ["bin/sh", "usr/bin/sh", "bin/bash"] {
        assert!(!root.join(shell).exists(), "{shell} in the image");
    }

    // `podman run -e FLOE_ADVERTISE=...`, as far as this machine allows:
    // its own network namespace, the image's user, environment, entrypoint
    // and command, chrooted into the container's filesystem.
    let mut hosts = Hosts::new();
    let (ns, ip) = hosts.add();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("standalone.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "chroot"])
        .arg(format!("--userspec={uid}:{gid}"))
        .arg(&root)
        .args(&entrypoint)
        .args(&cmd)
        .env_clear()
        .envs(env.iter().cloned())
        .env("FLOE_ADVERTISE", format!("{ip}:9092"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .map(Killed)
        .unwrap();
    let child = &mut child.0;
    let http: u16 = var("FLOE_HTTP_LISTEN")
        .and_then(|v| v.rsplit(':').next()?.parse().ok())
        .expect("FLOE_HTTP_LISTEN in the image");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get_from(&ip, http, "/readyz", Duration::from_secs(2)).is_err() {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "floe standalone in the image not ready ({exited:?}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bootstrap = format!("{ip}:9092");
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", &bootstrap, "-t", "image", "-K:"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    kcat.stdin
        .take()
        .unwrap()
        .write_all(b"k1:hello\nk2:from the image\n")
        .unwrap();
    assert!(kcat.wait().unwrap().success(), "kcat produce");
    let (ok, out, err) = run(Command::new("kcat").args([
        "-C",
        "-b",
        &bootstrap,
        "-t",
        "image",
        "-e",
        "-f",
        "%k=%s@%o\n",
    ]));
    assert!(ok, "kcat consume: {err}");
    assert_eq!(out, "k1=hello@0\nk2=from the image@1\n");
    // Its data went where the image says, owned by the image's user.
    let data = root.join(
        var("FLOE_DATA_DIR")
            .expect("FLOE_DATA_DIR")
            .trim_start_matches('/'),
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&data).unwrap().uid(), uid);
}

/// A process killed (by PID) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
