//! SASL on a Kafka listener (SASL_PLAINTEXT, SASL_SSL): the server side of
//! PLAIN and of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), over
//! users' salted credentials followed from the metadata store
//! (`/floe/users/`, `UserRecord`) — never a password. PLAIN is checked
//! against the user's SCRAM credential (the password is salted and hashed
//! as SCRAM would, then compared). An unknown user costs the same work and
//! gets the same answer as a wrong password (a made-up credential stands
//! in), so timing tells nothing about which users exist.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine;
use floe_meta::schema::{ScramCredentialRecord, UserRecord};
use floe_meta::{keys, Follow, KeyValue, WatchEvent, WatchEventKind};
use prost::Message;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The iteration counts Kafka accepts for SCRAM credentials.
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

/// A SCRAM hash function (Kafka's ScramMechanism: 1 and 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub fn from_kafka(code: i8) -> Option<Self> {
        match code {
            1 => Some(Self::Sha256),
            2 => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn kafka_code(self) -> i8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    /// Bytes of the mechanism's hash (and of a SaltedPassword).
    pub fn digest_len(self) -> usize {
        self.len()
    }

    fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

/// A SASL mechanism a listener may enable (Kafka's `sasl.enabled.mechanisms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(ScramMechanism),
    /// A JWT bearer token (KIP-255), validated by [`crate::oauth`].
    OAuthBearer,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "SCRAM-SHA-256" => Some(Self::Scram(ScramMechanism::Sha256)),
            "SCRAM-SHA-512" => Some(Self::Scram(ScramMechanism::Sha512)),
            "OAUTHBEARER" => Some(Self::OAuthBearer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(m) => m.name(),
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

fn hmac(m: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(m.hmac(), key), data)
        .as_ref()
        .to_vec()
}

fn hash(m: ScramMechanism, data: &[u8]) -> Vec<u8> {
    digest::digest(m.digest(), data).as_ref().to_vec()
}

/// A user's salted SCRAM credential: what is stored, never the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredential {
    pub mechanism: ScramMechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// The credential of `password` with a fresh random salt.
    pub fn new(mechanism: ScramMechanism, password: &str, iterations: u32) -> Self {
        let mut salt = vec![0u8; 32];
        SystemRandom::new()
            .fill(&mut salt)
            .expect("the system's random source works");
        let salted = salted_password(mechanism, password.as_bytes(), &salt, iterations);
        Self::from_salted_password(mechanism, &salted, salt, iterations)
    }

    /// The credential from a SaltedPassword (what AlterUserScramCredentials
    /// carries: the client salts and hashes, the password never travels).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salted: &[u8],
        salt: Vec<u8>,
        iterations: u32,
    ) -> Self {
        let client_key = hmac(mechanism, salted, b"Client Key");
        Self {
            mechanism,
            salt,
            iterations,
            stored_key: hash(mechanism, &client_key),
            server_key: hmac(mechanism, salted, b"Server Key"),
        }
    }

    /// Whether `password` is this credential's (constant time).
    pub fn verifies(&self, password: &[u8]) -> bool {
        let salted = salted_password(self.mechanism, password, &self.salt, self.iterations);
        let client_key = hmac(self.mechanism, &salted, b"Client Key");
        verify_slices_are_equal(&hash(self.mechanism, &client_key), &self.stored_key).is_ok()
    }

    pub fn to_record(&self) -> ScramCredentialRecord {
        ScramCredentialRecord {
            mechanism: self.mechanism.kafka_code() as i32,
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }

    pub fn from_record(r: &ScramCredentialRecord) -> Option<Self> {
        Some(Self {
            mechanism: ScramMechanism::from_kafka(r.mechanism as i8)?,
            salt: r.salt.clone(),
            iterations: r.iterations,
            stored_key: r.stored_key.clone(),
            server_key: r.server_key.clone(),
        })
    }
}

/// SCRAM's Hi(): PBKDF2 with the mechanism's HMAC.
pub fn salted_password(
    m: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let mut out = vec![0u8; m.len()];
    pbkdf2::derive(
        m.pbkdf2(),
        NonZeroU32::new(iterations.max(1)).expect("at least one"),
        salt,
        password,
        &mut out,
    );
    out
}

