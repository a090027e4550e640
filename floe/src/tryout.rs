//! `floe standalone --try-security`: TLS and SASL on the standalone's
//! Kafka listener with nothing to prepare. A certificate authority and a
//! server certificate (for localhost, the loopback addresses and the
//! advertised host) are made in `<data-dir>/try-security/` on first use
//! and kept there; a SASL user `admin` gets a random password, kept beside
//! them. Meant for trying clients' security settings, not for production
//! (the CA's key sits next to the data).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use floe_kafka::sasl::{ScramCredential, ScramMechanism};
use floe_kafka::users::{Change, UserAdmin};
use floe_meta::MetadataStore;

/// The try-out's files and login.
pub(crate) struct TryOut {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub user: String,
    pub password: String,
    pub password_file: PathBuf,
}

pub(crate) const USER: &str = "admin";

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}

/// The try-out's certificates and password in `data_dir` (made now if
/// missing), the server certificate naming `host` besides the loopback
/// names.
pub(crate) fn prepare(data_dir: &Path, host: &str) -> Result<TryOut> {
    let dir = data_dir.join("try-security");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let t = TryOut {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        password_file: dir.join("admin.password"),
        user: USER.into(),
        password: String::new(),
        dir,
    };
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !names.iter().any(|n| n == host) && !host.is_empty() {
        names.push(host.to_string());
    }
    // A certificate made for another host is made again (the CA stays).
    let names_file = t.dir.join("server.names");
    let same_names = std::fs::read_to_string(&names_file).ok() == Some(names.join(","));
    if !(t.ca.exists() && t.cert.exists() && t.key.exists() && same_names) {
        make_certificates(&t, &names)?;
        std::fs::write(&names_file, names.join(","))?;
    }
    let password = match std::fs::read_to_string(&t.password_file) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            use rand::distr::{Alphanumeric, SampleString};
            // A secret: the OS's randomness, never a simulation's seed.
            #[allow(clippy::disallowed_methods)]
            let p = Alphanumeric.sample_string(&mut rand::rng(), 24);
            write_private(&t.password_file, format!("{p}\n").as_bytes())?;
            p
        }
    };
    Ok(TryOut { password, ..t })
}

fn make_certificates(t: &TryOut, names: &[String]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key_path = t.dir.join("ca.key");
    let ca_key = match std::fs::read_to_string(&ca_key_path) {
        Ok(pem) if t.ca.exists() => KeyPair::from_pem(&pem).context("the try-out CA key")?,
        _ => KeyPair::generate()?,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Floe standalone try-out CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if !t.ca.exists() {
        write_private(&ca_key_path, ca_key.serialize_pem().as_bytes())?;
        std::fs::write(&t.ca, ca.self_signed(&ca_key)?.pem())?;
    }
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.to_vec())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "floe standalone");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    std::fs::write(&t.cert, server.signed_by(&key, &issuer)?.pem())?;
    write_private(&t.key, key.serialize_pem().as_bytes())?;
    Ok(())
}

/// User `admin` with the try-out password (both SCRAM mechanisms; PLAIN
/// logins are checked against them).
pub(crate) async fn ensure_user(meta: Arc<dyn MetadataStore>, t: &TryOut) -> Result<()> {
    let admin = UserAdmin::new(meta);
    for m in [ScramMechanism::Sha512, ScramMechanism::Sha256] {
        admin
            .change(
                &t.user,
                Change::Set(ScramCredential::new(m, &t.password, 4096)),
            )
            .await
            .context("creating the try-out SASL user")?;
    }
    Ok(())
}

/// What to tell the person trying it out.
pub(crate) fn banner(t: &TryOut, bootstrap: &str) -> String {
    format!(
        "\n\
         Security try-out: the Kafka listener at {bootstrap} is SASL_SSL (not for production).\n\
         \x20 CA certificate  {ca}\n\
         \x20 user            {user}\n\
         \x20 password        {password}   (also in {pw_file})\n\
         \x20 mechanisms      SCRAM-SHA-512, SCRAM-SHA-256, PLAIN\n\
         Try:\n\
         \x20 kcat -b {bootstrap} -X security.protocol=sasl_ssl -X sasl.mechanisms=SCRAM-SHA-512 \\\n\
         \x20      -X sasl.username={user} -X sasl.password={password} -X ssl.ca.location={ca} -L\n",
        ca = t.ca.display(),
        user = t.user,
        password = t.password,
        pw_file = t.password_file.display(),
    )
}
