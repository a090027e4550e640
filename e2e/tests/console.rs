//! The web console in a real browser: Debian's headless Chromium, driven
//! over WebDriver (chromedriver, through fantoccini), against a real
//! cluster (etcd, three storage targets on moto's S3, two replicas a
//! segment, two brokers, a proxy, a controller started with `--console`).
//! An unauthenticated browser gets the login page and no data; the
//! cluster page lists every broker and storage target as the
//! admin API does; a move made with floectl shows on the operations page
//! and as the new owner on the topic page without a reload; a drain
//! started from the console (through its confirmation step) drains the
//! broker, as the admin API then says (and an undrain, a storage target's
//! drain and undrain and a rebalance, each confirmed, likewise). Each
//! page's screenshot is written to `FLOE_CONSOLE_SCREENSHOTS` (default
//! `target/console-screenshots`); the ones in docs/console/ come from this
//! test. A second test serves the console over the admin API's TLS.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use floe_e2e::{free_port, Cluster, Moto, ADMIN_TOKEN};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// chromedriver on a free port, in a process group of its own (its id is
/// chromedriver's PID): dropped, the group is killed, so the Chromium it
/// started goes too even when a failed test never ended its session.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> Self {
        let port = free_port();
        let bin = std::env::var("FLOE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {bin} (Debian: apt install chromium chromium-driver): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    /// A browser session; `trust_any` accepts any server certificate (the
    /// test CA's, for the TLS test).
    async fn browser(&self, trust_any: bool) -> Client {
        let mut caps = serde_json::Map::new();
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            "--no-first-run",
            "--no-default-browser-check",
        ];
        if trust_any {
            args.push("--ignore-certificate-errors");
        }
        let chromium =
            std::env::var("FLOE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session with headless Chromium")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group this test made for chromedriver, named by its PID.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = std::env::var("FLOE_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// The page's load time, set once by console.js: unchanged means the
/// page was not reloaded.
async fn loaded_at(b: &Client) -> serde_json::Value {
    let v = b
        .execute("return window.floeLoadedAt;", vec![])
        .await
        .unwrap();
    assert!(v.is_number(), "console.js ran: {v}");
    v
}

/// Wait (up to `secs`) until `f` answers Some.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The text of the first element matching `css`, if any.
async fn text_of(b: &Client, css: &str) -> Option<String> {
    let e = b.find(Locator::Css(css)).await.ok()?;
    e.text().await.ok()
}

/// Click the element matching `css`, found anew if a live update replaced
/// it between finding and clicking.
async fn click(b: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = b.find(Locator::Css(css)).await;
        match found {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("clicking {css}: {err}; again");
                }
                Err(err) => panic!("clicking {css}: {err}"),
            },
            Err(err) if Instant::now() < deadline => eprintln!("finding {css}: {err}; again"),
            Err(err) => panic!("finding {css}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Click the action button matching `css` until its confirmation page
/// shows (a live update may replace the button as it is clicked); the
/// question it asks.
async fn confirmation(b: &Client, css: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        click(b, css).await;
        let asked = Instant::now() + Duration::from_secs(3);
        while Instant::now() < asked {
            if let Some(q) = text_of(b, "#question").await {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if Instant::now() >= deadline {
            let url = b.current_url().await.map(|u| u.to_string());
            panic!("no confirmation after clicking {css} (the browser is at {url:?})");
        }
    }
}

/// Click the action button matching `css`, check that its confirmation
/// asks `asks`, and confirm.
async fn confirmed(b: &Client, css: &str, asks: &str) {
    let question = confirmation(b, css).await;
    assert!(question.contains(asks), "{question}");
    click(b, "#confirm-button").await;
}

/// Fill the login form with `token` and send it.
async fn log_in(b: &Client, token: &str) {
    b.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    click(b, "#login button").await;
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_live_and_drains_a_broker() {
    // Three targets (prefixes of one S3 server), two replicas a segment:
    // the topic page draws each segment's own pair.
    let moto = Moto::start("console").unwrap();
    let urls: Vec<String> = ["a", "b", "c"].iter().map(|p| moto.url(p)).collect();
    let mut c = Cluster::start_with_pool(2, 1, 3_000, "", &urls, 2, 2).unwrap();
    c.add_proxy().unwrap();
    c.restart_controllers_with(&["--console", "--console-refresh-ms", "300"])
        .unwrap();
    c.wait_leader(Duration::from_secs(30)).unwrap();
    let base = c.admin_url(0);
    floe_e2e::create_topic(&c.proxy_bootstrap(), "orders", 4).await;

    // Some records and a committed group, for the groups pages.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", c.proxy_bootstrap())
        .create()
        .unwrap();
    for i in 0..20 {
        producer
            .send(
                FutureRecord::to("orders")
                    .partition(i % 4)
                    .key(&format!("k{i}"))
                    .payload(&format!("order {i}")),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", c.proxy_bootstrap())
        .set("group.id", "billing")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a record for the group")
        .unwrap();
    consumer.commit_message(&first, CommitMode::Sync).unwrap();
    // It leaves the group now, while every broker serves (closing it
    // later, with its coordinator drained away, can block): the group
    // stays, empty, with its committed offset.
    drop(first);
    consumer.unsubscribe();
    drop(consumer);

    eprintln!("console test: group committed");
    let driver = ChromeDriver::start();
    eprintln!("console test: started chromedriver");
    let b = driver.browser(false).await;
    eprintln!("console test: browser session");

    // Unauthenticated: the login page, and no data anywhere.
    b.goto(&format!("{base}/console/topics/orders"))
        .await
        .unwrap();
    assert!(b
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/login"));
    let source = b.source().await.unwrap();
    assert!(source.contains("Floe console"), "{source}");
    for secret in ["orders", "billing", &c.brokers[0].port.unwrap().to_string()] {
        assert!(!source.contains(secret), "login page shows {secret:?}");
    }
    b.goto(&format!("{base}/console/events?page=/console/"))
        .await
        .unwrap();
    let events = b.source().await.unwrap();
    assert!(events.contains("log in first"), "{events}");
    assert!(!events.contains("orders"));
    b.goto(&format!("{base}/console/")).await.unwrap();
    screenshot(&b, "login").await;

    // A wrong token is refused.
    eprintln!("console test: login page checked");
    log_in(&b, "not-the-token").await;
    assert_eq!(
        text_of(&b, "#login-error").await.as_deref(),
        Some("Wrong token.")
    );
    log_in(&b, ADMIN_TOKEN).await;

    // The cluster page: every broker and target the admin API knows.
    eprintln!("console test: logged in");
    let (code, out, err) = c.floectl(0, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    let brokers: Vec<i64> = status["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(brokers.len(), 2, "{out}");
    let (code, out, err) = c.floectl(0, &["storage", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let targets: Vec<String> = json(&out)["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!targets.is_empty(), "{out}");
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#brokers"))
        .await
        .expect("the cluster page after logging in");
    for id in &brokers {
        let row = text_of(&b, &format!("#brokers tr[data-broker=\"{id}\"]"))
            .await
            .unwrap_or_else(|| panic!("broker {id} listed"));
        assert!(row.contains("serving"), "{row}");
    }
    assert_eq!(
        b.find_all(Locator::Css("#brokers tbody tr"))
            .await
            .unwrap()
            .len(),
        brokers.len()
    );
    for t in &targets {
        assert!(
            text_of(&b, &format!("#targets tr[data-target=\"{t}\"]"))
                .await
                .is_some(),
            "target {t} listed"
        );
    }
    assert_eq!(
        b.find_all(Locator::Css("#targets tbody tr"))
            .await
            .unwrap()
            .len(),
        targets.len()
    );
    assert_eq!(
        text_of(&b, "#cluster-id").await.unwrap(),
        status["cluster_id"].as_str().unwrap()
    );
    screenshot(&b, "cluster").await;

    // Groups.
    eprintln!("console test: cluster page checked");
    b.goto(&format!("{base}/console/groups")).await.unwrap();
    let groups = eventually(10, "the group listed", || async {
        text_of(&b, "#groups")
            .await
            .filter(|t| t.contains("billing"))
    })
    .await;
    assert!(groups.contains("billing"), "{groups}");
    screenshot(&b, "groups").await;
    b.goto(&format!("{base}/console/groups/billing"))
        .await
        .unwrap();
    let lag = text_of(&b, "#lag").await.unwrap();
    assert!(lag.contains("orders"), "{lag}");
    screenshot(&b, "group").await;

    // The topic page in this window, the operations page in another.
    eprintln!("console test: groups checked");
    let topic_window = b.window().await.unwrap();
    b.goto(&format!("{base}/console/topics/orders"))
        .await
        .unwrap();
    let owner_css = "#partitions tr[data-partition=\"0\"] td.owner";
    let before: i64 = eventually(30, "partition 0 owned", || async {
        text_of(&b, owner_css).await?.trim().parse().ok()
    })
    .await;
    let topic_loaded = loaded_at(&b).await;
    let ops_window = b.new_window(false).await.unwrap().handle;
    b.switch_to_window(ops_window.clone()).await.unwrap();
    b.goto(&format!("{base}/console/operations")).await.unwrap();
    let ops_loaded = loaded_at(&b).await;
    // Over plaintext HTTP/1.1 the page asks for its section every refresh
    // (no held connection).
    assert_eq!(
        b.execute("return window.floeLiveBy;", vec![])
            .await
            .unwrap(),
        "polling"
    );
    // Give the page's event stream a moment to be open.
    eventually(10, "the operations page live", || async {
        text_of(&b, "#live-status").await.filter(|s| s == "live")
    })
    .await;

    let to = *brokers.iter().find(|id| **id != before).unwrap();
    eprintln!("console test: pages open");
    let (code, out, err) = c.floectl(0, &["move", "orders", "0", "--to", &to.to_string()]);
    assert_eq!(code, 0, "{out}{err}");

    let label = format!("orders/0: broker {before} → {to}");
    let row = eventually(30, "the move on the operations page", || async {
        text_of(&b, "#operations tr[data-kind=\"move\"]")
            .await
            .filter(|t| t.contains(&label))
    })
    .await;
    assert!(row.contains("done"), "{row}");
    assert_eq!(
        loaded_at(&b).await,
        ops_loaded,
        "the operations page reloaded"
    );
    screenshot(&b, "operations").await;

    b.switch_to_window(topic_window.clone()).await.unwrap();
    eventually(30, "the new owner on the topic page", || async {
        text_of(&b, owner_css)
            .await
            .filter(|t| t.trim() == to.to_string())
    })
    .await;
    assert_eq!(loaded_at(&b).await, topic_loaded, "the topic page reloaded");
    let grid = b
        .find_all(Locator::Css("table.replicas td.replica"))
        .await
        .unwrap();
    assert!(!grid.is_empty(), "segments drawn over the targets");
    screenshot(&b, "topic").await;

    // Many tabs over plaintext HTTP/1.1, where the browser opens at most
    // six connections to the console: a page in a background tab gives
    // up its event stream, so every new tab still loads and goes live
    // (held streams would leave the seventh page waiting for a
    // connection), and the old ones take theirs up again when shown.
    eprintln!("console test: move seen");
    let mut tabs = vec![ops_window];
    for n in 1..=8 {
        let tab = b.new_window(false).await.unwrap().handle;
        b.switch_to_window(tab.clone()).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(20),
            b.goto(&format!("{base}/console/operations")),
        )
        .await
        .unwrap_or_else(|_| panic!("tab {n} of the console never loaded"))
        .unwrap();
        eventually(20, "a new tab live", || async {
            text_of(&b, "#live-status").await.filter(|s| s == "live")
        })
        .await;
        tabs.push(tab);
    }
    for tab in tabs.iter().rev() {
        b.switch_to_window(tab.clone()).await.unwrap();
        eventually(20, "a tab shown again live", || async {
            text_of(&b, "#live-status").await.filter(|s| s == "live")
        })
        .await;
        b.close_window().await.unwrap();
    }
    eprintln!("console test: tabs opened and closed");
    b.switch_to_window(topic_window).await.unwrap();

    // A drain from the console, through its confirmation step.
    let drained = to;
    b.goto(&format!("{base}/console/")).await.unwrap();
    eprintln!("console test: cluster page again");
    let question = confirmation(
        &b,
        &format!("#brokers tr[data-broker=\"{drained}\"] button[data-action=\"drain-broker\"]"),
    )
    .await;
    eprintln!("console test: confirm page");
    assert!(
        question.contains(&format!("Drain broker {drained}?")),
        "{question}"
    );
    screenshot(&b, "confirm").await;
    // Nothing happened yet.
    let (_, out, _) = c.floectl(0, &["status", "-o", "json"]);
    let of = |out: &str, id: i64| {
        json(out)["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(of(&out, drained)["drained"], false, "{out}");
    click(&b, "#confirm-button").await;
    eprintln!("console test: confirmed");
    let note = eventually(30, "the drain's note", || async {
        text_of(&b, "#note").await
    })
    .await;
    eprintln!("console test: note");
    assert!(
        note.contains(&format!("Draining broker {drained}")),
        "{note}"
    );
    let moved_off = eventually(90, "the broker drained", || async {
        let (code, out, _) = c.floectl(0, &["status", "-o", "json"]);
        (code == 0).then_some(())?;
        let b = of(&out, drained);
        (b["drained"] == true && b["partitions"].as_u64() == Some(0)).then_some(b)
    })
    .await;
    assert_eq!(moved_off["drained"], true);
    // The console shows it too, without a reload.
    eprintln!("console test: drained per admin API");
    let row_css = format!("#brokers tr[data-broker=\"{drained}\"] td.state");
    eventually(30, "the drain on the cluster page", || async {
        text_of(&b, &row_css).await.filter(|s| s == "drained")
    })
    .await;
    screenshot(&b, "cluster-drained").await;
    eprintln!("console test: drained on page");

    // Undrain it, drain and undrain a storage target, start a rebalance:
    // each through its confirmation, each seen by the admin API.
    confirmed(
        &b,
        &format!("#brokers tr[data-broker=\"{drained}\"] button[data-action=\"undrain-broker\"]"),
        &format!("Undrain broker {drained}?"),
    )
    .await;
    eventually(30, "the broker undrained", || async {
        let (code, out, _) = c.floectl(0, &["status", "-o", "json"]);
        (code == 0 && of(&out, drained)["drained"] == false).then_some(())
    })
    .await;
    let target = &targets[0];
    confirmed(
        &b,
        &format!("#targets tr[data-target=\"{target}\"] button[data-action=\"drain-target\"]"),
        &format!("Drain storage target {target}?"),
    )
    .await;
    let target_draining = |c: &Cluster, target: &str| -> Option<bool> {
        let (code, out, _) = c.floectl(0, &["storage", "list", "-o", "json"]);
        (code == 0).then_some(())?;
        let v = json(&out);
        let t = v["targets"]
            .as_array()?
            .iter()
            .find(|t| t["id"] == target)?
            .clone();
        t["draining"].as_bool()
    };
    eventually(30, "the target draining", || async {
        (target_draining(&c, target) == Some(true)).then_some(())
    })
    .await;
    confirmed(
        &b,
        &format!("#targets tr[data-target=\"{target}\"] button[data-action=\"undrain-target\"]"),
        &format!("Undrain storage target {target}?"),
    )
    .await;
    eventually(30, "the target in use again", || async {
        (target_draining(&c, target) == Some(false)).then_some(())
    })
    .await;
    b.goto(&format!("{base}/console/operations")).await.unwrap();
    confirmed(&b, "button[data-action=\"rebalance\"]", "Start a rebalance").await;
    let note = eventually(30, "the rebalance's note", || async {
        text_of(&b, "#note").await
    })
    .await;
    assert!(note.starts_with("Rebalance "), "{note}");
    let (code, out, err) = c.floectl(0, &["op", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        json(&out)["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "rebalance"),
        "{out}"
    );

    // Logging out ends the session: the pages ask to log in again.
    click(&b, "form.logout button").await;
    eprintln!("console test: logged out");
    b.goto(&format!("{base}/console/operations")).await.unwrap();
    assert!(b
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/login"));
    eprintln!("console test: login asked again");
    b.close().await.unwrap();
    eprintln!("console test: browser closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_over_the_admin_apis_tls() {
    let mut c = Cluster::start(1, 1, 3_000).unwrap();
    let pki = floe_e2e::TestPki::generate(c.dir()).unwrap();
    c.restart_controllers_with(&[
        "--admin-tls-cert",
        &pki.server_cert.display().to_string(),
        "--admin-tls-key",
        &pki.server_key.display().to_string(),
        "--console",
    ])
    .unwrap();
    c.wait_leader(Duration::from_secs(30)).unwrap();
    let base = c.admin_url(0);
    assert!(base.starts_with("https://"), "{base}");

    let driver = ChromeDriver::start();
    let b = driver.browser(true).await;
    b.goto(&format!("{base}/console/")).await.unwrap();
    assert!(b
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/login"));
    log_in(&b, ADMIN_TOKEN).await;
    // The session cookie is Secure and came back over TLS: the cluster page.
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#brokers tr[data-broker=\"1\"]"))
        .await
        .expect("the cluster page over TLS");
    let cookies = b.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|k| k.name() == floe_controller::console::COOKIE)
        .expect("the session cookie");
    assert_eq!(session.secure(), Some(true));
    assert_eq!(session.http_only(), Some(true));
    // Over TLS the browser speaks HTTP/2 and the page takes its updates
    // from the event stream: a topic created now is listed unreloaded.
    b.goto(&format!("{base}/console/topics")).await.unwrap();
    eventually(10, "the page live over TLS", || async {
        text_of(&b, "#live-status").await.filter(|s| s == "live")
    })
    .await;
    assert_eq!(
        b.execute("return window.floeLiveBy;", vec![])
            .await
            .unwrap(),
        "events"
    );
    let loaded = loaded_at(&b).await;
    floe_e2e::create_topic(&c.bootstrap(), "payments", 2).await;
    eventually(30, "the new topic listed live over TLS", || async {
        text_of(&b, "#live")
            .await
            .filter(|t| t.contains("payments"))
    })
    .await;
    assert_eq!(loaded_at(&b).await, loaded, "the topics page reloaded");
    // Plain HTTP to the TLS listener gets no page.
    let plain = base.replacen("https://", "http://", 1);
    b.goto(&format!("{plain}/console/")).await.ok();
    let source = b.source().await.unwrap_or_default();
    assert!(!source.contains("brokers"), "{source}");
    b.close().await.unwrap();
}
