//! TLS on a Kafka listener (rustls, TLS 1.2 and 1.3 only): the server
//! certificate chain and key from PEM files, optional client certificates
//! verified against a CA (mutual TLS), the principal a client certificate
//! stands for (Kafka's `ssl.principal.mapping.rules` over the subject's
//! RFC 2253 name), and reload of the files without a restart — on SIGHUP
//! or when a file changes — so new connections get the new certificate
//! while open ones carry on with theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Whether a TLS listener asks clients for a certificate (Kafka's
/// `ssl.client.auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one connects as `User:ANONYMOUS` (or
    /// authenticates with SASL).
    Requested,
    /// A client without a certificate the CA signed is refused.
    Required,
}

/// TLS settings of a listener (`tls` under a listener, or the process's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The server certificate chain, PEM (leaf first).
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates.
    pub client_ca: Option<PathBuf>,
    /// `none`, `requested` or `required` (default: `required` when
    /// `client_ca` is set, else `none`).
    pub client_auth: Option<ClientAuth>,
    /// Kafka's `ssl.principal.mapping.rules`, one rule per element:
    /// `RULE:<regex>/<replacement>/[L|U]` or `DEFAULT` (the subject's name
    /// as is). Default: `["DEFAULT"]`.
    pub principal_mapping_rules: Vec<String>,
    /// How often the files are checked for changes (ms; 0: only SIGHUP).
    pub reload_check_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS needs both a certificate (cert) and a key (key)")]
    Incomplete,
    #[error("reading {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("principal mapping rule {rule:?}: {reason}")]
    Rule { rule: String, reason: String },
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// One rule of `ssl.principal.mapping.rules`.
#[derive(Clone, Debug)]
enum Rule {
    Default,
    Map {
        pattern: regex::Regex,
        replacement: String,
        case: Option<char>,
    },
}

/// Kafka's principal mapping rules: the first rule whose pattern matches
/// the whole subject name gives the principal's name.
#[derive(Clone, Debug)]
pub struct PrincipalRules(Vec<Rule>);

impl PrincipalRules {
    pub fn parse(rules: &[String]) -> Result<Self, TlsError> {
        if rules.is_empty() {
            return Ok(Self(vec![Rule::Default]));
        }
        let mut out = Vec::new();
        for r in rules {
            let bad = |reason: &str| TlsError::Rule {
                rule: r.clone(),
                reason: reason.to_string(),
            };
            let t = r.trim();
            if t == "DEFAULT" {
                out.push(Rule::Default);
                continue;
            }
            let body = t
                .strip_prefix("RULE:")
                .ok_or_else(|| bad("a rule is DEFAULT or RULE:<regex>/<replacement>/[L|U]"))?;
            // The pattern ends at the first unescaped '/'.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in body.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '/' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end.ok_or_else(|| bad("no '/' after the pattern"))?;
            let (pattern, rest) = (&body[..end], &body[end + 1..]);
            let (replacement, flags) = rest
                .rsplit_once('/')
                .ok_or_else(|| bad("no '/' after the replacement"))?;
            let case = match flags {
                "" => None,
                "L" => Some('L'),
                "U" => Some('U'),
                _ => return Err(bad("the flag after the last '/' is L, U or nothing")),
            };
            let pattern =
                regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| bad(&e.to_string()))?;
            out.push(Rule::Map {
                pattern,
                replacement: replacement.to_string(),
                case,
            });
        }
        Ok(Self(out))
    }

    /// The principal name for subject `dn` (RFC 2253), or `None` if no
    /// rule applies (the client is refused, as in Kafka).
    pub fn apply(&self, dn: &str) -> Option<String> {
        for rule in &self.0 {
            match rule {
                Rule::Default => return Some(dn.to_string()),
                Rule::Map {
                    pattern,
                    replacement,
                    case,
                } => {
                    if let Some(caps) = pattern.captures(dn) {
                        let mut out = String::new();
                        caps.expand(replacement, &mut out);
                        return Some(match case {
                            Some('L') => out.to_lowercase(),
                            Some('U') => out.to_uppercase(),
                            _ => out,
                        });
                    }
                }
            }
        }
        None
    }
}

