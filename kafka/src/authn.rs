//! A SASL listener's gate, in front of a connection's dispatch: until the
//! client has authenticated only ApiVersions, SaslHandshake and
//! SaslAuthenticate pass (anything else closes the connection, as Kafka
//! does); SaslHandshake v0 switches to raw tokens (length-prefixed, no
//! Kafka header), v1 to SaslAuthenticate; a failure answers
//! SASL_AUTHENTICATION_FAILED with its message, is logged and counted,
//! and closes the connection. With `reauth` (Kafka's
//! `connections.max.reauth.ms`, KIP-368) a session lasts that long: the
//! client is told (`session_lifetime_ms`), re-authenticates on the same
//! connection as the same principal, and a request after expiry closes it.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use floe_protocol::kafka_protocol::messages::{
    ApiKey, RequestHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use floe_protocol::kafka_protocol::protocol::{Decodable, StrBytes};
use floe_protocol::ResponseError;

use crate::listener::{respond, Close, Peer};
use crate::metrics::RequestMetrics;
use crate::sasl::{Credentials, Mechanism, SaslError, SaslServer, Step};

/// SASL settings of a listener.
pub struct SaslSettings {
    pub mechanisms: Vec<Mechanism>,
    /// Session lifetime (None: sessions do not expire).
    pub reauth: Option<Duration>,
    pub credentials: Arc<dyn Credentials>,
    /// Validates OAUTHBEARER tokens (`[oauthbearer]`).
    pub oauth: Option<Arc<crate::oauth::OAuthValidator>>,
    /// This process's secret for made-up credentials of unknown users.
    pub secret: Arc<[u8]>,
}

impl std::fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanisms", &self.mechanisms)
            .field("reauth", &self.reauth)
            .finish()
    }
}

enum Phase {
    /// Nothing yet (or re-authenticating): a handshake is expected.
    AwaitHandshake,
    /// After a v1 handshake: SaslAuthenticate requests carry the tokens.
    Framed(SaslServer, Mechanism),
    /// After a v0 handshake: the next frames are raw tokens.
    Raw(SaslServer, Mechanism),
    Authenticated,
}

/// What the gate does with a frame.
pub enum Gate {
    /// Dispatch it as usual.
    Pass,
    /// Answer with these bytes (a whole response frame) and read on.
    Answer(Bytes),
    /// Answer, then close the connection.
    AnswerAndClose(Bytes, Close),
    Close(Close),
}

/// The SASL state of one connection.
pub struct Authenticator {
    settings: Arc<SaslSettings>,
    phase: Phase,
    authenticated: bool,
    expires: Option<Instant>,
}

fn raw_frame(token: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(token.len() + 4);
    b.put_i32(token.len() as i32);
    b.extend_from_slice(token);
    b.freeze()
}

impl Authenticator {
    pub fn new(settings: Arc<SaslSettings>) -> Self {
        Self {
            settings,
            phase: Phase::AwaitHandshake,
            authenticated: false,
            expires: None,
        }
    }

    /// Whether the client has authenticated (once; a re-authentication
    /// keeps it so).
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    fn enabled(&self) -> Vec<StrBytes> {
        self.settings
            .mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect()
    }

    fn failed(&self, peer: &Peer, metrics: &RequestMetrics, mechanism: Mechanism, e: &SaslError) {
        metrics.authentication(mechanism.name(), false);
        tracing::warn!(peer = %peer.addr, listener = %peer.listener, mechanism = mechanism.name(),
            error = %e, "SASL authentication failed");
    }

