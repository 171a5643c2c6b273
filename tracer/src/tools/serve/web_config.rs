//! `--web.config.file`: TLS and basic auth in the YAML format of Prometheus' exporter-toolkit
//! (what node_exporter reads), so one file serves both. The file is checked at start (a bad one
//! is a usage error) and re-read when it or a file it names changes, checked on each new
//! connection as exporter-toolkit does; a broken edit keeps the last good config and says why.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        server::WebPkiClientVerifier,
    },
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
}

/// One loaded config: what a new connection is served with.
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
    /// user → bcrypt hash; empty: no authentication.
    users: BTreeMap<String, String>,
    /// user:password pairs that verified against these hashes (bcrypt is slow on purpose;
    /// Prometheus sends the same credentials every scrape).
    verified: Mutex<HashSet<(String, String)>>,
}

const VERIFIED_CACHE: usize = 64;

impl WebConfig {
    pub fn plain() -> Self {
        Self {
            tls: None,
            users: BTreeMap::new(),
            verified: Mutex::new(HashSet::new()),
        }
    }

    pub fn wants_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether `user`/`password` match a bcrypt hash of the file. Blocking (bcrypt).
    pub fn check(&self, user: &str, password: &str) -> bool {
        let key = (user.to_string(), password.to_string());
        if self.lock().contains(&key) {
            return true;
        }
        let ok = match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => false,
        };
        if ok {
            let mut verified = self.lock();
            if verified.len() >= VERIFIED_CACHE {
                verified.clear();
            }
            verified.insert(key);
        }
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The file and what it was last loaded from, for reloading on change.
pub struct Source {
    path: PathBuf,
    /// The files the config names, and the modification times of it and them when loaded.
    stamp: Mutex<Stamp>,
    current: Mutex<Arc<WebConfig>>,
}

impl Source {
    /// Loads `path`; any problem is a usage error (exit 2) naming the field and the fix.
    pub fn open(path: &Path) -> Result<Self> {
        let (config, stamp) = load(path).map_err(|e| {
            crate::usage::usage(format!("--web.config.file {}: {e:#}", path.display()))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            stamp: Mutex::new(stamp),
            current: Mutex::new(Arc::new(config)),
        })
    }

    pub fn describe(&self) -> String {
        let config = self.get();
        match (&config.tls, config.wants_auth()) {
            (Some(_), true) => "TLS, basic auth".into(),
            (Some(_), false) => "TLS".into(),
            (None, true) => "basic auth".into(),
            (None, false) => "plain".into(),
        }
    }

    pub fn get(&self) -> Arc<WebConfig> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The config for a new connection: re-read first if the file or a file it names changed.
    pub fn for_connection(&self) -> Arc<WebConfig> {
        let mut stamp = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&self.path, &stamp.0);
        if now != stamp.1 {
            match load(&self.path) {
                Ok((config, fresh)) => {
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                    *stamp = fresh;
                }
                Err(e) => {
                    errln!(
                        "serve: warning: --web.config.file {}: {e:#} (keeping the previous config)",
                        self.path.display()
                    );
                    stamp.1 = now;
                }
            }
        }
        drop(stamp);
        self.get()
    }
}

fn stamps(path: &Path, named: &[PathBuf]) -> Vec<Option<SystemTime>> {
    std::iter::once(path)
        .chain(named.iter().map(PathBuf::as_path))
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

type Stamp = (Vec<PathBuf>, Vec<Option<SystemTime>>);

fn load(path: &Path) -> Result<(WebConfig, Stamp)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read it: {e} (give a readable YAML file)"))?;
    let file: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_norway::from_str(&text).map_err(|e| {
            anyhow!("{e} (keys: tls_server_config, basic_auth_users, as exporter-toolkit's)")
        })?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| -> PathBuf {
        if p.is_relative() {
            base.join(p)
        } else {
            p.to_path_buf()
        }
    };
    for (user, hash) in &file.basic_auth_users {
        if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
            || bcrypt::verify("", hash).is_err()
        {
            bail!(
                "basic_auth_users: the password of '{user}' is not a bcrypt hash (make one with: htpasswd -nBC 10 '' | tr -d ':\\n')"
            );
        }
    }
    let mut named = vec![];
    let tls = match file.tls_server_config {
        None => None,
        Some(t) => {
            let (cert, key) = (resolve(&t.cert_file), resolve(&t.key_file));
            let ca = t.client_ca_file.as_deref().map(resolve);
            named.extend([cert.clone(), key.clone()]);
            named.extend(ca.clone());
            Some(TlsAcceptor::from(Arc::new(server_config(
                &cert,
                &key,
                t.client_auth_type.as_deref(),
                ca.as_deref(),
                t.min_version.as_deref(),
                t.max_version.as_deref(),
            )?)))
        }
    };
    let config = WebConfig {
        tls,
        users: file.basic_auth_users,
        verified: Mutex::new(HashSet::new()),
    };
    let times = stamps(path, &named);
    Ok((config, (named, times)))
}