/// The subject of a DER certificate as an RFC 2253 string ("CN=alice,O=Acme"):
/// the last RDN first, as Java's `X500Principal.getName()` writes it.
pub fn subject_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let name = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.11" => "OU",
                "2.5.4.10" => "O",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.6" => "C",
                "2.5.4.9" => "STREET",
                "0.9.2342.19200300.100.1.25" => "DC",
                "0.9.2342.19200300.100.1.1" => "UID",
                other => other,
            }
            .to_string();
            let value = attr
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| String::from_utf8_lossy(attr.as_slice()).into_owned());
            parts.push(format!("{name}={}", escape_rfc2253(&value)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A TLS listener's configuration, reloadable.
pub struct TlsServer {
    settings: TlsSettings,
    rules: PrincipalRules,
    config: RwLock<Arc<ServerConfig>>,
    /// The files' modification times as last loaded.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("settings", &self.settings)
            .finish()
    }
}

impl TlsServer {
    /// Load the files; an error if any is missing or bad (at start-up).
    pub fn new(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let rules = PrincipalRules::parse(&settings.principal_mapping_rules)?;
        let config = build(&settings)?;
        let stamps = stamps(&settings);
        Ok(Arc::new(Self {
            settings,
            rules,
            config: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The acceptor for a new connection (the configuration of now).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().unwrap().clone())
    }

    /// Read the files again; on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.settings)?;
        *self.config.write().unwrap() = Arc::new(config);
        *self.stamps.lock().unwrap() = stamps(&self.settings);
        tracing::info!(cert = ?self.settings.cert, "TLS certificate (re)loaded");
        Ok(())
    }

    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap() != stamps(&self.settings)
    }

    /// Reload on SIGHUP and when a file changes, until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        let every = Duration::from_millis(self.settings.reload_check_ms.unwrap_or(5_000));
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(if every.is_zero() {
                Duration::from_secs(3600)
            } else {
                every
            });
            tick.tick().await;
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                let forced = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = hangup => true,
                    _ = tick.tick() => false,
                };
                if !(forced || (!every.is_zero() && me.changed())) {
                    continue;
                }
                if let Err(e) = me.reload() {
                    tracing::error!(error = %e, "reloading the TLS certificate failed; the old one stays in use");
                }
            }
        });
    }

    /// The principal a verified client certificate stands for (`None`: no
    /// certificate was given, or no mapping rule applies).
    pub fn principal(&self, peer_certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
        let leaf = peer_certs?.first()?;
        let dn = subject_name(leaf)?;
        self.rules.apply(&dn)
    }
}

fn stamps(s: &TlsSettings) -> Vec<Option<SystemTime>> {
    [&s.cert, &s.key, &s.client_ca]
        .into_iter()
        .map(|p| {
            p.as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| m.modified().ok())
        })
        .collect()
}

