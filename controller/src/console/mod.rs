//! The web console (`--console`): server-rendered pages of the cluster,
//! its topics, groups and operations, kept live (server-sent events over
//! HTTP/2, conditional GETs over HTTP/1.1), and the common operations
//! behind a confirmation step. Every figure and every action goes through
//! the admin API's own handlers ([`AdminService`], called in process: no
//! second implementation of cluster state). Served on the admin
//! listener, over its TLS, behind its token: a login with the token sets
//! a session cookie.

pub mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use floe_rpc::admin as pb;
use maud::Markup;
use pb::admin_server::Admin;
use tokio::time::Instant;
use tonic::Request;

use crate::admin::{AdminService, ControllerState};
use pages::Page;

/// The session cookie's name.
pub const COOKIE: &str = "floe_console";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 1024;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

pub struct Options {
    /// How often an open page is rendered anew (and sent if it changed).
    pub refresh: Duration,
    /// Cookies only over TLS (the admin listener speaks TLS).
    pub secure_cookie: bool,
}

pub struct Console {
    admin: AdminService,
    token: String,
    options: Options,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    /// Sent with every action's form: a page elsewhere cannot act.
    csrf: String,
    expires: Instant,
    /// What the last action did, shown once on the next page (kept here,
    /// not in the URL, so no link can put words on the console).
    note: Option<String>,
}

fn random_id() -> String {
    format!(
        "{}{}",
        floe_common::new_uuid().simple(),
        floe_common::new_uuid().simple()
    )
}

