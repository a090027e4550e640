//! The console's HTML: one function per page, each rendering what the
//! admin API answered (its messages, unchanged) into the page's live
//! section; the layout, the login page and the confirmation step around
//! them. Pure functions of their input: every value is escaped by maud.

use std::time::{Duration, UNIX_EPOCH};

use floe_rpc::admin as pb;
use maud::{html, Markup, DOCTYPE};

/// The console's pages, by their path under `/console`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    Cluster,
    Topics,
    Topic(String),
    Groups,
    Group(String),
    Operations,
}

impl Page {
    /// The page at `path` (as in the browser's address bar, percent-
    /// encoded names decoded).
    pub fn parse(path: &str) -> Option<Page> {
        let rest = path.strip_prefix("/console")?.trim_end_matches('/');
        let mut parts = rest.split('/').skip(1);
        let page = match (parts.next(), parts.next()) {
            (None, _) => Page::Cluster,
            (Some("topics"), None) => Page::Topics,
            (Some("topics"), Some(t)) if !t.is_empty() => Page::Topic(decode(t)?),
            (Some("groups"), None) => Page::Groups,
            (Some("groups"), Some(g)) if !g.is_empty() => Page::Group(decode(g)?),
            (Some("operations"), None) => Page::Operations,
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(page)
    }

    pub fn path(&self) -> String {
        match self {
            Page::Cluster => "/console/".into(),
            Page::Topics => "/console/topics".into(),
            Page::Topic(t) => format!("/console/topics/{}", encode(t)),
            Page::Groups => "/console/groups".into(),
            Page::Group(g) => format!("/console/groups/{}", encode(g)),
            Page::Operations => "/console/operations".into(),
        }
    }

    pub fn title(&self) -> String {
        match self {
            Page::Cluster => "Cluster".into(),
            Page::Topics => "Topics".into(),
            Page::Topic(t) => format!("Topic {t}"),
            Page::Groups => "Groups".into(),
            Page::Group(g) => format!("Group {g}"),
            Page::Operations => "Operations".into(),
        }
    }

    fn section(&self) -> &'static str {
        match self {
            Page::Cluster => "cluster",
            Page::Topics | Page::Topic(_) => "topics",
            Page::Groups | Page::Group(_) => "groups",
            Page::Operations => "operations",
        }
    }
}

/// A live section's version: the events stream sends the section only
/// once it differs from the version the page was rendered with.
pub fn version(html: &str) -> String {
    use std::hash::{Hash, Hasher};
    // The same in this process (a page's events come from the controller
    // that rendered it; elsewhere the section is merely sent once more).
    let mut h = std::hash::DefaultHasher::new();
    html.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// A name as one path segment.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A whole page: the navigation, the live section (replaced while the
/// page is shown, at most every `refresh`) and the script that does it.
pub fn layout(
    page: &Page,
    live: Markup,
    csrf: &str,
    note: Option<&str>,
    refresh: std::time::Duration,
) -> Markup {
    let section = page.section();
    let version = version(&live.0);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title()) " · Floe" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    a.brand href="/console/" { "Floe" }
                    nav {
                        a.active[section == "cluster"] href="/console/" { "Cluster" }
                        a.active[section == "topics"] href="/console/topics" { "Topics" }
                        a.active[section == "groups"] href="/console/groups" { "Groups" }
                        a.active[section == "operations"] href="/console/operations" { "Operations" }
                    }
                    span #live-status { "connecting…" }
                    form.logout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Log out" }
                    }
                }
                @if let Some(note) = note {
                    p.note #note { (note) }
                }
                h1 { (page.title()) }
                main #live data-page=(page.path()) data-version=(version)
                    data-refresh-ms=(refresh.as_millis()) { (live) }
                script src="/console/assets/console.js" {}
            }
        }
    }
}

pub fn login(failed: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · Floe" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body.login {
                form #login method="post" action="/console/login" {
                    h1 { "Floe console" }
                    p { "The admin API's token (what floectl takes as --token)." }
                    @if failed {
                        p.error #login-error { "Wrong token." }
                    }
                    input type="password" name="token" autocomplete="current-password" autofocus;
                    button type="submit" { "Log in" }
                }
            }
        }
    }
}

/// A page for an answer that is not a page (an error, an unknown path).
pub fn message(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Floe" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                h1 { (title) }
                p.error { (text) }
                p { a href="/console/" { "Back to the cluster" } }
            }
        }
    }
}

