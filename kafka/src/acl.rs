//! Kafka's ACLs: bindings of (resource type, name, pattern) to (principal,
//! host, operation, allow or deny), kept in etcd (`/floe/acls/`, one key a
//! binding) and followed by every proxy and broker (`Authorizer`, a
//! `floe_meta::Follow` target: a change applies everywhere within the
//! watch's delay). Decisions as Kafka's StandardAuthorizer makes them:
//! super users pass; a matching DENY wins over any ALLOW; READ, WRITE,
//! DELETE and ALTER imply DESCRIBE and ALTER_CONFIGS implies
//! DESCRIBE_CONFIGS; a resource no ACL names is open only with
//! `allow_everyone_if_no_acl_found`. The Kafka APIs (CreateAcls,
//! DescribeAcls, DeleteAcls) and the admin API go through `AclAdmin`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use aws_lc_rs::digest;
use floe_meta::schema::{AclRecord, FORMAT};
use floe_meta::{
    keys, Condition, Follow, KeyValue, MetaError, MetadataStore, Op, Txn, WatchEvent,
    WatchEventKind,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;
use serde::{Deserialize, Serialize};

/// Kafka's ResourceType codes.
pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

/// Kafka's PatternType codes.
pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's AclPermissionType codes.
pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// Kafka's AclOperation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum Operation {
    Any = 1,
    All = 2,
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
    CreateTokens = 13,
    DescribeTokens = 14,
}

impl Operation {
    pub fn from_code(c: i8) -> Option<Self> {
        use Operation::*;
        Some(match c {
            1 => Any,
            2 => All,
            3 => Read,
            4 => Write,
            5 => Create,
            6 => Delete,
            7 => Alter,
            8 => Describe,
            9 => ClusterAction,
            10 => DescribeConfigs,
            11 => AlterConfigs,
            12 => IdempotentWrite,
            13 => CreateTokens,
            14 => DescribeTokens,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Operation::*;
        match self {
            Any => "ANY",
            All => "ALL",
            Read => "READ",
            Write => "WRITE",
            Create => "CREATE",
            Delete => "DELETE",
            Alter => "ALTER",
            Describe => "DESCRIBE",
            ClusterAction => "CLUSTER_ACTION",
            DescribeConfigs => "DESCRIBE_CONFIGS",
            AlterConfigs => "ALTER_CONFIGS",
            IdempotentWrite => "IDEMPOTENT_WRITE",
            CreateTokens => "CREATE_TOKENS",
            DescribeTokens => "DESCRIBE_TOKENS",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        (1..=14)
            .filter_map(Self::from_code)
            .find(|o| o.name().eq_ignore_ascii_case(&s.replace('-', "_")))
    }

    /// Whether an ACL for `self` grants `wanted` (ALL grants everything;
    /// Kafka's implied DESCRIBE and DESCRIBE_CONFIGS).
    fn grants(self, wanted: Operation) -> bool {
        use Operation::*;
        self == wanted
            || self == All
            || (wanted == Describe && matches!(self, Read | Write | Delete | Alter))
            || (wanted == DescribeConfigs && self == AlterConfigs)
    }
}

/// The name Kafka's tools print for a resource type.
pub fn resource_name(t: i8) -> &'static str {
    match t {
        resource::TOPIC => "TOPIC",
        resource::GROUP => "GROUP",
        resource::CLUSTER => "CLUSTER",
        resource::TRANSACTIONAL_ID => "TRANSACTIONAL_ID",
        resource::DELEGATION_TOKEN => "DELEGATION_TOKEN",
        resource::USER => "USER",
        resource::ANY => "ANY",
        _ => "UNKNOWN",
    }
}

/// The name of Kafka's one cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// One ACL binding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: Operation,
    pub permission: i8,
}

impl AclBinding {
    /// Whether the binding is one Kafka would store.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(
            self.resource_type,
            resource::TOPIC
                | resource::GROUP
                | resource::CLUSTER
                | resource::TRANSACTIONAL_ID
                | resource::DELEGATION_TOKEN
                | resource::USER
        ) {
            return Err(format!("invalid resource type {}", self.resource_type));
        }
        if !matches!(self.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
            return Err(format!("invalid pattern type {}", self.pattern_type));
        }
        if !matches!(self.permission, permission::ALLOW | permission::DENY) {
            return Err(format!("invalid permission {}", self.permission));
        }
        if self.operation == Operation::Any {
            return Err("an ACL names one operation (or ALL), not ANY".into());
        }
        if self.resource_name.is_empty() {
            return Err("an empty resource name".into());
        }
        if self.resource_type == resource::CLUSTER && self.resource_name != CLUSTER_NAME {
            return Err(format!("the cluster resource is named {CLUSTER_NAME}"));
        }
        if !self.principal.contains(':') {
            return Err(format!(
                "principal {:?} must be TYPE:NAME (e.g. User:alice)",
                self.principal
            ));
        }
        if self.host.is_empty() {
            return Err("an empty host (use * for any)".into());
        }
        Ok(())
    }

    /// A stable id: the same binding is one key.
    pub fn id(&self) -> String {
        let text = format!(
            "{}\0{}\0{}\0{}\0{}\0{}\0{}",
            self.resource_type,
            self.resource_name,
            self.pattern_type,
            self.principal,
            self.host,
            self.operation as i8,
            self.permission
        );
        let d = digest::digest(&digest::SHA256, text.as_bytes());
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn to_record(&self) -> AclRecord {
        AclRecord {
            format: FORMAT,
            resource_type: self.resource_type as i32,
            resource_name: self.resource_name.clone(),
            pattern_type: self.pattern_type as i32,
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: self.operation as i8 as i32,
            permission: self.permission as i32,
        }
    }

    pub fn from_record(r: &AclRecord) -> Option<Self> {
        Some(Self {
            resource_type: r.resource_type as i8,
            resource_name: r.resource_name.clone(),
            pattern_type: r.pattern_type as i8,
            principal: r.principal.clone(),
            host: r.host.clone(),
            operation: Operation::from_code(r.operation as i8)?,
            permission: r.permission as i8,
        })
    }

    /// Whether this binding applies to resource `(t, name)`.
    fn names(&self, t: i8, name: &str) -> bool {
        self.resource_type == t
            && match self.pattern_type {
                pattern::LITERAL => self.resource_name == name || self.resource_name == "*",
                pattern::PREFIXED => name.starts_with(&self.resource_name),
                _ => false,
            }
    }
}

