//! The admin API's ACL calls, by names as Kafka's tools print them,
//! through the one ACL admin (`floe_kafka::acl`).

use std::sync::Arc;

use floe_kafka::acl::{
    pattern, permission, resource, resource_name, AclAdmin, AclBinding, AclFilter, Operation,
};
use floe_meta::MetadataStore;
use floe_rpc::admin as pb;
use tonic::Status;

fn resource_code(s: &str) -> Result<i8, Status> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "" | "ANY" => resource::ANY,
        "TOPIC" => resource::TOPIC,
        "GROUP" => resource::GROUP,
        "CLUSTER" => resource::CLUSTER,
        "TRANSACTIONAL_ID" => resource::TRANSACTIONAL_ID,
        "DELEGATION_TOKEN" => resource::DELEGATION_TOKEN,
        "USER" => resource::USER,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown resource type {other:?}"
            )))
        }
    })
}

fn pattern_code(s: &str, default: i8) -> Result<i8, Status> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "" => default,
        "ANY" => pattern::ANY,
        "MATCH" => pattern::MATCH,
        "LITERAL" => pattern::LITERAL,
        "PREFIXED" => pattern::PREFIXED,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown pattern type {other:?}"
            )))
        }
    })
}

fn permission_code(s: &str, default: i8) -> Result<i8, Status> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "" => default,
        "ANY" => permission::ANY,
        "ALLOW" => permission::ALLOW,
        "DENY" => permission::DENY,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown permission {other:?}"
            )))
        }
    })
}

fn operation(s: &str, default: Operation) -> Result<Operation, Status> {
    if s.is_empty() {
        return Ok(default);
    }
    Operation::parse(s).ok_or_else(|| Status::invalid_argument(format!("unknown operation {s:?}")))
}

fn to_pb(b: &AclBinding) -> pb::Acl {
    pb::Acl {
        resource_type: resource_name(b.resource_type).to_string(),
        resource_name: b.resource_name.clone(),
        pattern_type: if b.pattern_type == pattern::PREFIXED {
            "PREFIXED"
        } else {
            "LITERAL"
        }
        .to_string(),
        principal: b.principal.clone(),
        host: b.host.clone(),
        operation: b.operation.name().to_string(),
        permission: if b.permission == permission::DENY {
            "DENY"
        } else {
            "ALLOW"
        }
        .to_string(),
    }
}

fn filter(f: &pb::AclFilter) -> Result<AclFilter, Status> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(AclFilter {
        resource_type: resource_code(&f.resource_type)?,
        resource_name: opt(&f.resource_name),
        pattern_type: pattern_code(&f.pattern_type, pattern::ANY)?,
        principal: opt(&f.principal),
        host: opt(&f.host),
        operation: operation(&f.operation, Operation::Any)? as i8,
        permission: permission_code(&f.permission, permission::ANY)?,
    })
}

pub async fn list(meta: Arc<dyn MetadataStore>, f: pb::AclFilter) -> Result<pb::AclList, Status> {
    let f = filter(&f)?;
    let all = AclAdmin::new(meta)
        .list()
        .await
        .map_err(|e| Status::unavailable(format!("metadata store: {e}")))?;
    Ok(pb::AclList {
        acls: all.iter().filter(|b| f.matches(b)).map(to_pb).collect(),
    })
}

pub async fn create(meta: Arc<dyn MetadataStore>, a: pb::Acl) -> Result<pb::Acl, Status> {
    let b = AclBinding {
        resource_type: resource_code(&a.resource_type)?,
        resource_name: a.resource_name.clone(),
        pattern_type: pattern_code(&a.pattern_type, pattern::LITERAL)?,
        principal: a.principal.clone(),
        host: if a.host.is_empty() {
            "*".into()
        } else {
            a.host.clone()
        },
        operation: operation(&a.operation, Operation::Any)?,
        permission: permission_code(&a.permission, permission::ALLOW)?,
    };
    AclAdmin::new(meta)
        .create(&b)
        .await
        .map_err(Status::invalid_argument)?;
    Ok(to_pb(&b))
}

pub async fn delete(meta: Arc<dyn MetadataStore>, f: pb::AclFilter) -> Result<pb::AclList, Status> {
    let f = filter(&f)?;
    let gone = AclAdmin::new(meta)
        .delete(&f)
        .await
        .map_err(|e| Status::unavailable(format!("metadata store: {e}")))?;
    Ok(pb::AclList {
        acls: gone.iter().map(to_pb).collect(),
    })
}