/// The live section when the admin API refused or failed.
pub fn failure(status: &tonic::Status) -> Markup {
    html! {
        p.error { "The admin API answered " (format!("{:?}", status.code())) ": " (status.message()) }
    }
}

fn time(ms: i64) -> String {
    if ms <= 0 {
        return "–".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
        + " UTC"
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn rate(n: u64) -> String {
    format!("{}/s", bytes(n))
}

/// A button that asks for confirmation of `action` (a GET: nothing
/// happens until the confirmation page's form is sent).
fn action_button(label: &str, action: &str, fields: &[(&str, String)]) -> Markup {
    html! {
        form.inline method="get" action="/console/confirm" {
            input type="hidden" name="action" value=(action);
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" data-action=(action) { (label) }
        }
    }
}

pub fn cluster(
    status: &pb::ClusterStatus,
    targets: &pb::StorageTargetList,
    ops: &pb::OperationList,
) -> Markup {
    let running: Vec<&pb::Operation> = ops
        .operations
        .iter()
        .filter(|o| !is_finished(&o.state))
        .collect();
    html! {
        section.cards {
            div.card { span.label { "cluster" } span.value #cluster-id { (status.cluster_id) } }
            div.card { span.label { "brokers" } span.value { (status.brokers.len()) } }
            div.card { span.label { "topics" } span.value { (status.topics) } }
            div.card { span.label { "partitions" } span.value { (status.partitions) } }
            div.card { span.label { "replicas / write quorum" } span.value { (status.replicas) " / " (status.write_quorum) } }
            div.card { span.label { "segments to repair" } span.value { (targets.segments_to_repair) } }
        }
        h2 { "Partitions by state" }
        ul.states #partition-states {
            @for s in &status.partition_states {
                li.{"state-" (s.state)} { span.label { (s.state) } " " span.value { (s.partitions) } }
            }
        }
        h2 { "Brokers" }
        table #brokers {
            thead { tr { th { "id" } th { "address" } th { "partitions" } th { "in" } th { "out" } th { "started" } th { "state" } th {} } }
            tbody {
                @for b in &status.brokers {
                    @let drain = running.iter().find(|o| o.broker == b.id && o.kind != "rebalance");
                    tr data-broker=(b.id) {
                        td { (b.id) }
                        td { (b.address) }
                        td.partitions { (b.partitions) }
                        td { (rate(b.bytes_in_per_sec)) }
                        td { (rate(b.bytes_out_per_sec)) }
                        td { (time(b.started_ms)) }
                        td.state {
                            @if let Some(op) = drain {
                                "draining " (progress(op))
                            } @else if b.drained {
                                "drained"
                            } @else {
                                "serving"
                            }
                        }
                        td {
                            @if b.drained {
                                (action_button("Undrain", "undrain-broker", &[("broker", b.id.to_string())]))
                            } @else {
                                (action_button("Drain", "drain-broker", &[("broker", b.id.to_string())]))
                            }
                        }
                    }
                }
            }
        }
        h2 { "Storage targets" }
        table #targets {
            thead { tr { th { "id" } th { "url" } th { "zone" } th { "weight" } th { "health" } th { "segments" } th { "bytes" } th { "state" } th {} } }
            tbody {
                @for t in &targets.targets {
                    tr data-target=(t.id) {
                        td { (t.id) }
                        td.url { (t.url) }
                        td { (t.zone) }
                        td { (t.weight) }
                        td.{"health-" (t.health)} { (t.health) }
                        td { (t.segments) }
                        td { (bytes(t.bytes)) }
                        td.state { @if t.draining { "draining" } @else { "in use" } }
                        td {
                            @if t.draining {
                                (action_button("Undrain", "undrain-target", &[("target", t.id.clone())]))
                            } @else {
                                (action_button("Drain", "drain-target", &[("target", t.id.clone())]))
                            }
                        }
                    }
                }
            }
        }
        h2 { "Proxies" }
        table #proxies {
            thead { tr { th { "id" } th { "address" } th { "started" } } }
            tbody {
                @for p in &status.proxies {
                    tr { td { (p.id) } td { (p.address) } td { (time(p.started_ms)) } }
                }
            }
        }
        h2 { "Controllers" }
        table #controllers {
            thead { tr { th { "id" } th { "http" } th { "role" } } }
            tbody {
                @for c in &status.controllers {
                    tr { td { (c.id) } td { (c.http) } td { @if c.leader { "leads" } @else { "stands by" } } }
                }
            }
        }
    }
}