    fn succeeded(
        &mut self,
        peer: &Peer,
        metrics: &RequestMetrics,
        mechanism: Mechanism,
        principal: &str,
        expires_ms: Option<i64>,
    ) -> Result<Option<Duration>, SaslError> {
        if self.authenticated && *peer.principal() != *principal {
            return Err(SaslError::Protocol(
                "re-authentication must keep the principal".into(),
            ));
        }
        peer.set_principal(principal);
        self.authenticated = true;
        // The session lasts connections.max.reauth.ms, and no longer than
        // the credential (a bearer token's expiry).
        let credential_left = expires_ms.map(|at| {
            let now = floe_common::wall_ms();
            Duration::from_millis((at - now).max(0) as u64)
        });
        let lifetime = match (self.settings.reauth, credential_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.expires = lifetime.map(|d| Instant::now() + d);
        self.phase = Phase::Authenticated;
        metrics.authentication(mechanism.name(), true);
        tracing::debug!(peer = %peer.addr, listener = %peer.listener, principal,
            mechanism = mechanism.name(), "SASL authenticated");
        Ok(lifetime)
    }

    /// Look at one frame of the connection before it is dispatched.
    pub fn gate(&mut self, frame: &Bytes, peer: &Peer, metrics: &RequestMetrics) -> Gate {
        if let Phase::Raw(..) = self.phase {
            return self.raw(frame, peer, metrics);
        }
        if frame.len() < 8 {
            return Gate::Close(Close::Malformed(
                ApiKey::SaslHandshake,
                -1,
                format!("{}-byte frame", frame.len()),
            ));
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let api = ApiKey::try_from(key).ok();
        match api {
            Some(ApiKey::SaslHandshake) => self.handshake(frame, version),
            Some(ApiKey::SaslAuthenticate) => self.authenticate(frame, version, peer, metrics),
            Some(ApiKey::ApiVersions) => Gate::Pass,
            _ if !self.authenticated => Gate::Close(Close::Authentication(format!(
                "request {} before SASL authentication",
                api.map_or_else(|| key.to_string(), |a| format!("{a:?}"))
            ))),
            _ if self.expires.is_some_and(|t| Instant::now() >= t) => {
                Gate::Close(Close::Authentication(
                    "the SASL session expired (connections.max.reauth.ms)".into(),
                ))
            }
            _ => Gate::Pass,
        }
    }

    fn handshake(&mut self, frame: &Bytes, version: i16) -> Gate {
        let mut body = frame.clone();
        let parsed = RequestHeader::decode(
            &mut body,
            ApiKey::SaslHandshake.request_header_version(version),
        )
        .map_err(|e| e.to_string())
        .and_then(|h| {
            SaslHandshakeRequest::decode(&mut body, version)
                .map(|r| (h, r))
                .map_err(|e| e.to_string())
        });
        let (header, req) = match parsed {
            Ok(x) => x,
            Err(e) => return Gate::Close(Close::Malformed(ApiKey::SaslHandshake, version, e)),
        };
        let mut resp = SaslHandshakeResponse::default().with_mechanisms(self.enabled());
        let answer = |resp| {
            respond(ApiKey::SaslHandshake, version, header.correlation_id, resp).unwrap_or_default()
        };
        if !matches!(self.phase, Phase::AwaitHandshake | Phase::Authenticated) {
            resp.error_code = ResponseError::IllegalSaslState.code();
            return Gate::AnswerAndClose(
                answer(resp),
                Close::Authentication("a SASL handshake in the middle of an exchange".into()),
            );
        }
        let wanted = req.mechanism.as_str();
        let Some(m) = Mechanism::parse(wanted).filter(|m| self.settings.mechanisms.contains(m))
        else {
            resp.error_code = ResponseError::UnsupportedSaslMechanism.code();
            return Gate::AnswerAndClose(
                answer(resp),
                Close::Authentication(format!("SASL mechanism {wanted:?} is not enabled here")),
            );
        };
        let server = match m {
            Mechanism::OAuthBearer => {
                SaslServer::oauth(self.settings.oauth.clone(), self.settings.secret.clone())
            }
            _ => SaslServer::new(m, self.settings.secret.clone()),
        };
        self.phase = if version == 0 {
            Phase::Raw(server, m)
        } else {
            Phase::Framed(server, m)
        };
        Gate::Answer(answer(resp))
    }

    fn authenticate(
        &mut self,
        frame: &Bytes,
        version: i16,
        peer: &Peer,
        metrics: &RequestMetrics,
    ) -> Gate {
        let mut body = frame.clone();
        let parsed = RequestHeader::decode(
            &mut body,
            ApiKey::SaslAuthenticate.request_header_version(version),
        )
        .map_err(|e| e.to_string())
        .and_then(|h| {
            SaslAuthenticateRequest::decode(&mut body, version)
                .map(|r| (h, r))
                .map_err(|e| e.to_string())
        });
        let (header, req) = match parsed {
            Ok(x) => x,
            Err(e) => return Gate::Close(Close::Malformed(ApiKey::SaslAuthenticate, version, e)),
        };
        let answer = |resp: SaslAuthenticateResponse| {
            respond(
                ApiKey::SaslAuthenticate,
                version,
                header.correlation_id,
                resp,
            )
            .unwrap_or_default()
        };
        let Phase::Framed(mut server, m) =
            std::mem::replace(&mut self.phase, Phase::AwaitHandshake)
        else {
            let resp = SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "SaslAuthenticate without a SaslHandshake first",
                )));
            return Gate::AnswerAndClose(
                answer(resp),
                Close::Authentication("SaslAuthenticate without a handshake".into()),
            );
        };
        let fail = |me: &Self, e: SaslError| {
            me.failed(peer, metrics, m, &e);
            let resp = SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                .with_error_message(Some(StrBytes::from_string(e.to_string())));
            Gate::AnswerAndClose(answer(resp), Close::Authentication(e.to_string()))
        };
        match server.step(&req.auth_bytes, &*self.settings.credentials) {
            Ok(Step::Continue(token)) => {
                self.phase = Phase::Framed(server, m);
                Gate::Answer(answer(
                    SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(token)),
                ))
            }
            Ok(Step::Done {
                token,
                principal,
                expires_ms,
            }) => {
                let lifetime = match self.succeeded(peer, metrics, m, &principal, expires_ms) {
                    Ok(l) => l.map_or(0, |d| d.as_millis().clamp(1, i64::MAX as u128) as i64),
                    Err(e) => return fail(self, e),
                };
                Gate::Answer(answer(
                    SaslAuthenticateResponse::default()
                        .with_auth_bytes(Bytes::from(token))
                        .with_session_lifetime_ms(lifetime),
                ))
            }
            Err(e) => fail(self, e),
        }
    }

    /// A raw token after a v0 handshake: answered with a raw token.
    fn raw(&mut self, frame: &Bytes, peer: &Peer, metrics: &RequestMetrics) -> Gate {
        let Phase::Raw(mut server, m) = std::mem::replace(&mut self.phase, Phase::AwaitHandshake)
        else {
            unreachable!("raw is only called in the raw phase")
        };
        match server.step(frame, &*self.settings.credentials) {
            Ok(Step::Continue(token)) => {
                self.phase = Phase::Raw(server, m);
                Gate::Answer(raw_frame(&token))
            }
            Ok(Step::Done {
                token,
                principal,
                expires_ms,
            }) => match self.succeeded(peer, metrics, m, &principal, expires_ms) {
                Ok(_) => Gate::Answer(raw_frame(&token)),
                Err(e) => {
                    self.failed(peer, metrics, m, &e);
                    Gate::Close(Close::Authentication(e.to_string()))
                }
            },
            Err(e) => {
                // The legacy exchange has no way to carry an error: close.
                self.failed(peer, metrics, m, &e);
                Gate::Close(Close::Authentication(e.to_string()))
            }
        }
    }
}