impl Console {
    pub fn new(state: Arc<ControllerState>, token: String, options: Options) -> Arc<Self> {
        Arc::new(Self {
            admin: AdminService::new(state),
            token,
            options,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The console's routes, to serve beside the admin API.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/", get(|| async { Redirect::to("/console/") }))
            .route("/console", get(|| async { Redirect::to("/console/") }))
            .route("/console/", get(page))
            .route("/console/topics", get(page))
            .route("/console/topics/{topic}", get(page))
            .route("/console/groups", get(page))
            .route("/console/groups/{group}", get(page))
            .route("/console/operations", get(page))
            .route("/console/events", get(events))
            .route("/console/live", get(live_section))
            .route("/console/confirm", get(confirm))
            .route("/console/actions", post(act))
            .route("/console/login", get(login_page).post(login))
            .route("/console/logout", post(logout))
            .route(
                "/console/assets/console.css",
                get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }),
            )
            .route(
                "/console/assets/console.js",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                        JS,
                    )
                }),
            )
            .fallback(not_found)
            .with_state(self)
    }

    /// The session a request's cookie names, if it is still valid.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers)?;
        let mut sessions = self.sessions.lock().unwrap();
        match sessions.get(&id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(&id);
                None
            }
            None => None,
        }
    }

    fn start_session(&self) -> String {
        let id = random_id();
        let mut sessions = self.sessions.lock().unwrap();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: random_id(),
                expires: now + SESSION_TTL,
                note: None,
            },
        );
        id
    }

    /// The live section of `page`, from the admin API's answers.
    async fn live(&self, page: &Page) -> Markup {
        match self.render(page).await {
            Ok(m) => m,
            Err(status) => pages::failure(&status),
        }
    }

    async fn render(&self, page: &Page) -> Result<Markup, tonic::Status> {
        let a = &self.admin;
        Ok(match page {
            Page::Cluster => {
                let status = a
                    .get_cluster_status(Request::new(pb::ClusterStatusRequest {}))
                    .await?
                    .into_inner();
                let targets = a
                    .list_storage_targets(Request::new(pb::ListStorageTargetsRequest {}))
                    .await?
                    .into_inner();
                let ops = a
                    .list_operations(Request::new(pb::ListOperationsRequest {}))
                    .await?
                    .into_inner();
                pages::cluster(&status, &targets, &ops)
            }
            Page::Topics => pages::topics(
                &a.list_topics(Request::new(pb::ListTopicsRequest {}))
                    .await?
                    .into_inner(),
            ),
            Page::Topic(name) => {
                let detail = a
                    .describe_topic(Request::new(pb::DescribeTopicRequest {
                        name: name.clone(),
                        segments: true,
                    }))
                    .await?
                    .into_inner();
                let status = a
                    .get_cluster_status(Request::new(pb::ClusterStatusRequest {}))
                    .await?
                    .into_inner();
                let targets = a
                    .list_storage_targets(Request::new(pb::ListStorageTargetsRequest {}))
                    .await?
                    .into_inner();
                pages::topic(&detail, &status.brokers, &targets)
            }
            Page::Groups => pages::groups(
                &a.list_groups(Request::new(pb::ListGroupsRequest {}))
                    .await?
                    .into_inner(),
            ),
            Page::Group(name) => pages::group(
                &a.describe_group(Request::new(pb::DescribeGroupRequest {
                    name: name.clone(),
                }))
                .await?
                .into_inner(),
            ),
            Page::Operations => pages::operations(
                &a.list_operations(Request::new(pb::ListOperationsRequest {}))
                    .await?
                    .into_inner(),
            ),
        })
    }

    /// Keep `note` for the session's next page.
    fn tell(&self, headers: &HeaderMap, note: String) {
        if let Some(id) = cookie(headers) {
            if let Some(s) = self.sessions.lock().unwrap().get_mut(&id) {
                s.note = Some(note);
            }
        }
    }

    /// The session's note, once.
    fn take_note(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers)?;
        self.sessions.lock().unwrap().get_mut(&id)?.note.take()
    }

    async fn page(&self, headers: &HeaderMap, page: Page) -> Response {
        let Some(session) = self.session(headers) else {
            return Redirect::to("/console/login").into_response();
        };
        let note = self.take_note(headers);
        let live = self.live(&page).await;
        let refresh = self.options.refresh;
        Html(pages::layout(&page, live, &session.csrf, note.as_deref(), refresh).into_string())
            .into_response()
    }

    /// What `a` would do, in words (and a rebalance's plan).
    async fn describe(&self, a: &ActionForm) -> Result<(String, Option<Markup>), String> {
        Ok(match a.action.as_str() {
            "move" => {
                let (topic, partition, broker) = a.move_args()?;
                (
                    format!("Move partition {partition} of topic {topic} to broker {broker}?"),
                    None,
                )
            }
            "drain-broker" => (
                format!(
                    "Drain broker {}? Its partitions move to the other brokers, and it takes none until undrained.",
                    a.broker()?
                ),
                None,
            ),
            "undrain-broker" => (
                format!(
                    "Undrain broker {}? It takes partitions again (a drain still running stops).",
                    a.broker()?
                ),
                None,
            ),
            "drain-target" => (
                format!(
                    "Drain storage target {}? No new segment is placed on it; repair copies its segments elsewhere.",
                    a.target()?
                ),
                None,
            ),
            "undrain-target" => (
                format!(
                    "Undrain storage target {}? New segments may be placed on it again.",
                    a.target()?
                ),
                None,
            ),
            "rebalance" => {
                let plan = self
                    .admin
                    .plan_rebalance(Request::new(pb::RebalanceRequest::default()))
                    .await
                    .map_err(|s| s.message().to_string())?
                    .into_inner();
                (
                    "Start a rebalance with this plan? (It is planned again when it starts.)"
                        .into(),
                    Some(pages::plan(&plan)),
                )
            }
            "cancel" => (
                format!(
                    "Cancel operation {}? The moves in flight finish; no new one starts.",
                    a.operation()?
                ),
                None,
            ),
            other => return Err(format!("unknown action {other:?}")),
        })
    }

    /// Carry out `a` through the admin API; what to tell the operator.
    async fn perform(&self, a: &ActionForm) -> Result<String, tonic::Status> {
        let admin = &self.admin;
        let bad = |e: String| tonic::Status::invalid_argument(e);
        Ok(match a.action.as_str() {
            "move" => {
                let (topic, partition, broker) = a.move_args().map_err(bad)?;
                let r = admin
                    .move_partition(Request::new(pb::MovePartitionRequest {
                        topic: topic.clone(),
                        partition,
                        broker,
                        timeout_ms: 0,
                    }))
                    .await?
                    .into_inner();
                format!(
                    "Moved partition {partition} of {topic} to broker {broker} (epoch {}, {} ms).",
                    r.epoch, r.took_ms
                )
            }
            "drain-broker" => {
                let r = admin
                    .drain_broker(Request::new(pb::BrokerRequest {
                        broker: a.broker().map_err(bad)?,
                    }))
                    .await?
                    .into_inner();
                format!(
                    "Draining broker {}: {} partitions to move.",
                    r.broker, r.partitions
                )
            }
            "undrain-broker" => {
                let r = admin
                    .undrain_broker(Request::new(pb::BrokerRequest {
                        broker: a.broker().map_err(bad)?,
                    }))
                    .await?
                    .into_inner();
                format!("Broker {} undrained.", r.broker)
            }
            "drain-target" => {
                let r = admin
                    .drain_storage_target(Request::new(pb::StorageTargetRequest {
                        id: a.target().map_err(bad)?,
                    }))
                    .await?
                    .into_inner();
                format!("Storage target {} draining.", r.id)
            }
            "undrain-target" => {
                let r = admin
                    .undrain_storage_target(Request::new(pb::StorageTargetRequest {
                        id: a.target().map_err(bad)?,
                    }))
                    .await?
                    .into_inner();
                format!("Storage target {} in use again.", r.id)
            }
            "rebalance" => {
                let r = admin
                    .start_rebalance(Request::new(pb::RebalanceRequest::default()))
                    .await?
                    .into_inner();
                let op = r.operation.unwrap_or_default();
                format!("Rebalance {} {}: {} moves.", op.id, op.state, op.total)
            }
            "cancel" => {
                let r = admin
                    .cancel_operation(Request::new(pb::OperationRequest {
                        id: a.operation().map_err(bad)?,
                    }))
                    .await?
                    .into_inner();
                format!("Operation {} cancelling.", r.id)
            }
            other => return Err(bad(format!("unknown action {other:?}"))),
        })
    }
}