pub fn topics(list: &pb::TopicList) -> Markup {
    html! {
        table #topics {
            thead { tr { th { "name" } th { "partitions" } th { "id" } th { "configs" } } }
            tbody {
                @for t in &list.topics {
                    tr {
                        td { a href=(Page::Topic(t.name.clone()).path()) { (t.name) } }
                        td { (t.partitions) }
                        td.id { (t.id) }
                        td.configs {
                            @for (k, v) in t.configs.iter().collect::<std::collections::BTreeMap<_, _>>() {
                                span.config { (k) "=" (v) } " "
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Segments shown per partition on the topic page (the newest).
pub const SEGMENTS_SHOWN: usize = 12;

pub fn topic(
    detail: &pb::TopicDetail,
    brokers: &[pb::Broker],
    targets: &pb::StorageTargetList,
) -> Markup {
    let name = detail.topic.as_ref().map_or("", |t| t.name.as_str());
    html! {
        table #partitions {
            thead { tr {
                th { "partition" } th { "owner" } th { "epoch" } th { "state" } th { "high watermark" }
                th { "bytes" } th { "in" } th { "out" } th { "segments" } th { "move to" }
            } }
            tbody {
                @for p in &detail.partitions {
                    tr data-partition=(p.partition) {
                        td { (p.partition) }
                        td.owner { @if p.owner >= 0 { (p.owner) } @else { "–" } }
                        td { @if p.epoch >= 0 { (p.epoch) } @else { "–" } }
                        td.{"state-" (p.state)} { (p.state) }
                        td { @if p.high_watermark >= 0 { (p.high_watermark) } @else { "–" } }
                        td { (bytes(p.bytes)) }
                        td { (rate(p.bytes_in_per_sec)) }
                        td { (rate(p.bytes_out_per_sec)) }
                        td { (p.sealed_segments) " sealed, " (p.open_segments) " open" }
                        td {
                            form.inline method="get" action="/console/confirm" {
                                input type="hidden" name="action" value="move";
                                input type="hidden" name="topic" value=(name);
                                input type="hidden" name="partition" value=(p.partition);
                                select name="broker" aria-label="broker" {
                                    @for b in brokers.iter().filter(|b| b.id != p.owner && !b.drained) {
                                        option value=(b.id) { "broker " (b.id) }
                                    }
                                }
                                button type="submit" data-action="move" { "Move…" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Segments over the storage targets" }
        p.hint { "Each segment's replicas, on the set chosen for it when it was opened (the newest " (SEGMENTS_SHOWN) " per partition)." }
        @for p in &detail.partitions {
            @let shown = &p.segments[p.segments.len().saturating_sub(SEGMENTS_SHOWN)..];
            table.replicas data-partition=(p.partition) {
                caption { "partition " (p.partition) " · " (p.segments.len()) " segments" }
                thead { tr {
                    th { "offsets" } th { "" }
                    @for t in &targets.targets { th.target { (t.id) } }
                } }
                tbody {
                    @for s in shown {
                        tr.sealed[s.sealed].open[!s.sealed] {
                            td { (s.base_offset) "–" @if s.end_offset >= 0 { (s.end_offset) } }
                            td { @if s.sealed { "sealed" } @else { "open" } " · " (bytes(s.bytes)) }
                            @for t in &targets.targets {
                                @if s.replica_set.contains(&t.id) {
                                    td.replica title=(format!("replica on {}", t.id)) { "●" }
                                } @else {
                                    td {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn groups(list: &pb::GroupList) -> Markup {
    html! {
        @if !list.unreachable.is_empty() {
            p.error { "Brokers that did not answer: " @for b in &list.unreachable { (b) " " } }
        }
        table #groups {
            thead { tr { th { "group" } th { "type" } th { "protocol type" } th { "state" } th { "coordinator" } } }
            tbody {
                @for g in &list.groups {
                    tr {
                        td { a href=(Page::Group(g.name.clone()).path()) { (g.name) } }
                        td { (g.group_type) }
                        td { (g.protocol_type) }
                        td { (g.state) }
                        td { (g.coordinator) }
                    }
                }
            }
        }
    }
}

pub fn group(g: &pb::GroupDescription) -> Markup {
    html! {
        section.cards {
            div.card { span.label { "state" } span.value { (g.state) } }
            div.card { span.label { "protocol" } span.value { (g.protocol) } }
            div.card { span.label { "coordinator" } span.value { (g.coordinator) } }
            div.card { span.label { "total lag" } span.value #total-lag { (g.total_lag) } }
        }
        h2 { "Members" }
        table #members {
            thead { tr { th { "member" } th { "client" } th { "host" } th { "assignment" } } }
            tbody {
                @for m in &g.members {
                    tr {
                        td { (m.member_id) }
                        td { (m.client_id) }
                        td { (m.client_host) }
                        td { @for a in &m.assignment { span.config { (a) } " " } }
                    }
                }
            }
        }
        h2 { "Lag" }
        table #lag {
            thead { tr { th { "topic" } th { "partition" } th { "committed" } th { "high watermark" } th { "lag" } th { "member" } } }
            tbody {
                @for p in &g.partitions {
                    tr {
                        td { (p.topic) }
                        td { (p.partition) }
                        td { (p.committed_offset) }
                        td { (p.high_watermark) }
                        td { (p.lag) }
                        td { (p.client_id) }
                    }
                }
            }
        }
    }
}

fn is_finished(state: &str) -> bool {
    matches!(state, "done" | "cancelled" | "failed")
}

fn progress(op: &pb::Operation) -> Markup {
    let finished = op.done + op.failed + op.skipped;
    let pct = (finished * 100).checked_div(op.total).unwrap_or(100);
    html! {
        span.progress {
            progress max=(op.total.max(1)) value=(finished) {}
            " " (finished) "/" (op.total)
            @if pct < 100 && op.moving > 0 { " (" (op.moving) " moving)" }
        }
    }
}

fn move_label(m: &pb::Move) -> String {
    let from = if m.from >= 0 {
        m.from.to_string()
    } else {
        "–".into()
    };
    let to = if m.to > 0 {
        m.to.to_string()
    } else {
        "?".into()
    };
    format!("{}/{}: broker {from} → {to}", m.topic, m.partition)
}

pub fn operations(list: &pb::OperationList) -> Markup {
    let mut ops: Vec<&pb::Operation> = list.operations.iter().collect();
    // Running ones first, then the newest.
    ops.sort_by_key(|o| (is_finished(&o.state), -o.created_ms));
    html! {
        p { (action_button("Rebalance…", "rebalance", &[])) }
        @if ops.is_empty() {
            p #no-operations { "No operations yet." }
        }
        table #operations {
            thead { tr { th { "id" } th { "kind" } th { "state" } th { "progress" } th { "created" } th { "finished" } th { "what" } th {} } }
            tbody {
                @for o in &ops {
                    tr data-operation=(o.id) data-kind=(o.kind) data-state=(o.state) {
                        td.id { (o.id) }
                        td { (o.kind) }
                        td.{"state-" (o.state)} { (o.state) }
                        td { (progress(o)) }
                        td { (time(o.created_ms)) }
                        td { (time(o.finished_ms)) }
                        td.what {
                            @if o.kind == "move" {
                                @for m in &o.moves { span.move { (move_label(m)) } " " }
                                @if !o.detail.is_empty() { span.detail { " · " (o.detail) } }
                            } @else {
                                (o.detail)
                                @if !o.moves.is_empty() {
                                    details open[!is_finished(&o.state)] {
                                        summary { (o.moves.len()) " moves" }
                                        ul.moves {
                                            @for m in &o.moves {
                                                li.{"move-" (m.status)} {
                                                    (move_label(m)) " · " (m.status)
                                                    @if m.took_ms > 0 { " in " (m.took_ms) " ms" }
                                                    @if !m.detail.is_empty() { " · " (m.detail) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        td {
                            @if !is_finished(&o.state) {
                                (action_button("Cancel", "cancel", &[("operation", o.id.clone())]))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The confirmation step: what will happen, and the form that does it.
pub fn confirm(
    question: &str,
    fields: &[(&str, String)],
    csrf: &str,
    back: &str,
    extra: Option<Markup>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Confirm · Floe" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                h1 { "Confirm" }
                p #question { (question) }
                @if let Some(extra) = extra { (extra) }
                form #confirm method="post" action="/console/actions" {
                    input type="hidden" name="csrf" value=(csrf);
                    @for (name, value) in fields {
                        input type="hidden" name=(name) value=(value);
                    }
                    button type="submit" #confirm-button { "Confirm" }
                    " "
                    a href=(back) { "Cancel" }
                }
            }
        }
    }
}

/// A rebalance's plan, shown before it starts.
pub fn plan(p: &pb::RebalancePlan) -> Markup {
    html! {
        @if p.moves.is_empty() {
            p { "The cluster is balanced: nothing would move." }
        } @else {
            p { (p.moves.len()) " moves:" }
            ul.moves #plan {
                @for m in &p.moves { li { (move_label(m)) " (" (rate(m.load_bytes_per_sec)) ")" } }
            }
        }
        table {
            thead { tr { th { "broker" } th { "partitions before" } th { "after" } } }
            tbody {
                @for (b, a) in p.before.iter().zip(&p.after) {
                    tr { td { (b.broker) } td { (b.partitions) } td { (a.partitions) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_from_their_paths_and_back() {
        for page in [
            Page::Cluster,
            Page::Topics,
            Page::Topic("orders/eu <1>".into()),
            Page::Groups,
            Page::Group("billing".into()),
            Page::Operations,
        ] {
            assert_eq!(Page::parse(&page.path()), Some(page.clone()), "{page:?}");
        }
        assert_eq!(Page::parse("/console"), Some(Page::Cluster));
        assert_eq!(Page::parse("/console/topics/"), Some(Page::Topics));
        assert_eq!(Page::parse("/console/nope"), None);
        assert_eq!(Page::parse("/console/topics/a/b"), None);
        assert_eq!(Page::parse("/elsewhere"), None);
    }

    #[test]
    fn names_are_escaped() {
        let list = pb::TopicList {
            topics: vec![pb::TopicSummary {
                name: "<script>alert(1)</script>".into(),
                id: "x".into(),
                partitions: 1,
                configs: Default::default(),
            }],
        };
        let html = topics(&list).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("/console/topics/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"));
    }

    #[test]
    fn a_segment_row_marks_exactly_its_replicas() {
        let detail = pb::TopicDetail {
            topic: Some(pb::TopicSummary {
                name: "t".into(),
                ..Default::default()
            }),
            partitions: vec![pb::PartitionDetail {
                partition: 0,
                owner: 1,
                segments: vec![pb::SegmentDetail {
                    base_offset: 0,
                    end_offset: 10,
                    sealed: true,
                    replica_set: vec!["a".into(), "c".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let targets = pb::StorageTargetList {
            targets: ["a", "b", "c"]
                .iter()
                .map(|id| pb::StorageTargetStatus {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let html = topic(&detail, &[], &targets).into_string();
        assert!(html.contains(r#"title="replica on a""#));
        assert!(!html.contains(r#"title="replica on b""#));
        assert!(html.contains(r#"title="replica on c""#));
        assert_eq!(html.matches('●').count(), 2);
    }

    #[test]
    fn operations_list_running_first_with_progress_and_a_cancel() {
        let list = pb::OperationList {
            operations: vec![
                pb::Operation {
                    id: "mv-1".into(),
                    kind: "move".into(),
                    state: "done".into(),
                    created_ms: 2,
                    total: 1,
                    done: 1,
                    moves: vec![pb::Move {
                        topic: "t".into(),
                        partition: 3,
                        from: 1,
                        to: 2,
                        status: "done".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                pb::Operation {
                    id: "rb-1".into(),
                    kind: "rebalance".into(),
                    state: "running".into(),
                    created_ms: 1,
                    total: 4,
                    done: 1,
                    moving: 2,
                    ..Default::default()
                },
            ],
        };
        let html = operations(&list).into_string();
        let rb = html.find("rb-1").unwrap();
        let mv = html.find("mv-1").unwrap();
        assert!(rb < mv, "running first");
        assert!(html.contains("t/3: broker 1 → 2"));
        assert!(html.contains("1/4"));
        assert_eq!(html.matches(r#"data-action="cancel""#).count(), 1);
    }

    #[test]
    fn sizes_and_times_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(time(0), "–");
        assert_eq!(time(1_796_000_000_000), "2026-11-30 00:53:20 UTC");
    }
}
