//! S3-compatible object storage (AWS S3, Ceph RGW, Garage, MinIO, …) through
//! the `object_store` crate, driven from blocking callers by a private tokio
//! runtime.

use std::ffi::OsStr;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backstop_confine::{NetError, NetScope};
use backstop_secret::Secret;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode as StorePutMode,
    PutOptions, PutPayload, RetryConfig,
};

use crate::{Backend, Dir, Error, ErrorKind, Links, ObjectMeta, PutMode, Result, validate_key, validate_prefix};

/// Connection settings. Unset fields fall back to the usual environment
/// variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`,
/// `AWS_ALLOW_HTTP`.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret<String>>,
    pub session_token: Option<Secret<String>>,
    pub allow_http: Option<bool>,
}

/// `S3Options` with the environment's defaults filled in.
struct Settings {
    endpoint: Option<String>,
    region: String,
    allow_http: bool,
    credentials: Option<(String, String)>,
    session_token: Option<String>,
}

impl Settings {
    fn resolve(options: &S3Options, env: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let env = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
        let endpoint = options.endpoint.clone().or_else(|| env(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]));
        let region = options.region.clone().or_else(|| env(&["AWS_REGION", "AWS_DEFAULT_REGION"]));
        let allow_http = options
            .allow_http
            .or_else(|| env(&["AWS_ALLOW_HTTP"]).map(|v| v == "true" || v == "1"))
            .unwrap_or_else(|| endpoint.as_deref().is_some_and(|e| e.starts_with("http://")));
        let key_id = options.access_key_id.clone().or_else(|| env(&["AWS_ACCESS_KEY_ID"]));
        let secret =
            options.secret_access_key.clone().map(Secret::into_exposed).or_else(|| env(&["AWS_SECRET_ACCESS_KEY"]));
        let credentials = match (key_id, secret) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or neither, for instance credentials)",
                ));
            }
        };
        Ok(Settings {
            endpoint,
            region: region.unwrap_or_else(|| "us-east-1".to_string()),
            allow_http,
            credentials,
            session_token: options
                .session_token
                .clone()
                .map(Secret::into_exposed)
                .or_else(|| env(&["AWS_SESSION_TOKEN"])),
        })
    }
}

pub struct S3Backend {
    store: Arc<AmazonS3>,
    bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    prefix: String,
    endpoint: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend").field("bucket", &self.bucket).field("prefix", &self.prefix).finish()
    }
}

impl S3Backend {
    /// A bucket (and a prefix in it) reached with `options`. With a
    /// confined `net` scope the endpoint and the credentials must be given
    /// (the service's own environment is not lent), and every connection
    /// goes only to addresses the scope allows, checked as they are
    /// resolved, without proxies or redirects.
    pub fn new(bucket: &str, prefix: &str, options: &S3Options, net: &NetScope) -> Result<S3Backend> {
        if bucket.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConfig, "the S3 location has no bucket: use s3://bucket/prefix"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            validate_key(&prefix)?;
        }
        let settings = if net.is_any() {
            Settings::resolve(options, |name| std::env::var(name).ok())?
        } else {
            Settings::resolve(options, |_| None)?
        };
        let connector = match net {
            NetScope::Any => None,
            scope => Some(ConfinedConnector::new(scope, &settings)?),
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region)
            .with_allow_http(settings.allow_http)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // Every object is sealed (authenticated encryption) and checked
            // when it is read, and TLS guards it on the way; a signed payload
            // would hash every byte once more on each side (decision 0011).
            .with_unsigned_payload(true)
            // HTTP-level retries (5xx, 429, dropped connections) happen here; our
            // RetryBackend adds a second, slower loop on top for longer outages.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
            });
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some((id, secret)) = settings.credentials {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        if let Some(token) = settings.session_token {
            builder = builder.with_token(token);
        }
        if let Some(connector) = connector {
            builder = builder.with_http_connector(connector);
        }
        let endpoint = settings.endpoint;
        let store =
            builder.build().map_err(|e| Error::new(ErrorKind::InvalidConfig, "invalid S3 settings").with_source(e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backstop-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Other, "cannot start the S3 client runtime").with_source(e))?;
        Ok(S3Backend { store: Arc::new(store), bucket: bucket.to_string(), prefix, endpoint, runtime })
    }

    fn store_path(&self, key: &str) -> StorePath {
        if self.prefix.is_empty() { StorePath::from(key) } else { StorePath::from(format!("{}/{key}", self.prefix)) }
    }

    fn key_of(&self, path: &StorePath) -> String {
        let full = path.as_ref();
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.prefix).map(|k| k.trim_start_matches('/')).unwrap_or(full).to_string()
        }
    }

    /// Run a future to completion from a blocking caller. Inside a tokio
    /// context (a caller that forgot `spawn_blocking`) blocking the thread
    /// would panic, so the work moves to a fresh thread instead.
    fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(|| self.runtime.block_on(fut)).join().expect("S3 call thread panicked"))
        } else {
            self.runtime.block_on(fut)
        }
    }
}

