//! Who is calling, and which datasets they may read.
//!
//! ```text
//!  every call ─> AuthLayer (before every service)
//!     Handshake, grpc.health.v1.Health ─> passed on (Handshake authenticates by itself)
//!     open server (no [auth], no tls.client_ca) ─> Caller::open
//!     authorization: Bearer T ─> a session token (HMAC-signed, from Handshake) or a static token
//!                                (looked up by its SHA-256)
//!     else a verified client certificate (mutual TLS) ─> its identity
//!     else UNAUTHENTICATED
//!  ─> Caller { identity, datasets its [[grant]]s name } in the request's extensions
//!  handlers ─> Caller::check(dataset): PERMISSION_DENIED naming the identity and the dataset
//! ```
//!
//! Secrets never leave this module: tokens are kept as SHA-256 digests, passwords as argon2
//! hashes, and no message or log line quotes a credential. A session token is
//! `afs1.<identity, base64url>.<expiry, unix seconds>.<HMAC-SHA256, base64url>`: stateless, so
//! any replica holding the same `session_key_file` accepts it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::config::{Config, GrantConfig};
use crate::error::{Error, Result};
use crate::reload::Watched;
use crate::tls::ConnInfo;

/// Calls that pass the layer without credentials: Handshake (it takes the credentials) and
/// the gRPC health service (probes of orchestrators carry none; it names datasets and their
/// state, nothing else).
const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Shortest static token accepted (a guessable token is refused at load).
const MIN_TOKEN_CHARS: usize = 16;

/// Most password verifications at once: argon2 is slow and memory-hard on purpose (19 MiB and
/// tens of milliseconds each by default), and a burst of sign-ins must not take the server's
/// memory or its blocking pool.
const PASSWORD_CHECKS: usize = 4;

/// What a caller may read.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    All,
    Only(BTreeSet<String>),
}

/// The caller of one request, put in its extensions by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// None on an open server.
    pub identity: Option<String>,
    /// How the caller proved it: `open`, `session`, `token` or `certificate`.
    pub via: &'static str,
    pub access: Access,
}

impl Caller {
    pub fn open() -> Caller {
        Caller {
            identity: None,
            via: "open",
            access: Access::All,
        }
    }

    pub fn may_read(&self, dataset: &str) -> bool {
        match &self.access {
            Access::All => true,
            Access::Only(set) => set.contains(dataset),
        }
    }

    /// PERMISSION_DENIED unless the caller may read `dataset`.
    pub fn check(&self, dataset: &str) -> Result<()> {
        if self.may_read(dataset) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "{} may not read dataset {}: no [[grant]] gives it",
            self.name(),
            crate::error::quoted(dataset)
        )))
    }

    /// Whether the caller may read every dataset (server-wide actions need it).
    pub fn reads_everything(&self) -> bool {
        self.access == Access::All
    }

    /// The identity as messages and logs name it.
    pub fn name(&self) -> String {
        match &self.identity {
            Some(i) => format!("identity {}", crate::error::quoted(i)),
            None => "an anonymous caller".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    identity: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password_hash: String,
}

/// Tokens (by SHA-256) and users (argon2 PHC strings), as loaded from their files.
#[derive(Default)]
pub struct Credentials {
    tokens: HashMap<[u8; 32], String>,
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: digests and hashes stay out of any dump.
        write!(
            f,
            "Credentials({} tokens, {} users)",
            self.tokens.len(),
            self.users.len()
        )
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path, key: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidArgument(format!("cannot read auth.{key} {}: {e}", path.display())))?;
    // toml's messages quote the offending line, which may hold a secret: say where, not what.
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at line {}", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        Error::InvalidArgument(format!("auth.{key} {} is not valid{at}", path.display()))
    })
}