/// The session id in a request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// An action, as the pages' forms send it.
#[derive(serde::Deserialize, Default)]
struct ActionForm {
    action: String,
    topic: Option<String>,
    partition: Option<i32>,
    broker: Option<i32>,
    target: Option<String>,
    operation: Option<String>,
    csrf: Option<String>,
}

impl ActionForm {
    fn broker(&self) -> Result<i32, String> {
        self.broker.ok_or_else(|| "no broker given".into())
    }
    fn target(&self) -> Result<String, String> {
        self.target
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "no storage target given".into())
    }
    fn operation(&self) -> Result<String, String> {
        self.operation
            .clone()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| "no operation given".into())
    }
    fn move_args(&self) -> Result<(String, i32, i32), String> {
        let topic = self
            .topic
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or("no topic given")?;
        let partition = self.partition.ok_or("no partition given")?;
        Ok((topic, partition, self.broker()?))
    }
    /// The page an action returns to.
    fn back(&self) -> Page {
        match (self.action.as_str(), &self.topic) {
            ("move", Some(t)) if !t.is_empty() => Page::Topic(t.clone()),
            ("rebalance" | "cancel", _) => Page::Operations,
            _ => Page::Cluster,
        }
    }

    /// The fields that say what to do (not the CSRF token).
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("action", self.action.clone())];
        if let Some(t) = &self.topic {
            f.push(("topic", t.clone()));
        }
        if let Some(p) = self.partition {
            f.push(("partition", p.to_string()));
        }
        if let Some(b) = self.broker {
            f.push(("broker", b.to_string()));
        }
        if let Some(t) = &self.target {
            f.push(("target", t.clone()));
        }
        if let Some(o) = &self.operation {
            f.push(("operation", o.clone()));
        }
        f
    }
}

/// Every page: which one is in the path.
async fn page(State(c): State<Arc<Console>>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    match Page::parse(uri.path()) {
        Some(p) => c.page(&headers, p).await,
        None => not_found().await.into_response(),
    }
}

async fn not_found() -> (StatusCode, Html<String>) {
    (
        StatusCode::NOT_FOUND,
        Html(pages::message("Not found", "There is no such page.").into_string()),
    )
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    page: String,
    /// The version of the live section the page holds.
    version: Option<String>,
}