/// Where a listener finds users' credentials.
pub trait Credentials: Send + Sync {
    fn scram(&self, user: &str, mechanism: ScramMechanism) -> Option<ScramCredential>;
}

/// Users followed from `/floe/users/` (a `floe_meta::Follow` target): a
/// credential added, changed or deleted there applies to the next login.
#[derive(Default)]
pub struct UserStore {
    users: RwLock<HashMap<String, Vec<ScramCredential>>>,
}

impl UserStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn put(map: &mut HashMap<String, Vec<ScramCredential>>, value: &[u8]) {
        if let Ok(u) = UserRecord::decode(value) {
            let creds = u
                .scram
                .iter()
                .filter_map(ScramCredential::from_record)
                .collect();
            map.insert(u.name, creds);
        }
    }

    /// Users and their mechanisms, by name.
    pub fn users(&self) -> Vec<(String, Vec<(ScramMechanism, u32)>)> {
        let mut v: Vec<_> = self
            .users
            .read()
            .unwrap()
            .iter()
            .map(|(n, c)| {
                (
                    n.clone(),
                    c.iter().map(|c| (c.mechanism, c.iterations)).collect(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

impl Credentials for UserStore {
    fn scram(&self, user: &str, mechanism: ScramMechanism) -> Option<ScramCredential> {
        self.users
            .read()
            .unwrap()
            .get(user)?
            .iter()
            .find(|c| c.mechanism == mechanism)
            .cloned()
    }
}

impl Follow for UserStore {
    fn reset(&self, kvs: Vec<KeyValue>, _revision: i64) {
        let mut map = HashMap::new();
        for kv in kvs {
            Self::put(&mut map, &kv.value);
        }
        *self.users.write().unwrap() = map;
    }

    fn apply(&self, event: WatchEvent) {
        let mut map = self.users.write().unwrap();
        match event.kind {
            WatchEventKind::Put(kv) => Self::put(&mut map, &kv.value),
            WatchEventKind::Delete(k) => {
                if let Some(name) = keys::parse_user(&k) {
                    map.remove(&name);
                }
            }
        }
    }
}

/// Why an authentication failed; the message goes to the client (Kafka's
/// SASL_AUTHENTICATION_FAILED carries it) and to the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Bad credentials: the same message whatever was wrong.
    #[error("Authentication failed: invalid credentials")]
    BadCredentials,
    /// A malformed or out-of-order message.
    #[error("Authentication failed: {0}")]
    Protocol(String),
}

/// What one step of an exchange gives back.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this token and wait for the client's next.
    Continue(Vec<u8>),
    /// Authenticated as `principal` ("User:alice"); send this last token.
    /// A login that lapses (a bearer token's expiry; ms since the Unix
    /// epoch) says when in `expires_ms`.
    Done {
        token: Vec<u8>,
        principal: String,
        expires_ms: Option<i64>,
    },
}

/// What SCRAM's final step checks against.
struct ScramFinal {
    mechanism: ScramMechanism,
    user: String,
    credential: ScramCredential,
    /// The credential was made up (no such user): fail at the proof.
    real: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

enum State {
    Plain,
    OAuth(Option<Arc<crate::oauth::OAuthValidator>>),
    ScramFirst(ScramMechanism),
    ScramFinal(Box<ScramFinal>),
    Finished,
}

/// The server side of one SASL exchange.
pub struct SaslServer {
    state: State,
    /// A secret of this process for made-up credentials.
    secret: Arc<[u8]>,
}

/// Largest token accepted (a client-first message, a PLAIN login).
pub const MAX_TOKEN: usize = 8192;

impl SaslServer {
    /// An exchange for `mechanism` (OAUTHBEARER: see
    /// [`SaslServer::oauth`]).
    pub fn new(mechanism: Mechanism, secret: Arc<[u8]>) -> Self {
        let state = match mechanism {
            Mechanism::Plain => State::Plain,
            Mechanism::Scram(m) => State::ScramFirst(m),
            Mechanism::OAuthBearer => State::OAuth(None),
        };
        Self { state, secret }
    }

    /// An OAUTHBEARER exchange validating tokens with `validator` (None:
    /// every login fails, as on a listener with no keys configured).
    pub fn oauth(validator: Option<Arc<crate::oauth::OAuthValidator>>, secret: Arc<[u8]>) -> Self {
        Self {
            state: State::OAuth(validator),
            secret,
        }
    }

    /// Feed the client's next token.
    pub fn step(&mut self, token: &[u8], creds: &dyn Credentials) -> Result<Step, SaslError> {
        let limit = match self.state {
            State::OAuth(_) => crate::oauth::MAX_OAUTH_TOKEN,
            _ => MAX_TOKEN,
        };
        if token.len() > limit {
            self.state = State::Finished;
            return Err(SaslError::Protocol(format!(
                "a {}-byte token is over the limit of {limit}",
                token.len()
            )));
        }
        let state = std::mem::replace(&mut self.state, State::Finished);
        match state {
            State::Plain => self.plain(token, creds),
            State::OAuth(validator) => {
                let Some(validator) = validator else {
                    return Err(SaslError::Protocol(
                        "OAUTHBEARER has no keys configured here".into(),
                    ));
                };
                let v = crate::oauth::authenticate(&validator, token)?;
                Ok(Step::Done {
                    token: Vec::new(),
                    principal: v.principal,
                    expires_ms: Some(v.expires_ms),
                })
            }
            State::ScramFirst(m) => self.scram_first(m, token, creds),
            State::ScramFinal(f) => {
                let ScramFinal {
                    mechanism,
                    user,
                    credential,
                    real,
                    client_first_bare,
                    server_first,
                    nonce,
                    gs2_header,
                } = *f;
                let final_msg = std::str::from_utf8(token)
                    .map_err(|_| SaslError::Protocol("client-final message is not UTF-8".into()))?;
                let (without_proof, proof) = final_msg.rsplit_once(",p=").ok_or_else(|| {
                    SaslError::Protocol("client-final message without a proof".into())
                })?;
                let mut attrs = without_proof.split(',');
                let binding = attrs
                    .next()
                    .and_then(|a| a.strip_prefix("c="))
                    .ok_or_else(|| SaslError::Protocol("client-final message without c=".into()))?;
                let client_nonce = attrs
                    .next()
                    .and_then(|a| a.strip_prefix("r="))
                    .ok_or_else(|| SaslError::Protocol("client-final message without r=".into()))?;
                if binding != B64.encode(gs2_header.as_bytes()) {
                    return Err(SaslError::Protocol("channel binding does not match".into()));
                }
                if client_nonce != nonce {
                    return Err(SaslError::Protocol("nonce does not match".into()));
                }
                let proof = B64
                    .decode(proof)
                    .map_err(|_| SaslError::Protocol("proof is not base64".into()))?;
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let signature = hmac(mechanism, &credential.stored_key, auth_message.as_bytes());
                if proof.len() != signature.len() {
                    return Err(SaslError::BadCredentials);
                }
                let client_key: Vec<u8> =
                    proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
                let ok =
                    verify_slices_are_equal(&hash(mechanism, &client_key), &credential.stored_key)
                        .is_ok();
                if !(ok && real) {
                    return Err(SaslError::BadCredentials);
                }
                let server_signature =
                    hmac(mechanism, &credential.server_key, auth_message.as_bytes());
                Ok(Step::Done {
                    token: format!("v={}", B64.encode(server_signature)).into_bytes(),
                    principal: format!("User:{user}"),
                    expires_ms: None,
                })
            }
            State::Finished => Err(SaslError::Protocol("the exchange is over".into())),
        }
    }

    /// A made-up credential for a user that does not exist: the same
    /// derivation cost, stable per user (a client cannot tell by asking
    /// twice), never verifying.
    fn made_up(&self, m: ScramMechanism, user: &str) -> ScramCredential {
        let salt = hmac(ScramMechanism::Sha256, &self.secret, user.as_bytes())[..16].to_vec();
        let mut keys = vec![0u8; m.len()];
        SystemRandom::new()
            .fill(&mut keys)
            .expect("the system's random source works");
        ScramCredential {
            mechanism: m,
            salt,
            iterations: MIN_ITERATIONS,
            stored_key: keys.clone(),
            server_key: keys,
        }
    }

    fn plain(&mut self, token: &[u8], creds: &dyn Credentials) -> Result<Step, SaslError> {
        let mut parts = token.split(|b| *b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslError::Protocol(
                "a PLAIN message is authzid NUL user NUL password".into(),
            ));
        };
        let user = std::str::from_utf8(user)
            .map_err(|_| SaslError::Protocol("the user name is not UTF-8".into()))?;
        if user.is_empty() {
            return Err(SaslError::Protocol("empty user name".into()));
        }
        if !authzid.is_empty() && authzid != user.as_bytes() {
            return Err(SaslError::Protocol(
                "authorization id differs from the user name".into(),
            ));
        }
        // The strongest credential the user has; a made-up one otherwise.
        let found = creds
            .scram(user, ScramMechanism::Sha512)
            .or_else(|| creds.scram(user, ScramMechanism::Sha256));
        let (credential, real) = match found {
            Some(c) => (c, true),
            None => (self.made_up(ScramMechanism::Sha512, user), false),
        };
        if credential.verifies(password) && real {
            Ok(Step::Done {
                token: Vec::new(),
                principal: format!("User:{user}"),
                expires_ms: None,
            })
        } else {
            Err(SaslError::BadCredentials)
        }
    }

    fn scram_first(
        &mut self,
        m: ScramMechanism,
        token: &[u8],
        creds: &dyn Credentials,
    ) -> Result<Step, SaslError> {
        let msg = std::str::from_utf8(token)
            .map_err(|_| SaslError::Protocol("client-first message is not UTF-8".into()))?;
        // gs2-header: "n," or "y," (no channel binding), then an optional
        // authzid "a=...", then ",".
        let (flag, rest) = msg.split_once(',').ok_or_else(|| {
            SaslError::Protocol("client-first message without a gs2 header".into())
        })?;
        if flag != "n" && flag != "y" {
            return Err(SaslError::Protocol(
                "channel binding is not supported".into(),
            ));
        }
        let (authzid, bare) = rest.split_once(',').ok_or_else(|| {
            SaslError::Protocol("client-first message without a gs2 header".into())
        })?;
        let gs2_header = format!("{flag},{authzid},");
        let mut user = None;
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(v) = attr.strip_prefix("n=") {
                user = Some(unescape(v)?);
            } else if let Some(v) = attr.strip_prefix("r=") {
                client_nonce = Some(v.to_string());
            } else if attr.starts_with("m=") {
                return Err(SaslError::Protocol(
                    "mandatory extensions are not supported".into(),
                ));
            } else if attr.starts_with("tokenauth") {
                return Err(SaslError::Protocol(
                    "delegation tokens are not supported".into(),
                ));
            }
        }
        let user =
            user.ok_or_else(|| SaslError::Protocol("client-first message without n=".into()))?;
        let client_nonce = client_nonce
            .ok_or_else(|| SaslError::Protocol("client-first message without r=".into()))?;
        if user.is_empty() || client_nonce.is_empty() || client_nonce.contains(',') {
            return Err(SaslError::Protocol("empty user name or nonce".into()));
        }
        if let Some(a) = authzid.strip_prefix("a=") {
            if unescape(a)? != user {
                return Err(SaslError::Protocol(
                    "authorization id differs from the user name".into(),
                ));
            }
        } else if !authzid.is_empty() {
            return Err(SaslError::Protocol("malformed gs2 header".into()));
        }
        let (credential, real) = match creds.scram(&user, m) {
            Some(c) => (c, true),
            None => (self.made_up(m, &user), false),
        };
        let mut server_nonce = [0u8; 18];
        SystemRandom::new()
            .fill(&mut server_nonce)
            .expect("the system's random source works");
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        self.state = State::ScramFinal(Box::new(ScramFinal {
            mechanism: m,
            user,
            credential,
            real,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            gs2_header,
        }));
        Ok(Step::Continue(server_first.into_bytes()))
    }
}

/// A saslname: "=2C" is ',' and "=3D" is '='; any other '=' is an error.
fn unescape(v: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslError::Protocol("bad escape in a user name".into())),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A random secret for made-up credentials (one per process).
pub fn process_secret() -> Arc<[u8]> {
    let mut s = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut s)
        .expect("the system's random source works");
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client doing what librdkafka does, for the tests.
    struct Client {
        m: ScramMechanism,
        user: String,
        password: String,
        nonce: String,
        first_bare: String,
    }

    impl Client {
        fn new(m: ScramMechanism, user: &str, password: &str) -> Self {
            Self {
                m,
                user: user.into(),
                password: password.into(),
                nonce: "fyko+d2lbbFgONRv9qkxdawL".into(),
                first_bare: String::new(),
            }
        }
        fn first(&mut self) -> Vec<u8> {
            self.first_bare = format!(
                "n={},r={}",
                self.user.replace('=', "=3D").replace(',', "=2C"),
                self.nonce
            );
            format!("n,,{}", self.first_bare).into_bytes()
        }
        fn last(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let sf = std::str::from_utf8(server_first).unwrap();
            let mut nonce = "";
            let mut salt = vec![];
            let mut iterations = 0;
            for a in sf.split(',') {
                if let Some(v) = a.strip_prefix("r=") {
                    nonce = v;
                } else if let Some(v) = a.strip_prefix("s=") {
                    salt = B64.decode(v).unwrap();
                } else if let Some(v) = a.strip_prefix("i=") {
                    iterations = v.parse().unwrap();
                }
            }
            let salted = salted_password(self.m, self.password.as_bytes(), &salt, iterations);
            let client_key = hmac(self.m, &salted, b"Client Key");
            let stored = hash(self.m, &client_key);
            let without = format!("c=biws,r={nonce}");
            let auth = format!("{},{sf},{without}", self.first_bare);
            let sig = hmac(self.m, &stored, auth.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            let server_key = hmac(self.m, &salted, b"Server Key");
            let expect = format!(
                "v={}",
                B64.encode(hmac(self.m, &server_key, auth.as_bytes()))
            );
            (
                format!("{without},p={}", B64.encode(proof)).into_bytes(),
                expect.into_bytes(),
            )
        }
    }

    fn store(users: &[(&str, &str)]) -> Arc<UserStore> {
        let s = UserStore::new();
        let mut kvs = Vec::new();
        for (name, pw) in users {
            let rec = UserRecord {
                format: 1,
                name: name.to_string(),
                scram: [ScramMechanism::Sha256, ScramMechanism::Sha512]
                    .iter()
                    .map(|m| ScramCredential::new(*m, pw, MIN_ITERATIONS).to_record())
                    .collect(),
            };
            kvs.push(KeyValue {
                key: keys::user(name),
                value: rec.encode_to_vec().into(),
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                lease: None,
            });
        }
        s.reset(kvs, 1);
        s
    }

    fn scram(store: &UserStore, c: &mut Client) -> Result<Step, SaslError> {
        let mut s = SaslServer::new(Mechanism::Scram(c.m), process_secret());
        let Step::Continue(sf) = s.step(&c.first(), store)? else {
            panic!("SCRAM has two steps")
        };
        let (last, expect) = c.last(&sf);
        let r = s.step(&last, store);
        if let Ok(Step::Done { token, .. }) = &r {
            assert_eq!(token, &expect, "the server proves it knows the key");
        }
        r
    }

    #[test]
    fn scram_logs_in_with_the_right_password_only_for_both_hashes() {
        let users = store(&[("alice", "s3cret"), ("b,o=b", "pw")]);
        for m in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
            let ok = scram(&users, &mut Client::new(m, "alice", "s3cret")).unwrap();
            assert!(matches!(ok, Step::Done { ref principal, .. } if principal == "User:alice"));
            let ok = scram(&users, &mut Client::new(m, "b,o=b", "pw")).unwrap();
            assert!(matches!(ok, Step::Done { ref principal, .. } if principal == "User:b,o=b"));
            assert_eq!(
                scram(&users, &mut Client::new(m, "alice", "wrong")),
                Err(SaslError::BadCredentials)
            );
            // An unknown user fails the same way, at the same step.
            assert_eq!(
                scram(&users, &mut Client::new(m, "mallory", "s3cret")),
                Err(SaslError::BadCredentials)
            );
        }
    }

    #[test]
    fn an_unknown_user_gets_a_stable_made_up_salt_and_the_real_cost() {
        let users = store(&[("alice", "pw")]);
        let secret = process_secret();
        let first = |user: &str| {
            let mut s = SaslServer::new(Mechanism::Scram(ScramMechanism::Sha256), secret.clone());
            let Ok(Step::Continue(sf)) = s.step(format!("n,,n={user},r=abc").as_bytes(), &*users)
            else {
                panic!("a server-first message for anyone")
            };
            let sf = String::from_utf8(sf).unwrap();
            sf.split(',')
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(first("ghost"), first("ghost"), "same salt every time");
        assert_eq!(first("ghost")[1], format!("i={MIN_ITERATIONS}"));
        assert_ne!(first("ghost"), first("alice"));
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let users = store(&[("alice", "s3cret")]);
        let login =
            |msg: &[u8]| SaslServer::new(Mechanism::Plain, process_secret()).step(msg, &*users);
        assert!(matches!(
            login(b"\0alice\0s3cret"),
            Ok(Step::Done { ref principal, .. }) if principal == "User:alice"
        ));
        assert!(login(b"alice\0alice\0s3cret").is_ok());
        assert_eq!(login(b"\0alice\0nope"), Err(SaslError::BadCredentials));
        assert_eq!(login(b"\0nobody\0s3cret"), Err(SaslError::BadCredentials));
        for bad in [
            &b"alice"[..],
            b"\0alice",
            b"\0\0pw",
            b"bob\0alice\0s3cret",
            b"a\0b\0c\0d",
        ] {
            assert!(matches!(login(bad), Err(SaslError::Protocol(_))), "{bad:?}");
        }
    }

    #[test]
    fn malformed_and_out_of_order_scram_messages_fail_cleanly() {
        let users = store(&[("alice", "pw")]);
        let m = Mechanism::Scram(ScramMechanism::Sha256);
        for bad in [
            &b"p=tls-unique,,n=alice,r=x"[..],
            b"n,,r=x",
            b"n,,n=alice",
            b"n,,n=al=ice,r=x",
            b"n,a=bob,n=alice,r=x",
            b"n,,n=alice,r=x,tokenauth=true",
            b"\xff\xfe",
            b"",
        ] {
            let mut s = SaslServer::new(m, process_secret());
            assert!(
                matches!(s.step(bad, &*users), Err(SaslError::Protocol(_))),
                "{bad:?}"
            );
        }
        // A final message with another nonce, or none at all.
        let mut c = Client::new(ScramMechanism::Sha256, "alice", "pw");
        let mut s = SaslServer::new(m, process_secret());
        let Ok(Step::Continue(sf)) = s.step(&c.first(), &*users) else {
            panic!()
        };
        let (last, _) = c.last(&sf);
        let forged = String::from_utf8(last).unwrap().replace("r=fyko", "r=evil");
        assert!(matches!(
            s.step(forged.as_bytes(), &*users),
            Err(SaslError::Protocol(_))
        ));
        // The exchange is over after a failure.
        assert!(s.step(b"anything", &*users).is_err());
        let mut s = SaslServer::new(m, process_secret());
        assert!(s.step(&vec![b'a'; MAX_TOKEN + 1], &*users).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        #[test]
        fn random_bytes_never_panic_any_parser(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let users = store(&[("alice", "pw")]);
            for m in [
                Mechanism::Plain,
                Mechanism::Scram(ScramMechanism::Sha256),
                Mechanism::Scram(ScramMechanism::Sha512),
            ] {
                let mut s = SaslServer::new(m, process_secret());
                let _ = s.step(&a, &*users);
                let _ = s.step(&b, &*users);
                // A valid first message, then random bytes as the final one.
                let mut s = SaslServer::new(m, process_secret());
                if s.step(b"n,,n=alice,r=abc", &*users).is_ok() {
                    let r = s.step(&b, &*users);
                    let done = matches!(r, Ok(Step::Done { .. }));
                    proptest::prop_assert!(!done, "random bytes authenticated");
                }
            }
        }
    }
}