impl Credentials {
    pub fn load(tokens_file: Option<&Path>, users_file: Option<&Path>) -> Result<Credentials> {
        let mut c = Credentials::default();
        if let Some(p) = tokens_file {
            let f: TokensFile = read_toml(p, "tokens_file")?;
            for (i, t) in f.token.into_iter().enumerate() {
                if t.identity.trim().is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "auth.tokens_file {}: token {} has an empty identity",
                        p.display(),
                        i + 1
                    )));
                }
                if t.token.chars().count() < MIN_TOKEN_CHARS || t.token.chars().any(|c| !c.is_ascii_graphic()) {
                    return Err(Error::InvalidArgument(format!(
                        "auth.tokens_file {}: the token of {:?} must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces",
                        p.display(),
                        t.identity
                    )));
                }
                if c.tokens
                    .insert(sha256(t.token.as_bytes()), t.identity.clone())
                    .is_some()
                {
                    return Err(Error::InvalidArgument(format!(
                        "auth.tokens_file {}: the token of {:?} is listed twice",
                        p.display(),
                        t.identity
                    )));
                }
            }
        }
        if let Some(p) = users_file {
            let f: UsersFile = read_toml(p, "users_file")?;
            for u in f.user {
                if u.name.is_empty() || u.name.contains(':') {
                    return Err(Error::InvalidArgument(format!(
                        "auth.users_file {}: user name {:?} is empty or holds ':'",
                        p.display(),
                        u.name
                    )));
                }
                let ok = argon2::PasswordHash::new(&u.password_hash)
                    .is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"));
                if !ok {
                    return Err(Error::InvalidArgument(format!(
                        "auth.users_file {}: the password_hash of user {:?} is not an argon2 hash ($argon2id$...; make one with `astroflight hash-password`)",
                        p.display(),
                        u.name
                    )));
                }
                if c.users.insert(u.name.clone(), u.password_hash).is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "auth.users_file {}: user {:?} is listed twice",
                        p.display(),
                        u.name
                    )));
                }
            }
        }
        Ok(c)
    }
}

/// An argon2id hash of a password, as `users_file` holds it.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("cannot hash the password: {e}")))
}

fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

struct Authenticator {
    credentials: Arc<Watched<Credentials>>,
    reload_every: Duration,
    key: ring::hmac::Key,
    session: Duration,
    checks: tokio::sync::Semaphore,
    /// Verified against when the user is unknown, so that an unknown name costs what a wrong
    /// password costs (no user enumeration by timing).
    decoy: String,
}

/// The server's authentication and authorization, built from the configuration.
pub struct Security {
    controlled: bool,
    auth: Option<Authenticator>,
    grants: Vec<GrantConfig>,
}

/// A successful Handshake: the caller, and the bearer token to send on every call.
pub struct Session {
    pub caller: Caller,
    pub token: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthenticated(msg: &str) -> Error {
    Error::Unauthenticated(msg.to_string())
}

impl Security {
    /// An open server: every caller reads everything.
    pub fn open() -> Security {
        Security {
            controlled: false,
            auth: None,
            grants: Vec::new(),
        }
    }

