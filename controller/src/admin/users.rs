//! The admin API's user calls: SCRAM credentials salted here from the
//! password the operator gives (over the admin API's token and TLS), then
//! written through the one user admin (`floe_kafka::users`).

use std::sync::Arc;

use floe_kafka::sasl::{ScramCredential, ScramMechanism, MIN_ITERATIONS};
use floe_kafka::users::{Change, UserAdmin, UserError};
use floe_meta::MetadataStore;
use floe_rpc::admin as pb;
use tonic::Status;

fn status(e: UserError) -> Status {
    match e {
        UserError::NotFound(_) => Status::not_found(e.to_string()),
        UserError::Mechanism(_) | UserError::Unacceptable(_) => {
            Status::invalid_argument(e.to_string())
        }
        UserError::Meta(_) => Status::unavailable(format!("metadata store: {e}")),
    }
}

fn mechanisms(names: &[String]) -> Result<Vec<ScramMechanism>, Status> {
    if names.is_empty() {
        return Ok(vec![ScramMechanism::Sha256, ScramMechanism::Sha512]);
    }
    names
        .iter()
        .map(|n| match n.as_str() {
            "SCRAM-SHA-256" => Ok(ScramMechanism::Sha256),
            "SCRAM-SHA-512" => Ok(ScramMechanism::Sha512),
            other => Err(Status::invalid_argument(format!(
                "unknown mechanism {other:?} (SCRAM-SHA-256, SCRAM-SHA-512)"
            ))),
        })
        .collect()
}

fn user(name: String, creds: &[(ScramMechanism, u32)]) -> pb::User {
    pb::User {
        name,
        credentials: creds
            .iter()
            .map(|(m, i)| pb::UserCredential {
                mechanism: m.name().to_string(),
                iterations: *i,
            })
            .collect(),
    }
}

async fn one(admin: &UserAdmin, name: &str) -> Result<pb::User, Status> {
    let all = admin.list().await.map_err(status)?;
    Ok(user(
        name.to_string(),
        all.get(name).map(Vec::as_slice).unwrap_or_default(),
    ))
}

pub async fn list(meta: Arc<dyn MetadataStore>) -> Result<pb::UserList, Status> {
    let all = UserAdmin::new(meta).list().await.map_err(status)?;
    Ok(pb::UserList {
        users: all.into_iter().map(|(n, c)| user(n, &c)).collect(),
    })
}

pub async fn set_password(
    meta: Arc<dyn MetadataStore>,
    r: pb::SetUserPasswordRequest,
) -> Result<pb::User, Status> {
    if r.password.is_empty() {
        return Err(Status::invalid_argument("an empty password"));
    }
    let iterations = if r.iterations == 0 {
        MIN_ITERATIONS
    } else {
        r.iterations
    };
    let admin = UserAdmin::new(meta);
    for m in mechanisms(&r.mechanisms)? {
        let c = ScramCredential::new(m, &r.password, iterations);
        admin
            .change(&r.name, Change::Set(c))
            .await
            .map_err(status)?;
    }
    one(&admin, &r.name).await
}

pub async fn delete(
    meta: Arc<dyn MetadataStore>,
    r: pb::DeleteUserRequest,
) -> Result<pb::User, Status> {
    let admin = UserAdmin::new(meta);
    let had = admin.list().await.map_err(status)?;
    let Some(creds) = had.get(&r.name) else {
        return Err(Status::not_found(format!("unknown user {:?}", r.name)));
    };
    let wanted = if r.mechanisms.is_empty() {
        creds.iter().map(|(m, _)| *m).collect()
    } else {
        mechanisms(&r.mechanisms)?
    };
    for m in wanted {
        admin
            .change(&r.name, Change::Delete(m))
            .await
            .map_err(status)?;
    }
    one(&admin, &r.name).await
}
