//! SASL users on the metadata store (`/floe/users/{name}`): their SCRAM
//! credentials set and removed by name and mechanism, read back without
//! secrets — one module for Kafka's AlterUserScramCredentials and
//! DescribeUserScramCredentials (answered by both tiers) and the admin
//! API's user calls. Every process's listeners follow the records
//! (`sasl::UserStore`), so a change applies to the next login everywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use floe_meta::schema::{UserRecord, FORMAT};
use floe_meta::{keys, Condition, MetaError, MetadataStore, Op, Txn, TxnOutcome};
use floe_protocol::kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use floe_protocol::kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use floe_protocol::kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use floe_protocol::kafka_protocol::protocol::StrBytes;
use floe_protocol::ResponseError;
use prost::Message;

use crate::sasl::{ScramCredential, ScramMechanism, MAX_ITERATIONS, MIN_ITERATIONS};

/// Why a user change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} has no credential for that mechanism")]
    NotFound(String),
    #[error("unknown SCRAM mechanism {0}")]
    Mechanism(i8),
    #[error("{0}")]
    Unacceptable(String),
    #[error("{0}")]
    Meta(#[from] MetaError),
}

impl UserError {
    /// The Kafka error code of a refused change.
    pub fn code(&self) -> ResponseError {
        match self {
            UserError::NotFound(_) => ResponseError::ResourceNotFound,
            UserError::Mechanism(_) => ResponseError::UnsupportedSaslMechanism,
            UserError::Unacceptable(_) => ResponseError::UnacceptableCredential,
            UserError::Meta(_) => ResponseError::RequestTimedOut,
        }
    }
}

/// A change to one user's credentials.
pub enum Change {
    Set(ScramCredential),
    Delete(ScramMechanism),
}

/// User admin on a metadata store.
#[derive(Clone)]
pub struct UserAdmin {
    meta: Arc<dyn MetadataStore>,
}

fn valid_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.len() > 255 || name.contains('/') {
        return Err(UserError::Unacceptable(format!(
            "user name {name:?}: 1-255 characters, no '/'"
        )));
    }
    Ok(())
}

impl UserAdmin {
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        Self { meta }
    }

    /// Every user and its (mechanism, iterations), by name.
    pub async fn list(&self) -> Result<BTreeMap<String, Vec<(ScramMechanism, u32)>>, UserError> {
        let (kvs, _) = self.meta.range(&keys::users_prefix()).await?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            if let Ok(u) = UserRecord::decode(kv.value) {
                let creds = u
                    .scram
                    .iter()
                    .filter_map(ScramCredential::from_record)
                    .map(|c| (c.mechanism, c.iterations))
                    .collect();
                out.insert(u.name, creds);
            }
        }
        Ok(out)
    }

    /// Apply `change` to `user` (a user whose last credential goes is
    /// removed), with a compare-and-swap retried on a concurrent change.
    pub async fn change(&self, user: &str, change: Change) -> Result<(), UserError> {
        valid_name(user)?;
        if let Change::Set(c) = &change {
            if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&c.iterations) {
                return Err(UserError::Unacceptable(format!(
                    "{} iterations: must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}",
                    c.iterations
                )));
            }
        }
        for _ in 0..5 {
            let current = self.meta.get(&keys::user(user)).await?;
            let (mut record, condition) = match &current {
                Some(kv) => (
                    UserRecord::decode(kv.value.clone())
                        .map_err(|e| MetaError::Corrupt(format!("user {user:?}: {e}")))?,
                    Condition::ModRevision(keys::user(user), kv.mod_revision),
                ),
                None => (
                    UserRecord {
                        format: FORMAT,
                        name: user.to_string(),
                        scram: Vec::new(),
                    },
                    Condition::Missing(keys::user(user)),
                ),
            };
            match &change {
                Change::Set(c) => {
                    record
                        .scram
                        .retain(|r| r.mechanism != c.mechanism.kafka_code() as i32);
                    record.scram.push(c.to_record());
                }
                Change::Delete(m) => {
                    let before = record.scram.len();
                    record
                        .scram
                        .retain(|r| r.mechanism != m.kafka_code() as i32);
                    if record.scram.len() == before {
                        return Err(UserError::NotFound(user.to_string()));
                    }
                }
            }
            let op = if record.scram.is_empty() {
                Op::delete(keys::user(user))
            } else {
                Op::put(keys::user(user), record.encode_to_vec())
            };
            if let TxnOutcome::Committed { .. } =
                self.meta.txn(Txn::new().when(condition).then(op)).await?
            {
                tracing::info!(user, "changed SASL user credentials");
                return Ok(());
            }
        }
        Err(UserError::Meta(MetaError::Unavailable(format!(
            "user {user:?} kept changing concurrently; retry"
        ))))
    }
}