/// A filter over bindings, as DescribeAcls and DeleteAcls carry it.
#[derive(Clone, Debug, Default)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

impl AclFilter {
    pub fn matches(&self, b: &AclBinding) -> bool {
        (self.resource_type == resource::ANY || self.resource_type == b.resource_type)
            && match self.pattern_type {
                pattern::ANY => self
                    .resource_name
                    .as_ref()
                    .is_none_or(|n| *n == b.resource_name),
                pattern::MATCH => {
                    self.resource_name
                        .as_ref()
                        .is_none_or(|n| match b.pattern_type {
                            pattern::LITERAL => b.resource_name == *n || b.resource_name == "*",
                            pattern::PREFIXED => n.starts_with(&b.resource_name),
                            _ => false,
                        })
                }
                p => {
                    p == b.pattern_type
                        && self
                            .resource_name
                            .as_ref()
                            .is_none_or(|n| *n == b.resource_name)
                }
            }
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && (self.operation == Operation::Any as i8 || self.operation == b.operation as i8)
            && (self.permission == permission::ANY || self.permission == b.permission)
    }
}

/// The authorizer's settings (`[authorizer]` in the config file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizerConfig {
    /// Check every request against the ACLs (Kafka's `authorizer.class.name`).
    pub enabled: bool,
    /// Principals allowed everything (`super.users`), e.g. "User:admin".
    pub super_users: Vec<String>,
    /// A resource no ACL names is open to all (`allow.everyone.if.no.acl.found`).
    pub allow_everyone_if_no_acl_found: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DecisionLabel {
    pub operation: String,
    pub resource_type: String,
    /// "allowed" or "denied".
    pub decision: String,
}