/// The HTTP client of a confined repository: its own DNS resolver checks
/// every address against the scope before a connection is made (so a name
/// cannot be re-pointed between a check and the connection), IP-literal
/// endpoints were checked when the backend was built, and neither proxies
/// nor redirects can send a request anywhere else.
#[derive(Debug)]
struct ConfinedConnector {
    net: NetScope,
    port: u16,
    allow_http: bool,
}

impl ConfinedConnector {
    fn new(net: &NetScope, settings: &Settings) -> Result<ConfinedConnector> {
        let refused = |m: String| Error::new(ErrorKind::PermissionDenied, m);
        let endpoint = settings.endpoint.as_deref().ok_or_else(|| {
            refused("an S3 repository of a tenant names its endpoint (the service's own is not lent)".into())
        })?;
        if settings.credentials.is_none() {
            return Err(refused(
                "an S3 repository of a tenant brings its own access_key_id and secret_access_key".into(),
            ));
        }
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("the S3 endpoint {endpoint:?}: {e}")))?;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(Error::new(ErrorKind::InvalidConfig, format!("the S3 endpoint {endpoint:?} names no host")));
        };
        // Checked now for IP literals (no resolver sees them), and for names
        // so that a refusal is reported before any request.
        net.resolve(host, port).map_err(|e| refused(e.to_string()))?;
        Ok(ConfinedConnector { net: net.clone(), port, allow_http: settings.allow_http })
    }
}

impl HttpConnector for ConfinedConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(ConfinedResolver { net: self.net.clone(), port: self.port }))
            .https_only(!self.allow_http)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })?;
        Ok(HttpClient::new(client))
    }
}

struct ConfinedResolver {
    net: NetScope,
    port: u16,
}