    pub fn new(config: &Config) -> Result<Security> {
        let auth = match &config.auth {
            None => None,
            Some(a) => {
                let (tokens, users) = (a.tokens_file.clone(), a.users_file.clone());
                let paths: Vec<PathBuf> = tokens.iter().chain(users.iter()).cloned().collect();
                let credentials = Watched::new("the tokens and users", paths, move || {
                    Credentials::load(tokens.as_deref(), users.as_deref())
                })?;
                let key_bytes = match &a.session_key_file {
                    Some(p) => {
                        let k = std::fs::read(p).map_err(|e| {
                            Error::InvalidArgument(format!("cannot read auth.session_key_file {}: {e}", p.display()))
                        })?;
                        if k.len() < 32 {
                            return Err(Error::InvalidArgument(format!(
                                "auth.session_key_file {} must hold at least 32 bytes",
                                p.display()
                            )));
                        }
                        k
                    }
                    None => {
                        let mut k = vec![0u8; 32];
                        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                            .map_err(|_| Error::Internal("no system randomness for the session key".into()))?;
                        k
                    }
                };
                Some(Authenticator {
                    credentials,
                    reload_every: Duration::from_secs_f64(a.reload_secs),
                    key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes),
                    session: Duration::from_secs_f64(a.session_secs),
                    checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS),
                    decoy: hash_password("decoy password, never valid")?,
                })
            }
        };
        Ok(Security {
            controlled: config.access_controlled(),
            auth,
            grants: config.grants.clone(),
        })
    }

    /// Whether callers are identified (and grants apply).
    pub fn is_controlled(&self) -> bool {
        self.controlled
    }

    /// The reload task of the tokens and users files (None without `[auth]`).
    pub fn spawn_reloader(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.auth.as_ref().map(|a| a.credentials.spawn_reloader(a.reload_every))
    }

    /// The caller `identity` is, with the datasets its grants name.
    pub fn caller(&self, identity: String, via: &'static str) -> Caller {
        let mut all = false;
        let mut set = BTreeSet::new();
        for g in self
            .grants
            .iter()
            .filter(|g| g.identity == identity || g.identity == "*")
        {
            for d in &g.datasets {
                if d == "*" {
                    all = true;
                } else {
                    set.insert(d.clone());
                }
            }
        }
        Caller {
            identity: Some(identity),
            via,
            access: if all { Access::All } else { Access::Only(set) },
        }
    }

    /// Authenticate a call (not Handshake) from its headers and its connection's client
    /// certificate.
    pub fn authenticate(&self, headers: &http::HeaderMap, certificate: Option<&str>) -> Result<Caller> {
        if !self.controlled {
            return Ok(Caller::open());
        }
        match authorization(headers)? {
            Some(Credential::Bearer(token)) => self.bearer(token),
            Some(Credential::Basic(..)) => Err(unauthenticated(
                "basic credentials are taken by Handshake only: call Handshake (pyarrow: authenticate_basic_token) and send the bearer token it returns",
            )),
            None => match certificate {
                Some(id) => Ok(self.caller(id.to_string(), "certificate")),
                None => Err(unauthenticated(
                    "this server needs credentials: send `authorization: Bearer <token>`, or call Handshake with basic credentials for one",
                )),
            },
        }
    }

    fn bearer(&self, token: &str) -> Result<Caller> {
        let Some(a) = &self.auth else {
            return Err(unauthenticated(
                "this server takes client certificates, not bearer tokens (it has no [auth])",
            ));
        };
        if token.starts_with("afs1.") {
            let identity = verify_session(&a.key, token, now_secs())?;
            return Ok(self.caller(identity, "session"));
        }
        match a.credentials.get().tokens.get(&sha256(token.as_bytes())) {
            Some(identity) => Ok(self.caller(identity.clone(), "token")),
            None => Err(unauthenticated("the bearer token is not valid")),
        }
    }

    /// Handshake: basic credentials for a session token, or a valid bearer token echoed back.
    /// None: this server takes no credentials (open, or client certificates only).
    pub async fn handshake(&self, headers: &http::HeaderMap, certificate: Option<&str>) -> Result<Option<Session>> {
        let Some(a) = &self.auth else {
            return Ok(None);
        };
        match authorization(headers)? {
            Some(Credential::Basic(user, password)) => {
                let phc = a.credentials.get().users.get(&user).cloned();
                let known = phc.is_some();
                let phc = phc.unwrap_or_else(|| a.decoy.clone());
                let _permit = a
                    .checks
                    .acquire()
                    .await
                    .map_err(|_| Error::Internal("password checks closed".into()))?;
                let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc)).await?;
                if !(ok && known) {
                    tracing::info!(user = %user, "sign-in refused: unknown user or wrong password");
                    return Err(unauthenticated("unknown user or wrong password"));
                }
                let token = issue_session(&a.key, &user, now_secs() + a.session.as_secs());
                Ok(Some(Session {
                    caller: self.caller(user, "session"),
                    token,
                }))
            }
            Some(Credential::Bearer(token)) => Ok(Some(Session {
                caller: self.bearer(token)?,
                token: token.to_string(),
            })),
            None => match certificate {
                Some(_) => Ok(None),
                None => Err(unauthenticated(
                    "Handshake needs credentials: `authorization: Basic <base64 of user:password>` (pyarrow: authenticate_basic_token)",
                )),
            },
        }
    }
}