/// DescribeUserScramCredentials: every user (none named) or those named,
/// with mechanisms and iteration counts, never a secret.
pub async fn describe(
    admin: &UserAdmin,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let mut resp = DescribeUserScramCredentialsResponse::default();
    let all = match admin.list().await {
        Ok(all) => all,
        Err(e) => {
            resp.error_code = e.code().code();
            resp.error_message = Some(StrBytes::from_string(e.to_string()));
            return resp;
        }
    };
    let wanted: Vec<String> = match req.users {
        Some(users) if !users.is_empty() => users.into_iter().map(|u| u.name.to_string()).collect(),
        _ => all.keys().cloned().collect(),
    };
    let mut seen = HashMap::new();
    for name in wanted {
        *seen.entry(name.clone()).or_insert(0) += 1;
        let mut r = DescribeUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(name.clone()));
        if seen[&name] > 1 {
            r.error_code = ResponseError::DuplicateResource.code();
            r.error_message = Some(StrBytes::from_string(format!("user {name:?} asked twice")));
        } else {
            match all.get(&name) {
                Some(creds) => {
                    r.credential_infos = creds
                        .iter()
                        .map(|(m, i)| {
                            CredentialInfo::default()
                                .with_mechanism(m.kafka_code())
                                .with_iterations(*i as i32)
                        })
                        .collect()
                }
                None => {
                    r.error_code = ResponseError::ResourceNotFound.code();
                    r.error_message = Some(StrBytes::from_string(format!(
                        "attempt to describe a user credential that does not exist: {name}"
                    )));
                }
            }
        }
        resp.results.push(r);
    }
    resp
}