/// The page whose live section a request asks for: 401 without a
/// session, 404 for no such page.
fn live_page(
    c: &Console,
    headers: &HeaderMap,
    page: &str,
) -> Result<Page, (StatusCode, &'static str)> {
    if c.session(headers).is_none() {
        return Err((StatusCode::UNAUTHORIZED, "log in first\n"));
    }
    Page::parse(page).ok_or((StatusCode::NOT_FOUND, "no such page\n"))
}

/// Server-sent events for one open page: its live section whenever it
/// changed (rendered every `refresh`), `logout` once the session ends.
async fn events(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let page = match live_page(&c, &headers, &q.page) {
        Ok(page) => page,
        Err(refused) => return refused.into_response(),
    };
    struct Watch {
        c: Arc<Console>,
        headers: HeaderMap,
        page: Page,
        last: Option<String>,
        /// The version the page was rendered with (until the first send).
        since: Option<String>,
        ended: bool,
    }
    let watch = Watch {
        c,
        headers,
        page,
        last: None,
        since: q.version,
        ended: false,
    };
    let stream = futures::stream::unfold(watch, |mut w| async move {
        if w.ended {
            return None;
        }
        loop {
            if w.last.is_some() {
                tokio::time::sleep(w.c.options.refresh).await;
            }
            if w.c.session(&w.headers).is_none() {
                w.ended = true;
                let bye = Event::default().event("logout").data("session ended");
                return Some((Ok::<_, std::convert::Infallible>(bye), w));
            }
            let html = w.c.live(&w.page).await.into_string();
            if w.last.is_none() && w.since.take() == Some(pages::version(&html)) {
                // The page already shows this: wait for a change.
                w.last = Some(html);
                continue;
            }
            if w.last.as_ref() != Some(&html) {
                // The id is the section's version: a page shown again
                // asks with it, and gets the section only if it changed.
                let event = Event::default()
                    .event("live")
                    .id(pages::version(&html))
                    .data(html.as_str());
                w.last = Some(html);
                return Some((Ok(event), w));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(serde::Deserialize)]
struct LiveQuery {
    page: String,
}

/// A page's live section now, for a page that asks again every refresh
/// (over HTTP/1.1, where a held event stream would take one of the
/// browser's six connections to the host): 304 while it is the version
/// the page holds (its ETag).
async fn live_section(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Response {
    let page = match live_page(&c, &headers, &q.page) {
        Ok(page) => page,
        Err(refused) => return refused.into_response(),
    };
    let html = c.live(&page).await.into_string();
    let etag = format!("\"{}\"", pages::version(&html));
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if held {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Html(html).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

async fn confirm(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(a): Query<ActionForm>,
) -> Response {
    let Some(session) = c.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    match c.describe(&a).await {
        Ok((question, extra)) => Html(
            pages::confirm(
                &question,
                &a.fields(),
                &session.csrf,
                &a.back().path(),
                extra,
            )
            .into_string(),
        )
        .into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Html(pages::message("Cannot do that", &e).into_string()),
        )
            .into_response(),
    }
}

async fn act(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(a): Form<ActionForm>,
) -> Response {
    let Some(session) = c.session(&headers) else {
        return Redirect::to("/console/login").into_response();
    };
    let given = a.csrf.as_deref().unwrap_or("");
    if !floe_kafka::tls::constant_time_eq(given.as_bytes(), session.csrf.as_bytes()) {
        tracing::warn!(action = %a.action, "console action refused: missing or wrong form token");
        return (
            StatusCode::FORBIDDEN,
            Html(
                pages::message("Refused", "This form is not from this session's console.")
                    .into_string(),
            ),
        )
            .into_response();
    }
    let back = a.back();
    let note = match c.perform(&a).await {
        Ok(done) => {
            tracing::info!(action = %a.action, fields = ?a.fields(), "console action");
            done
        }
        Err(s) => {
            tracing::warn!(action = %a.action, error = %s.message(), "console action failed");
            format!("Failed: {}", s.message())
        }
    };
    c.tell(&headers, note);
    Redirect::to(&back.path()).into_response()
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    failed: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Html<String> {
    Html(pages::login(q.failed.is_some()).into_string())
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(c): State<Arc<Console>>, Form(f): Form<LoginForm>) -> Response {
    if !floe_kafka::tls::constant_time_eq(f.token.as_bytes(), c.token.as_bytes()) {
        tracing::warn!("console login refused: wrong token");
        return Redirect::to("/console/login?failed=1").into_response();
    }
    let id = c.start_session();
    let secure = if c.options.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    (
        [(
            header::SET_COOKIE,
            format!(
                "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                SESSION_TTL.as_secs()
            ),
        )],
        Redirect::to("/console/"),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct LogoutForm {
    csrf: Option<String>,
}

async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let (Some(id), Some(s)) = (cookie(&headers), c.session(&headers)) {
        if f.csrf.as_deref() == Some(s.csrf.as_str()) {
            c.sessions.lock().unwrap().remove(&id);
        }
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/console/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;

    async fn console() -> (tempfile::TempDir, axum::Router) {
        let (dir, meta) = crate::operations::tests::store().await;
        let state = Arc::new(ControllerState::new(
            Arc::new(meta),
            "c1".into(),
            Some("sesame".into()),
            None,
        ));
        let console = Console::new(
            state,
            "sesame".into(),
            Options {
                refresh: Duration::from_millis(100),
                secure_cookie: false,
            },
        );
        (dir, console.router())
    }

    async fn send(app: &axum::Router, req: HttpRequest<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn get(path: &str, cookie: Option<&str>) -> HttpRequest<Body> {
        let mut b = HttpRequest::get(path);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("{COOKIE}={c}"));
        }
        b.body(Body::empty()).unwrap()
    }

    fn post(path: &str, form: &str, cookie: Option<&str>) -> HttpRequest<Body> {
        let mut b = HttpRequest::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("other=1; {COOKIE}={c}"));
        }
        b.body(Body::from(form.to_string())).unwrap()
    }

    fn location(h: &HeaderMap) -> &str {
        h.get(header::LOCATION).unwrap().to_str().unwrap()
    }

    /// A session's id, logged in with the token.
    async fn logged_in(app: &axum::Router) -> String {
        let (_, h, _) = send(app, post("/console/login", "token=sesame", None)).await;
        let set = h.get(header::SET_COOKIE).unwrap().to_str().unwrap();
        set.strip_prefix(&format!("{COOKIE}="))
            .and_then(|s| s.split(';').next())
            .unwrap()
            .to_string()
    }

    /// The first event `path` sends within a second (keep-alive comments
    /// come only every 15 s), if any.
    async fn first_event(app: &axum::Router, path: &str, session: &str) -> Option<String> {
        use futures::StreamExt;
        let resp = app.clone().oneshot(get(path, Some(session))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body().into_data_stream();
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !text.contains("\n\n") {
            let data = tokio::time::timeout_at(deadline, body.next())
                .await
                .ok()??;
            text.push_str(&String::from_utf8_lossy(&data.unwrap()));
        }
        Some(text)
    }

    #[tokio::test]
    async fn a_page_asking_again_gets_its_section_only_if_it_changed() {
        let (_dir, app) = console().await;
        let id = logged_in(&app).await;
        let (_, _, page) = send(&app, get("/console/operations", Some(&id))).await;
        let version = page
            .split("data-version=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        assert_eq!(version.len(), 16, "{page}");
        let events = "/console/events?page=/console/operations";
        // Without a version: the section at once, its version as the id
        // (what the page asks with when it is shown again).
        let first = first_event(&app, events, &id).await.expect("an event");
        assert!(first.starts_with("event: live\n"), "{first}");
        assert!(first.contains(&format!("\nid: {version}\n")), "{first}");
        assert!(first.contains("No operations yet."), "{first}");
        // With the version it holds: nothing until the section changes.
        let same = first_event(&app, &format!("{events}&version={version}"), &id).await;
        assert_eq!(same, None);
        // With an older one: the section.
        let older = first_event(&app, &format!("{events}&version=0123456789abcdef"), &id).await;
        assert!(older.is_some_and(|e| e.contains(&format!("\nid: {version}\n"))));

        // A page that asks every refresh (over HTTP/1.1): the section with
        // its version as ETag, 304 while it holds that version.
        let ask = |tag: Option<&str>, session: Option<&str>| {
            let mut r = get("/console/live?page=/console/operations", session);
            if let Some(t) = tag {
                r.headers_mut()
                    .insert(header::IF_NONE_MATCH, HeaderValue::from_str(t).unwrap());
            }
            r
        };
        let (status, h, body) = send(&app, ask(None, Some(&id))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h[header::ETAG], format!("\"{version}\"").as_str());
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(body.contains("No operations yet."), "{body}");
        assert!(!body.contains("<html"), "the section only: {body}");
        let (status, _, body) = send(&app, ask(Some(&format!("\"{version}\"")), Some(&id))).await;
        assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
        let (status, _, _) = send(&app, ask(Some("\"0123456789abcdef\""), Some(&id))).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = send(&app, ask(None, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!body.contains("operations"), "{body}");
        let (status, _, _) =
            send(&app, get("/console/live?page=/console/nowhere", Some(&id))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn nothing_without_a_session_and_no_action_without_its_form_token() {
        let (_dir, app) = console().await;
        // No session: pages send to the login, the event stream refuses.
        for path in [
            "/console/",
            "/console/topics/t",
            "/console/operations",
            "/console/confirm?action=rebalance",
        ] {
            let (status, h, body) = send(&app, get(path, None)).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
            assert_eq!(location(&h), "/console/login", "{path}");
            assert!(body.is_empty(), "{path}: {body}");
        }
        let (status, _, _) = send(&app, get("/console/events?page=/console/", None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, h, _) = send(
            &app,
            post(
                "/console/actions",
                "action=undrain-broker&broker=3",
                Some("forged"),
            ),
        )
        .await;
        assert_eq!(
            (status, location(&h)),
            (StatusCode::SEE_OTHER, "/console/login")
        );

        // A wrong token: no cookie.
        let (status, h, _) = send(&app, post("/console/login", "token=open", None)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(location(&h), "/console/login?failed=1");
        assert!(h.get(header::SET_COOKIE).is_none());

        // The token: a session cookie, HttpOnly and SameSite=Strict.
        let (_, h, _) = send(&app, post("/console/login", "token=sesame", None)).await;
        let set = h
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let id = set
            .strip_prefix(&format!("{COOKIE}="))
            .and_then(|s| s.split(';').next())
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 64);
        let (status, _, body) = send(&app, get("/console/", Some(&id))).await;
        assert_eq!(status, StatusCode::OK);
        let csrf = body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        assert_eq!(csrf.len(), 64);
        let (status, _, _) = send(&app, get("/console/nope", Some(&id))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The confirmation page acts on nothing; its form carries the token.
        let (status, _, body) = send(
            &app,
            get("/console/confirm?action=undrain-broker&broker=3", Some(&id)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("Undrain broker 3?"), "{body}");
        assert!(body.contains(&csrf));

        // Without the form token, or with another, the action is refused.
        for form in [
            "action=undrain-broker&broker=3",
            "action=undrain-broker&broker=3&csrf=0000",
        ] {
            let (status, _, body) = send(&app, post("/console/actions", form, Some(&id))).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{form}: {body}");
        }
        // With it, the action is done and said.
        let form = format!("action=undrain-broker&broker=3&csrf={csrf}");
        let (status, h, _) = send(&app, post("/console/actions", &form, Some(&id))).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(location(&h), "/console/");
        // Said once, on the next page; a note in the URL is not shown.
        let (_, _, body) = send(&app, get("/console/?note=Evil", Some(&id))).await;
        assert!(body.contains("Broker 3 undrained."), "{body}");
        assert!(!body.contains("Evil"));
        let (_, _, body) = send(&app, get("/console/", Some(&id))).await;
        assert!(!body.contains("Broker 3 undrained."));
        let (status, _, body) =
            send(&app, get("/console/confirm?action=frobnicate", Some(&id))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown action"), "{body}");

        // Logging out ends the session.
        let (status, _, _) = send(
            &app,
            post("/console/logout", &format!("csrf={csrf}"), Some(&id)),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (status, h, _) = send(&app, get("/console/", Some(&id))).await;
        assert_eq!(
            (status, location(&h)),
            (StatusCode::SEE_OTHER, "/console/login")
        );
    }
}