impl reqwest::dns::Resolve for ConfinedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (net, port, host) = (self.net.clone(), self.port, name.as_str().to_string());
        Box::pin(async move {
            let found = tokio::task::spawn_blocking(move || net.resolve(&host, port))
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs = found.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What went wrong, in words that never repeat what the server sent
/// beyond its status and S3 error code: a tenant's endpoint may be
/// anything, and an error message is no window onto it.
fn describe(err: &object_store::Error) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = err;
    loop {
        if let Some(refused) = cause.downcast_ref::<NetError>() {
            return refused.to_string();
        }
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    let text = err.to_string();
    for marker in ["Server returned non-2xx status code: ", "Server returned error response: "] {
        if let Some(i) = text.find(marker) {
            let rest = &text[i + marker.len()..];
            let status: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == ' ').collect::<String>();
            let status = if marker.contains("non-2xx") { status.trim().to_string() } else { String::new() };
            let code = rest
                .split("<Code>")
                .nth(1)
                .and_then(|r| r.split("</Code>").next())
                .filter(|c| !c.is_empty() && c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            return match status.is_empty() {
                true => format!("the server refused the request{code}"),
                false => format!("the server answered {status}{code}"),
            };
        }
    }
    // No answer from a server: the innermost cause (refused, timed out, …).
    cause.to_string()
}

fn map_err(key: &str, err: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &err {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => ErrorKind::AlreadyExists,
        E::InvalidPath { .. } => ErrorKind::InvalidKey,
        E::NotSupported { .. } | E::NotImplemented { .. } | E::UnknownConfigurationKey { .. } => {
            ErrorKind::InvalidConfig
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        _ => {
            let text = err.to_string();
            if ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403 Forbidden"]
                .iter()
                .any(|m| text.contains(m))
            {
                ErrorKind::PermissionDenied
            } else if text.contains("NoSuchBucket") {
                ErrorKind::InvalidConfig
            } else if ["QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "507 Insufficient Storage"]
                .iter()
                .any(|m| text.contains(m))
            {
                return Error::storage_full(format!("S3 request failed: {}", describe(&err))).with_key(key);
            } else if describe(&err).starts_with("this tenant may not") {
                ErrorKind::PermissionDenied
            } else {
                // Connection failures and server errors that outlived the
                // client's own retries.
                ErrorKind::Transient
            }
        }
    };
    Error::new(kind, format!("S3 request failed: {}", describe(&err))).with_key(key)
}

fn meta(backend: &S3Backend, m: object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta { key: backend.key_of(&m.location), size: m.size, last_modified: SystemTime::from(m.last_modified) }
}

impl S3Backend {
    fn put_payload(&self, key: &str, body: PutPayload, mode: PutMode) -> Result<()> {
        validate_key(key)?;
        let mode = match mode {
            PutMode::Overwrite => StorePutMode::Overwrite,
            PutMode::Create => StorePutMode::Create,
        };
        let opts = PutOptions { mode, ..Default::default() };
        self.block_on(self.store.put_opts(&self.store_path(key), body, opts)).map_err(|e| map_err(key, e))?;
        Ok(())
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        let place =
            if self.prefix.is_empty() { self.bucket.clone() } else { format!("{}/{}", self.bucket, self.prefix) };
        match &self.endpoint {
            Some(endpoint) => format!("s3://{place} at {endpoint}"),
            None => format!("s3://{place}"),
        }
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<()> {
        self.put_payload(key, PutPayload::from(data.to_vec()), mode)
    }

    /// The staged pack mapped as the request's body: the upload reads the
    /// page cache, with no copy of the pack in memory (the default reads
    /// it into a buffer, and that copy cost a first backup 5 % of its CPU).
    fn put_file(&self, key: &str, staging: &Dir, name: &OsStr, mode: PutMode) -> Result<()> {
        let body = staging
            .open_file(std::path::Path::new(name), libc::O_RDONLY, 0, Links::Refuse)
            .and_then(|f| crate::mapped::map(&f))
            .map_err(|e| Error::io(key, e))?;
        self.put_payload(key, PutPayload::from(body), mode)?;
        let _ = staging.remove_at(name);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        validate_key(key)?;
        let path = self.store_path(key);
        self.block_on(async { self.store.get(&path).await?.bytes().await }).map(Vec::from).map_err(|e| map_err(key, e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(key, range, &mut buf)?;
        Ok(buf)
    }

    /// The body streamed straight into `buf`: one copy of each byte, into
    /// memory the caller already has.
    fn get_range_into(&self, key: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        validate_key(key)?;
        buf.clear();
        if range.start > range.end {
            return Err(Error::new(ErrorKind::InvalidRange, "empty byte range").with_key(key));
        }
        if range.start == range.end {
            self.head(key)?;
            return Ok(());
        }
        let path = self.store_path(key);
        let want = range.end - range.start;
        let options = GetOptions { range: Some(GetRange::Bounded(range.clone())), ..GetOptions::default() };
        let read = self.block_on(async {
            let mut stream = self.store.get_opts(&path, options).await?.into_stream();
            buf.reserve(want as usize);
            while let Some(chunk) = stream.try_next().await? {
                if (buf.len() + chunk.len()) as u64 > want {
                    break;
                }
                buf.extend_from_slice(&chunk);
            }
            Ok::<_, object_store::Error>(())
        });
        match read {
            Ok(()) if buf.len() as u64 == want => Ok(()),
            Ok(()) => Err(Error::new(ErrorKind::InvalidRange, "byte range beyond the end of the object").with_key(key)),
            Err(e) => {
                let err = map_err(key, e);
                // Servers answer a range past the end with 416 or a short body;
                // report both alike.
                match self.head(key) {
                    Ok(m) if m.size < range.end => Err(Error::new(
                        ErrorKind::InvalidRange,
                        format!("byte range {}..{} is beyond the object's {} bytes", range.start, range.end, m.size),
                    )
                    .with_key(key)),
                    _ => Err(err),
                }
            }
        }
    }

    fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let m = self.block_on(self.store.head(&self.store_path(key))).map_err(|e| map_err(key, e))?;
        Ok(meta(self, m))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        // object_store lists by whole path segments; list the directory part
        // and filter the rest of the prefix by string.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let list_path = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(StorePath::from(dir)),
            (false, true) => Some(StorePath::from(self.prefix.as_str())),
            (false, false) => Some(StorePath::from(format!("{}/{dir}", self.prefix))),
        };
        let found: Vec<object_store::ObjectMeta> =
            self.block_on(self.store.list(list_path.as_ref()).try_collect()).map_err(|e| map_err(prefix, e))?;
        Ok(found.into_iter().map(|m| meta(self, m)).filter(|m| m.key.starts_with(prefix)).collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        match self.block_on(self.store.delete(&self.store_path(key))) {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        let options = S3Options {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("very-secret-value".into()),
            session_token: Some("token-value".into()),
            ..Default::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("very-secret-value") && !shown.contains("token-value"), "{shown}");
        assert!(shown.contains("AKIAEXAMPLE"));
    }

    #[test]
    fn a_lone_access_key_is_a_configuration_error() {
        let options = S3Options { access_key_id: Some("id".into()), ..Default::default() };
        let err = Settings::resolve(&options, |_| None).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    }

    #[test]
    fn environment_fills_what_options_leave_unset() {
        let env = |name: &str| match name {
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("env-id".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_string()),
            _ => None,
        };
        let options = S3Options { region: Some("eu-west-3".into()), ..Default::default() };
        let s = Settings::resolve(&options, env).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region, "eu-west-3");
        assert!(s.allow_http, "an http:// endpoint implies plain HTTP");
        assert_eq!(s.credentials, Some(("env-id".to_string(), "env-secret".to_string())));
    }
}