/// The ACLs of the cluster as this process sees them, and its decisions.
pub struct Authorizer {
    bindings: RwLock<Vec<AclBinding>>,
    super_users: HashSet<String>,
    allow_if_no_acl: bool,
    pub decisions: Family<DecisionLabel, Counter>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("bindings", &self.bindings.read().unwrap().len())
            .field("super_users", &self.super_users)
            .finish()
    }
}

impl Authorizer {
    pub fn new(config: &AuthorizerConfig) -> Arc<Self> {
        Arc::new(Self {
            bindings: RwLock::new(Vec::new()),
            super_users: config.super_users.iter().cloned().collect(),
            allow_if_no_acl: config.allow_everyone_if_no_acl_found,
            decisions: Family::default(),
        })
    }

    /// The decision counters in Prometheus text
    /// (`{prefix}_authorizations_total{operation,resource_type,decision}`),
    /// without the closing `# EOF`.
    pub fn encode_metrics(&self, prefix: &str) -> String {
        let mut r = prometheus_client::registry::Registry::with_prefix(prefix);
        r.register(
            "authorizations",
            "ACL decisions, by operation, resource type and decision",
            self.decisions.clone(),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
        out.strip_suffix("# EOF\n").unwrap_or(&out).to_string()
    }

    /// Every binding now.
    pub fn bindings(&self) -> Vec<AclBinding> {
        self.bindings.read().unwrap().clone()
    }

    /// Whether `principal` from `host` may do `op` on resource `(t, name)`.
    pub fn authorize(
        &self,
        principal: &str,
        host: IpAddr,
        op: Operation,
        t: i8,
        name: &str,
    ) -> bool {
        let allowed = self.decide(principal, host, op, t, name);
        self.decisions
            .get_or_create(&DecisionLabel {
                operation: op.name().to_string(),
                resource_type: resource_name(t).to_string(),
                decision: if allowed { "allowed" } else { "denied" }.to_string(),
            })
            .inc();
        tracing::debug!(principal, %host, operation = op.name(), resource_type = resource_name(t),
            resource = name, allowed, "authorization");
        allowed
    }

    /// Whether some ALLOW binding (not overridden by a DENY on the same
    /// pattern) gives `principal` WRITE on some topic (KIP-679).
    pub fn may_write_some_topic(&self, principal: &str, host: IpAddr) -> bool {
        if self.super_users.contains(principal) {
            return true;
        }
        let host = host.to_string();
        self.bindings.read().unwrap().iter().any(|b| {
            b.resource_type == resource::TOPIC
                && b.permission == permission::ALLOW
                && b.operation.grants(Operation::Write)
                && (b.principal == principal || b.principal == "User:*")
                && (b.host == "*" || b.host == host)
        })
    }

    fn decide(&self, principal: &str, host: IpAddr, op: Operation, t: i8, name: &str) -> bool {
        if self.super_users.contains(principal) {
            return true;
        }
        let host = host.to_string();
        let bindings = self.bindings.read().unwrap();
        let on_resource: Vec<&AclBinding> = bindings.iter().filter(|b| b.names(t, name)).collect();
        let applies = |b: &AclBinding| {
            (b.principal == principal || b.principal == "User:*")
                && (b.host == "*" || b.host == host)
        };
        // A DENY for the operation (or ALL) wins.
        if on_resource.iter().any(|b| {
            applies(b)
                && b.permission == permission::DENY
                && (b.operation == op || b.operation == Operation::All)
        }) {
            return false;
        }
        if on_resource
            .iter()
            .any(|b| applies(b) && b.permission == permission::ALLOW && b.operation.grants(op))
        {
            return true;
        }
        on_resource.is_empty() && self.allow_if_no_acl
    }
}

impl Follow for Authorizer {
    fn reset(&self, kvs: Vec<KeyValue>, _revision: i64) {
        let all = kvs
            .iter()
            .filter_map(|kv| AclRecord::decode(kv.value.clone()).ok())
            .filter_map(|r| AclBinding::from_record(&r))
            .collect();
        *self.bindings.write().unwrap() = all;
    }