/// AlterUserScramCredentials: deletions and upsertions, each user's result
/// apart (a user named twice is refused as a whole, as Kafka does).
pub async fn alter(
    admin: &UserAdmin,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut count: HashMap<String, usize> = HashMap::new();
    for n in req
        .deletions
        .iter()
        .map(|d| d.name.to_string())
        .chain(req.upsertions.iter().map(|u| u.name.to_string()))
    {
        *count.entry(n).or_default() += 1;
    }
    type Outcome = Result<(), (ResponseError, String)>;
    let mut results: Vec<(String, Outcome)> = Vec::new();
    for d in &req.deletions {
        let name = d.name.to_string();
        let r = if count[&name] > 1 {
            Err((
                ResponseError::DuplicateResource,
                format!("user {name:?} appears more than once"),
            ))
        } else {
            match ScramMechanism::from_kafka(d.mechanism) {
                None => Err(UserError::Mechanism(d.mechanism)),
                Some(m) => admin.change(&name, Change::Delete(m)).await,
            }
            .map_err(|e| (e.code(), e.to_string()))
        };
        results.push((name, r));
    }
    for u in &req.upsertions {
        let name = u.name.to_string();
        let r = if count[&name] > 1 {
            Err((
                ResponseError::DuplicateResource,
                format!("user {name:?} appears more than once"),
            ))
        } else {
            match ScramMechanism::from_kafka(u.mechanism) {
                None => Err(UserError::Mechanism(u.mechanism)),
                Some(m) if u.salted_password.len() != m.digest_len() || u.salt.is_empty() => {
                    Err(UserError::Unacceptable(
                        "salt and a salted password of the mechanism's size are needed".into(),
                    ))
                }
                Some(m) => {
                    let c = ScramCredential::from_salted_password(
                        m,
                        &u.salted_password,
                        u.salt.to_vec(),
                        u.iterations.max(0) as u32,
                    );
                    admin.change(&name, Change::Set(c)).await
                }
            }
            .map_err(|e| (e.code(), e.to_string()))
        };
        results.push((name, r));
    }
    let mut resp = AlterUserScramCredentialsResponse::default();
    for (name, r) in results {
        let mut x =
            AlterUserScramCredentialsResult::default().with_user(StrBytes::from_string(name));
        if let Err((code, msg)) = r {
            x.error_code = code.code();
            x.error_message = Some(StrBytes::from_string(msg));
        }
        resp.results.push(x);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_protocol::kafka_protocol::messages::alter_user_scram_credentials_request::{
        ScramCredentialDeletion, ScramCredentialUpsertion,
    };
    use floe_protocol::kafka_protocol::messages::describe_user_scram_credentials_request::UserName;

    async fn admin() -> (UserAdmin, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let meta = floe_meta::EmbeddedStore::open(dir.path().join("m.redb"))
            .await
            .unwrap();
        (UserAdmin::new(Arc::new(meta)), dir)
    }

    fn upsert(
        name: &str,
        m: ScramMechanism,
        iterations: i32,
        password: &str,
    ) -> ScramCredentialUpsertion {
        let salt = b"0123456789abcdef".to_vec();
        let salted = crate::sasl::salted_password(m, password.as_bytes(), &salt, iterations as u32);
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(name.into()))
            .with_mechanism(m.kafka_code())
            .with_iterations(iterations)
            .with_salt(salt.into())
            .with_salted_password(salted.into())
    }

    #[tokio::test]
    async fn credentials_set_by_the_kafka_api_log_in_and_are_described_without_secrets() {
        let (a, _d) = admin().await;
        let resp = alter(
            &a,
            AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                upsert("alice", ScramMechanism::Sha512, 8192, "pw"),
                upsert("bob", ScramMechanism::Sha256, 100, "pw"),
                upsert("carol", ScramMechanism::Sha256, 4096, "pw"),
                upsert("carol", ScramMechanism::Sha512, 4096, "pw"),
            ]),
        )
        .await;
        let codes: Vec<(String, i16)> = resp
            .results
            .iter()
            .map(|r| (r.user.to_string(), r.error_code))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("alice".into(), 0),
                ("bob".into(), ResponseError::UnacceptableCredential.code()),
                ("carol".into(), ResponseError::DuplicateResource.code()),
                ("carol".into(), ResponseError::DuplicateResource.code()),
            ]
        );
        // The stored credential verifies the password it was made from.
        let kv = a.meta.get(&keys::user("alice")).await.unwrap().unwrap();
        let rec = UserRecord::decode(kv.value).unwrap();
        let c = ScramCredential::from_record(&rec.scram[0]).unwrap();
        assert!(c.verifies(b"pw") && !c.verifies(b"pw2"));
        let list = a.list().await.unwrap();
        assert_eq!(
            list.get("alice"),
            Some(&vec![(ScramMechanism::Sha512, 8192)])
        );
        assert!(!list.contains_key("bob"));
        let d = describe(
            &a,
            DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                UserName::default().with_name(StrBytes::from_static_str("alice")),
                UserName::default().with_name(StrBytes::from_static_str("nobody")),
            ])),
        )
        .await;
        assert_eq!(d.results[0].credential_infos[0].iterations, 8192);
        assert_eq!(
            d.results[1].error_code,
            ResponseError::ResourceNotFound.code()
        );
        // Deleting the last credential removes the user; again: not found.
        let del = |m: ScramMechanism| {
            AlterUserScramCredentialsRequest::default().with_deletions(vec![
                ScramCredentialDeletion::default()
                    .with_name(StrBytes::from_static_str("alice"))
                    .with_mechanism(m.kafka_code()),
            ])
        };
        assert_eq!(
            alter(&a, del(ScramMechanism::Sha256)).await.results[0].error_code,
            ResponseError::ResourceNotFound.code()
        );
        assert_eq!(
            alter(&a, del(ScramMechanism::Sha512)).await.results[0].error_code,
            0
        );
        assert!(a.list().await.unwrap().is_empty());
        assert_eq!(
            alter(&a, del(ScramMechanism::Sha512)).await.results[0].error_code,
            ResponseError::ResourceNotFound.code()
        );
    }
}