fn server_config(
    cert: &Path,
    key: &Path,
    client_auth: Option<&str>,
    client_ca: Option<&Path>,
    min_version: Option<&str>,
    max_version: Option<&str>,
) -> Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| anyhow!("cert_file {}: {e} (give a PEM certificate)", cert.display()))?;
    if certs.is_empty() {
        bail!(
            "cert_file {}: no certificate in it (give a PEM certificate)",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("key_file {}: {e} (give a PEM private key)", key.display()))?;
    let version = |name: &str| -> Result<&'static rustls::SupportedProtocolVersion> {
        match name {
            "TLS12" => Ok(&rustls::version::TLS12),
            "TLS13" => Ok(&rustls::version::TLS13),
            _ => bail!("'{name}' is not a TLS version this server offers (TLS12 or TLS13)"),
        }
    };
    let lowest = version(min_version.unwrap_or("TLS12")).context("min_version")?;
    let highest = version(max_version.unwrap_or("TLS13")).context("max_version")?;
    let versions: Vec<_> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| {
            let rank = |v: &rustls::SupportedProtocolVersion| u16::from(v.version);
            rank(v) >= rank(lowest) && rank(v) <= rank(highest)
        })
        .collect();
    if versions.is_empty() {
        bail!("min_version is above max_version (leave them out for TLS12..TLS13)");
    }
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| anyhow!("{e}"))?;
    let roots = || -> Result<Arc<RootCertStore>> {
        let Some(ca) = client_ca else {
            bail!("client_auth_type needs client_ca_file (the CA that signs client certificates)");
        };
        let mut store = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .map_err(|e| anyhow!("client_ca_file {}: {e}", ca.display()))?
        {
            let c = c.map_err(|e| anyhow!("client_ca_file {}: {e}", ca.display()))?;
            store
                .add(c)
                .map_err(|e| anyhow!("client_ca_file {}: {e}", ca.display()))?;
        }
        Ok(Arc::new(store))
    };
    let builder = match client_auth.unwrap_or("NoClientCert") {
        "NoClientCert" | "" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots()?, provider)
                .build()
                .map_err(|e| anyhow!("client_ca_file: {e}"))?,
        ),
        "VerifyClientCertIfGiven" => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots()?, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| anyhow!("client_ca_file: {e}"))?,
        ),
        other => bail!(
            "client_auth_type '{other}' is not offered (NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        ),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow!(
            "key_file does not go with cert_file {}: {e} (give the key the certificate was made for)",
            cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn refuses_what_exporter_toolkit_would() {
        let dir = std::env::temp_dir().join(format!("tracer-webcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = |text: &str| {
            let p = write(&dir, "web.yml", text);
            match load(&p) {
                Ok(_) => String::new(),
                Err(e) => format!("{e:#}"),
            }
        };
        assert!(err("").is_empty());
        assert!(err("basic_auth_users:\n  alice: plain\n").contains("not a bcrypt hash"));
        assert!(err("basic_auth_userz: {}\n").contains("unknown field"));
        let hash = bcrypt::hash("secret", 4).unwrap();
        let p = write(
            &dir,
            "web.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        );
        let (config, _) = load(&p).unwrap();
        assert!(config.check("alice", "secret"));
        assert!(config.check("alice", "secret"));
        assert!(!config.check("alice", "wrong"));
        assert!(!config.check("bob", "secret"));
        assert!(
            err("tls_server_config:\n  cert_file: nowhere.pem\n  key_file: nowhere.key\n")
                .contains("cert_file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