    fn apply(&self, event: WatchEvent) {
        let mut b = self.bindings.write().unwrap();
        match event.kind {
            WatchEventKind::Put(kv) => {
                if let Some(new) = AclRecord::decode(kv.value)
                    .ok()
                    .and_then(|r| AclBinding::from_record(&r))
                {
                    if !b.contains(&new) {
                        b.push(new);
                    }
                }
            }
            WatchEventKind::Delete(key) => {
                let id = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|k| k.strip_prefix("/floe/acls/"))
                    .map(str::to_string);
                if let Some(id) = id {
                    b.retain(|x| x.id() != id);
                }
            }
        }
    }
}

/// ACL bindings on the metadata store.
#[derive(Clone)]
pub struct AclAdmin {
    meta: Arc<dyn MetadataStore>,
}

impl AclAdmin {
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        Self { meta }
    }

    /// Every stored binding.
    pub async fn list(&self) -> Result<Vec<AclBinding>, MetaError> {
        let (kvs, _) = self.meta.range(&keys::acls_prefix()).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| AclRecord::decode(kv.value.clone()).ok())
            .filter_map(|r| AclBinding::from_record(&r))
            .collect())
    }

    /// Store `b` (an existing identical binding is kept).
    pub async fn create(&self, b: &AclBinding) -> Result<(), String> {
        b.validate()?;
        let key = keys::acl(&b.id());
        self.meta
            .txn(
                Txn::new()
                    .when(Condition::Missing(key.clone()))
                    .then(Op::put(key, b.to_record().encode_to_vec())),
            )
            .await
            .map_err(|e| format!("metadata store: {e}"))?;
        tracing::info!(binding = ?b, "created ACL");
        Ok(())
    }

    /// Delete every binding `f` matches; the bindings deleted.
    pub async fn delete(&self, f: &AclFilter) -> Result<Vec<AclBinding>, MetaError> {
        let mut gone = Vec::new();
        for b in self.list().await? {
            if f.matches(&b) {
                self.meta
                    .txn(Txn::new().then(Op::delete(keys::acl(&b.id()))))
                    .await?;
                tracing::info!(binding = ?b, "deleted ACL");
                gone.push(b);
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(t: i8, name: &str, pat: i8, principal: &str, op: Operation, perm: i8) -> AclBinding {
        AclBinding {
            resource_type: t,
            resource_name: name.into(),
            pattern_type: pat,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    fn az(bindings: Vec<AclBinding>, allow_if_none: bool) -> Arc<Authorizer> {
        let a = Authorizer::new(&AuthorizerConfig {
            enabled: true,
            super_users: vec!["User:admin".into()],
            allow_everyone_if_no_acl_found: allow_if_none,
        });
        *a.bindings.write().unwrap() = bindings;
        a
    }

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn decisions_follow_kafkas_rules() {
        use Operation::*;
        let a = az(
            vec![
                bind(
                    resource::TOPIC,
                    "orders-",
                    pattern::PREFIXED,
                    "User:alice",
                    Write,
                    permission::ALLOW,
                ),
                bind(
                    resource::TOPIC,
                    "orders-secret",
                    pattern::LITERAL,
                    "User:alice",
                    All,
                    permission::DENY,
                ),
                bind(
                    resource::TOPIC,
                    "public",
                    pattern::LITERAL,
                    "User:*",
                    Read,
                    permission::ALLOW,
                ),
                bind(
                    resource::GROUP,
                    "*",
                    pattern::LITERAL,
                    "User:bob",
                    Read,
                    permission::ALLOW,
                ),
            ],
            false,
        );
        let t = resource::TOPIC;
        assert!(a.authorize("User:alice", HOST, Write, t, "orders-eu"));
        assert!(
            a.authorize("User:alice", HOST, Describe, t, "orders-eu"),
            "WRITE implies DESCRIBE"
        );
        assert!(!a.authorize("User:alice", HOST, Read, t, "orders-eu"));
        assert!(
            !a.authorize("User:alice", HOST, Write, t, "orders-secret"),
            "deny wins"
        );
        assert!(!a.authorize("User:alice", HOST, Write, t, "payments"));
        assert!(
            a.authorize("User:bob", HOST, Read, t, "public"),
            "wildcard principal"
        );
        assert!(a.authorize("User:bob", HOST, Read, resource::GROUP, "any-group"));
        assert!(!a.authorize("User:bob", HOST, Delete, resource::GROUP, "any-group"));
        assert!(
            a.authorize("User:admin", HOST, Delete, t, "orders-secret"),
            "super user"
        );
        // No ACL names it: closed, unless allow_everyone_if_no_acl_found.
        assert!(!a.authorize("User:carol", HOST, Read, t, "nobody-s"));
        let open = az(a.bindings(), true);
        assert!(open.authorize("User:carol", HOST, Read, t, "nobody-s"));
        assert!(
            !open.authorize("User:carol", HOST, Write, t, "orders-eu"),
            "named: ACLs rule"
        );
    }

    #[test]
    fn host_and_filters_and_validation() {
        use Operation::*;
        let mut b = bind(
            resource::TOPIC,
            "t",
            pattern::LITERAL,
            "User:alice",
            Read,
            permission::ALLOW,
        );
        b.host = "10.0.0.1".into();
        let a = az(vec![b.clone()], false);
        assert!(!a.authorize("User:alice", HOST, Read, resource::TOPIC, "t"));
        assert!(a.authorize(
            "User:alice",
            "10.0.0.1".parse().unwrap(),
            Read,
            resource::TOPIC,
            "t"
        ));
        let f = AclFilter {
            resource_type: resource::ANY,
            pattern_type: pattern::MATCH,
            resource_name: Some("t".into()),
            operation: Any as i8,
            permission: permission::ANY,
            ..Default::default()
        };
        assert!(f.matches(&b));
        let f2 = AclFilter {
            principal: Some("User:bob".into()),
            ..f.clone()
        };
        assert!(!f2.matches(&b));
        assert_eq!(b.id(), b.clone().id());
        assert!(b.validate().is_ok());
        for bad in [
            AclBinding {
                operation: Any,
                ..b.clone()
            },
            AclBinding {
                principal: "alice".into(),
                ..b.clone()
            },
            AclBinding {
                resource_type: resource::CLUSTER,
                ..b.clone()
            },
            AclBinding {
                pattern_type: pattern::MATCH,
                ..b.clone()
            },
            AclBinding {
                permission: permission::ANY,
                ..b.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(Operation::parse("describe-configs"), Some(DescribeConfigs));
        assert_eq!(Operation::parse("write"), Some(Write));
    }

    #[tokio::test]
    async fn bindings_are_stored_once_followed_and_deleted_by_filter() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetadataStore> = Arc::new(
            floe_meta::EmbeddedStore::open(dir.path().join("m.redb"))
                .await
                .unwrap(),
        );
        let admin = AclAdmin::new(meta.clone());
        let a = Authorizer::new(&AuthorizerConfig::default());
        let stop = tokio_util::sync::CancellationToken::new();
        floe_meta::Follower::start(
            meta.clone(),
            vec![keys::acls_prefix()],
            a.clone(),
            stop.clone(),
        )
        .await
        .unwrap();
        let b = bind(
            resource::TOPIC,
            "t",
            pattern::LITERAL,
            "User:alice",
            Operation::Read,
            permission::ALLOW,
        );
        admin.create(&b).await.unwrap();
        admin.create(&b).await.unwrap();
        assert_eq!(admin.list().await.unwrap(), vec![b.clone()]);
        let until = |want: usize| {
            let a = a.clone();
            async move {
                for _ in 0..100 {
                    if a.bindings().len() == want {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                panic!("the authorizer never saw {want} bindings");
            }
        };
        until(1).await;
        let gone = admin
            .delete(&AclFilter {
                resource_type: resource::TOPIC,
                pattern_type: pattern::ANY,
                operation: Operation::Any as i8,
                permission: permission::ANY,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(gone, vec![b]);
        until(0).await;
        stop.cancel();
    }
}

/// The Kafka ACL APIs over an `AclAdmin`.
pub mod api {
    use floe_protocol::kafka_protocol::messages::*;
    use floe_protocol::kafka_protocol::protocol::StrBytes;
    use floe_protocol::ResponseError;

    use super::*;

    fn s(v: impl Into<String>) -> StrBytes {
        StrBytes::from_string(v.into())
    }

    fn filter(
        resource_type: i8,
        name: Option<&StrBytes>,
        pattern_type: i8,
        principal: Option<&StrBytes>,
        host: Option<&StrBytes>,
        operation: i8,
        permission: i8,
    ) -> AclFilter {
        AclFilter {
            resource_type,
            resource_name: name.map(|n| n.to_string()),
            pattern_type,
            principal: principal.map(|p| p.to_string()),
            host: host.map(|h| h.to_string()),
            operation,
            permission,
        }
    }

    pub async fn create(admin: &AclAdmin, req: CreateAclsRequest) -> CreateAclsResponse {
        let mut resp = CreateAclsResponse::default();
        for c in req.creations {
            let mut r = create_acls_response::AclCreationResult::default();
            let binding = Operation::from_code(c.operation).map(|operation| AclBinding {
                resource_type: c.resource_type,
                resource_name: c.resource_name.to_string(),
                pattern_type: c.resource_pattern_type,
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation,
                permission: c.permission_type,
            });
            let outcome = match binding {
                None => Err(format!("invalid operation {}", c.operation)),
                Some(b) => admin.create(&b).await,
            };
            if let Err(e) = outcome {
                r.error_code = ResponseError::InvalidRequest.code();
                r.error_message = Some(s(e));
            }
            resp.results.push(r);
        }
        resp
    }

    pub async fn describe(admin: &AclAdmin, req: DescribeAclsRequest) -> DescribeAclsResponse {
        let f = filter(
            req.resource_type_filter,
            req.resource_name_filter.as_ref(),
            req.pattern_type_filter,
            req.principal_filter.as_ref(),
            req.host_filter.as_ref(),
            req.operation,
            req.permission_type,
        );
        let mut resp = DescribeAclsResponse::default();
        let all = match admin.list().await {
            Ok(all) => all,
            Err(e) => {
                resp.error_code = ResponseError::RequestTimedOut.code();
                resp.error_message = Some(s(e.to_string()));
                return resp;
            }
        };
        let mut by_resource: std::collections::BTreeMap<(i8, String, i8), Vec<AclBinding>> =
            Default::default();
        for b in all.into_iter().filter(|b| f.matches(b)) {
            by_resource
                .entry((b.resource_type, b.resource_name.clone(), b.pattern_type))
                .or_default()
                .push(b);
        }
        for ((t, name, p), bindings) in by_resource {
            resp.resources.push(
                describe_acls_response::DescribeAclsResource::default()
                    .with_resource_type(t)
                    .with_resource_name(s(name))
                    .with_pattern_type(p)
                    .with_acls(
                        bindings
                            .into_iter()
                            .map(|b| {
                                describe_acls_response::AclDescription::default()
                                    .with_principal(s(b.principal))
                                    .with_host(s(b.host))
                                    .with_operation(b.operation as i8)
                                    .with_permission_type(b.permission)
                            })
                            .collect(),
                    ),
            );
        }
        resp
    }

    pub async fn delete(admin: &AclAdmin, req: DeleteAclsRequest) -> DeleteAclsResponse {
        let mut resp = DeleteAclsResponse::default();
        for q in req.filters {
            let f = filter(
                q.resource_type_filter,
                q.resource_name_filter.as_ref(),
                q.pattern_type_filter,
                q.principal_filter.as_ref(),
                q.host_filter.as_ref(),
                q.operation,
                q.permission_type,
            );
            let mut r = delete_acls_response::DeleteAclsFilterResult::default();
            match admin.delete(&f).await {
                Ok(gone) => {
                    r.matching_acls = gone
                        .into_iter()
                        .map(|b| {
                            delete_acls_response::DeleteAclsMatchingAcl::default()
                                .with_resource_type(b.resource_type)
                                .with_resource_name(s(b.resource_name))
                                .with_pattern_type(b.pattern_type)
                                .with_principal(s(b.principal))
                                .with_host(s(b.host))
                                .with_operation(b.operation as i8)
                                .with_permission_type(b.permission)
                        })
                        .collect()
                }
                Err(e) => {
                    r.error_code = ResponseError::RequestTimedOut.code();
                    r.error_message = Some(s(e.to_string()));
                }
            }
            resp.filter_results.push(r);
        }
        resp
    }
}