fn build(s: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let (Some(cert), Some(key_path)) = (&s.cert, &s.key) else {
        return Err(TlsError::Incomplete);
    };
    let chain = certs(cert)?;
    let key = key(key_path)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let auth = s.client_auth.unwrap_or(if s.client_ca.is_some() {
        ClientAuth::Required
    } else {
        ClientAuth::None
    });
    let builder = match (auth, &s.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::Config(
                "client_auth requested or required needs client_ca".into(),
            ))
        }
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| file_err(ca, e))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::Requested {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> PrincipalRules {
        PrincipalRules::parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn mapping_rules_as_kafka_applies_them() {
        let dn = "CN=Alice,OU=Eng,O=Acme,C=US";
        assert_eq!(rules(&[]).apply(dn).as_deref(), Some(dn));
        let r = rules(&["RULE:^CN=([^,]+),OU=Eng,.*$/$1/L", "DEFAULT"]);
        assert_eq!(r.apply(dn).as_deref(), Some("alice"));
        assert_eq!(
            r.apply("CN=Bob,OU=Ops,O=Acme").as_deref(),
            Some("CN=Bob,OU=Ops,O=Acme")
        );
        let r = rules(&["RULE:^CN=(.*?),OU=(.*?)(,.*)?$/$1@$2/U"]);
        assert_eq!(r.apply(dn).as_deref(), Some("ALICE@ENG"));
        // No rule applies: no principal.
        assert_eq!(rules(&["RULE:^CN=x$/y/"]).apply(dn), None);
        for bad in ["RULE:x", "RULE:a/b/Q", "MAP:a/b/", "RULE:(/b/"] {
            assert!(PrincipalRules::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn subject_names_are_rfc2253_last_rdn_first_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = self_signed(dir.path(), "alice");
        let der = certs(&c).unwrap().remove(0);
        assert_eq!(
            subject_name(&der).as_deref(),
            Some("O=Acme\\, Inc,CN=alice")
        );
    }

    #[tokio::test]
    async fn files_load_bad_ones_are_refused_and_a_reload_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(dir.path(), "server");
        let s = TlsSettings {
            cert: Some(c.clone()),
            key: Some(k.clone()),
            ..Default::default()
        };
        let server = TlsServer::new(s.clone()).unwrap();
        assert!(matches!(
            TlsServer::new(TlsSettings {
                cert: Some(c.clone()),
                ..Default::default()
            }),
            Err(TlsError::Incomplete)
        ));
        assert!(matches!(
            TlsServer::new(TlsSettings {
                cert: Some(dir.path().join("missing.pem")),
                key: Some(k.clone()),
                ..Default::default()
            }),
            Err(TlsError::File { .. })
        ));
        assert!(TlsServer::new(TlsSettings {
            client_auth: Some(ClientAuth::Required),
            ..s.clone()
        })
        .is_err());
        // A broken file: the reload fails, the old configuration stays.
        let before = Arc::as_ptr(&server.config.read().unwrap());
        std::fs::write(&c, "not a certificate").unwrap();
        assert!(server.reload().is_err());
        assert_eq!(Arc::as_ptr(&server.config.read().unwrap()), before);
        // A new pair: reloaded.
        let (c2, k2) = self_signed(dir.path(), "server2");
        std::fs::copy(&c2, &c).unwrap();
        std::fs::copy(&k2, &k).unwrap();
        assert!(server.changed());
        server.reload().unwrap();
        assert!(!server.changed());
        assert_ne!(Arc::as_ptr(&server.config.read().unwrap()), before);
    }
}

/// The cluster's identity for internal traffic (`[internal_tls]`): one CA
/// signs a certificate for every Floe process. With it a broker's Kafka
/// listener (the one proxies use) and its tail push admit only holders of
/// such a certificate (mutual TLS), and proxies and controllers present
/// theirs when they connect to brokers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTls {
    /// The cluster CA (PEM).
    pub ca: PathBuf,
    /// This process's certificate chain (PEM; server and client).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

impl InternalTls {
    /// Server settings of an internal listener: this certificate, clients
    /// must present one the cluster CA signed.
    pub fn server_settings(&self) -> TlsSettings {
        TlsSettings {
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            client_ca: Some(self.ca.clone()),
            client_auth: Some(ClientAuth::Required),
            principal_mapping_rules: Vec::new(),
            reload_check_ms: None,
        }
    }

    /// A client configuration trusting the cluster CA and presenting this
    /// certificate (read from the files now: a rotated certificate is used
    /// by the next connection).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in certs(&self.ca)? {
            roots.add(c).map_err(|e| file_err(&self.ca, e))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// The PEM files' contents (for tonic's TLS).
    pub fn pem(&self) -> Result<Pem, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| file_err(p, e));
        Ok(Pem {
            ca: read(&self.ca)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }

    /// A TLS connection to `host` over `tcp`.
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = self.client_config().map_err(std::io::Error::other)?;
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::other(format!("server name {host:?}: {e}")))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }
}

/// The contents of an [`InternalTls`]'s files.
pub struct Pem {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ (for bearer tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