enum Credential<'a> {
    Bearer(&'a str),
    Basic(String, String),
}

fn authorization(headers: &http::HeaderMap) -> Result<Option<Credential<'_>>> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| unauthenticated("the authorization header is not printable ASCII"))?
        .trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Some(Credential::Bearer(rest)));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Padded as RFC 7617 says, or unpadded as Go's Flight client (ADBC) sends it.
        let decoded = STANDARD
            .decode(rest)
            .or_else(|_| STANDARD_NO_PAD.decode(rest))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthenticated("the basic credentials are not base64 of user:password"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthenticated("the basic credentials are not base64 of user:password"))?;
        return Ok(Some(Credential::Basic(user.to_string(), password.to_string())));
    }
    Err(unauthenticated(
        "the authorization header must be `Bearer <token>` (or `Basic ...` for Handshake)",
    ))
}

fn issue_session(key: &ring::hmac::Key, identity: &str, expires: u64) -> String {
    let body = format!("afs1.{}.{expires}", URL_SAFE_NO_PAD.encode(identity));
    let tag = ring::hmac::sign(key, body.as_bytes());
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The identity of a session token, if its signature holds and it has not expired.
fn verify_session(key: &ring::hmac::Key, token: &str, now: u64) -> Result<String> {
    let invalid =
        || unauthenticated("the session token is not valid (signed by another server?): call Handshake again");
    let (body, tag) = token.rsplit_once('.').ok_or_else(invalid)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
    ring::hmac::verify(key, body.as_bytes(), &tag).map_err(|_| invalid())?;
    let mut parts = body.split('.');
    let (Some("afs1"), Some(id), Some(exp), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let exp: u64 = exp.parse().map_err(|_| invalid())?;
    if exp <= now {
        return Err(unauthenticated("the session token has expired: call Handshake again"));
    }
    let id = URL_SAFE_NO_PAD
        .decode(id)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    Ok(id)
}

/// The tower layer that authenticates every call before it reaches a service.
#[derive(Clone)]
pub struct AuthLayer {
    pub security: Arc<Security>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            security: self.security.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    security: Arc<Security>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path != HANDSHAKE_PATH && !path.starts_with(HEALTH_PREFIX) {
            let certificate = req.extensions().get::<ConnInfo>().and_then(|c| c.client.clone());
            match self.security.authenticate(req.headers(), certificate.as_deref()) {
                Ok(caller) => {
                    req.extensions_mut().insert(Arc::new(caller));
                }
                Err(e) => {
                    tracing::info!(path = %req.uri().path(), error = %e, "call refused");
                    let response = e.to_status().into_http();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        // The service that was polled ready serves this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

/// The caller of a request, as the layer found it. A request that did not pass the layer (a
/// service used in-process) is the open caller only on an open server.
pub fn caller_of<T>(security: &Security, req: &tonic::Request<T>) -> Result<Arc<Caller>> {
    match req.extensions().get::<Arc<Caller>>() {
        Some(c) => Ok(c.clone()),
        None if !security.is_controlled() => Ok(Arc::new(Caller::open())),
        None => Err(Error::Internal("the call was not authenticated".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(grants: &[(&str, &[&str])]) -> Security {
        Security {
            controlled: true,
            auth: None,
            grants: grants
                .iter()
                .map(|(i, d)| GrantConfig {
                    identity: i.to_string(),
                    datasets: d.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn grants_add_up_and_star_means_everything() {
        let s = security(&[
            ("alice", &["ztf"]),
            ("alice", &["lsst"]),
            ("*", &["images"]),
            ("root", &["*"]),
        ]);
        let a = s.caller("alice".into(), "token");
        assert!(a.may_read("ztf") && a.may_read("lsst") && a.may_read("images"));
        assert!(!a.may_read("other"));
        let e = a.check("other").unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)));
        assert!(
            e.to_string().contains("\"alice\"") && e.to_string().contains("\"other\""),
            "{e}"
        );
        let b = s.caller("bob".into(), "token");
        assert!(b.may_read("images") && !b.may_read("ztf"));
        assert!(s.caller("root".into(), "token").reads_everything());
        assert!(!a.reads_everything());
    }

    #[test]
    fn session_tokens_are_signed_and_expire() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
        let t = issue_session(&key, "fink.portal", 1000);
        assert_eq!(verify_session(&key, &t, 999).unwrap(), "fink.portal");
        assert!(verify_session(&key, &t, 1000)
            .unwrap_err()
            .to_string()
            .contains("expired"));
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[8u8; 32]);
        assert!(verify_session(&other, &t, 10).is_err());
        // Changing the identity or the expiry breaks the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("afs1.{}.{}.{}", URL_SAFE_NO_PAD.encode("root"), parts[2], parts[3]);
        assert!(verify_session(&key, &forged, 10).is_err());
        let later = format!("afs1.{}.{}.{}", parts[1], 99999, parts[3]);
        assert!(verify_session(&key, &later, 10).is_err());
        assert!(verify_session(&key, "afs1.x", 10).is_err());
    }

    #[test]
    fn credentials_files_load_and_say_what_is_wrong_without_quoting_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            "[[token]]\ntoken = \"0123456789abcdef-secret\"\nidentity = \"svc\"\n",
        )
        .unwrap();
        let users = dir.path().join("users.toml");
        let hash = hash_password("pw").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        std::fs::write(
            &users,
            format!("[[user]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"),
        )
        .unwrap();
        let c = Credentials::load(Some(&tokens), Some(&users)).unwrap();
        assert_eq!(c.tokens[&sha256(b"0123456789abcdef-secret")], "svc");
        assert!(verify_password("pw", &c.users["alice"]));
        assert!(!verify_password("wrong", &c.users["alice"]));

        std::fs::write(&tokens, "[[token]]\ntoken = \"short-secret\"\nidentity = \"svc\"\n").unwrap();
        let e = Credentials::load(Some(&tokens), None).unwrap_err().to_string();
        assert!(e.contains("at least 16") && !e.contains("short-secret"), "{e}");
        std::fs::write(
            &tokens,
            "[[token]]\ntoken = \"a-long-secret-value\"\nidentiy = \"svc\"\n",
        )
        .unwrap();
        let e = Credentials::load(Some(&tokens), None).unwrap_err().to_string();
        assert!(e.contains("line") && !e.contains("a-long-secret-value"), "{e}");
        std::fs::write(&users, "[[user]]\nname = \"bob\"\npassword_hash = \"plaintext\"\n").unwrap();
        let e = Credentials::load(None, Some(&users)).unwrap_err().to_string();
        assert!(e.contains("not an argon2 hash") && !e.contains("plaintext"), "{e}");
    }

    #[test]
    fn authorization_headers() {
        let mut h = http::HeaderMap::new();
        assert!(authorization(&h).unwrap().is_none());
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert!(matches!(authorization(&h).unwrap(), Some(Credential::Bearer("abc"))));
        h.insert(
            "authorization",
            format!("Basic {}", STANDARD.encode("u:p:q")).parse().unwrap(),
        );
        match authorization(&h).unwrap() {
            Some(Credential::Basic(u, p)) => assert_eq!((u.as_str(), p.as_str()), ("u", "p:q")),
            _ => panic!("basic expected"),
        }
        h.insert(
            "authorization",
            format!("Basic {}", STANDARD_NO_PAD.encode("ab:c")).parse().unwrap(),
        );
        assert!(matches!(authorization(&h).unwrap(), Some(Credential::Basic(u, _)) if u == "ab"));
        h.insert("authorization", "Basic !!!".parse().unwrap());
        assert!(authorization(&h).is_err());
        h.insert("authorization", "Digest x".parse().unwrap());
        assert!(authorization(&h).is_err());
    }
}
