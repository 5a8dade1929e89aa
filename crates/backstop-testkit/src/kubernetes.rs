//! An in-process stand-in for a Kubernetes API server.
//!
//! No cluster runs on the test machines, so [`FakeCluster`] serves the real
//! API paths and JSON shapes for the kinds in [`RESOURCES`]: discovery
//! (`/api`, `/apis`, `/api/v1`, `/apis/GROUP/VERSION`), list (all namespaces
//! or one; `labelSelector`, `limit`/`continue`), get, create, replace and
//! delete, with bearer-token authentication. It behaves as a real server
//! does where a client can tell: list items carry no `apiVersion`/`kind`;
//! the server sets uid, resourceVersion, creationTimestamp, generation and
//! managedFields; creating an existing object is `409 AlreadyExists`, into
//! a missing namespace `404`; a replace with a stale resourceVersion is
//! `409 Conflict`; Services get a cluster IP and may not take one in use;
//! every new namespace gets a `default` ServiceAccount and the
//! `kube-root-ca.crt` ConfigMap; a Job gets its generated selector and
//! immutable fields (a Job's selector, a claim's volume) may not change.
//! Errors are `Status` objects. Tests can make a kind forbidden
//! ([`FakeCluster::forbid`]), a namespace terminating, and one listed API
//! group ([`BROKEN_GROUP`]) always fails its discovery, as an aggregated
//! API with its backend down does.
//!
//! What it does not do: watch, patch, admission, RBAC beyond `forbid`,
//! controllers (nothing reconciles a Deployment, nothing serves a kind
//! because a CRD defines it), aggregated discovery, client certificates.
//! [`FakeCluster::start_tls`] serves HTTPS with a certificate from a test CA.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One kind the fake server serves.
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Resource {
    /// `configmaps`, `deployments.apps`.
    pub fn name(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Resource {
    Resource { group, version, kind, plural, namespaced }
}

pub const RESOURCES: &[Resource] = &[
    res("", "v1", "Namespace", "namespaces", false),
    res("", "v1", "ConfigMap", "configmaps", true),
    res("", "v1", "Secret", "secrets", true),
    res("", "v1", "Service", "services", true),
    res("", "v1", "ServiceAccount", "serviceaccounts", true),
    res("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
    res("", "v1", "PersistentVolume", "persistentvolumes", false),
    res("", "v1", "Pod", "pods", true),
    res("", "v1", "Event", "events", true),
    res("", "v1", "Endpoints", "endpoints", true),
    res("apps", "v1", "Deployment", "deployments", true),
    res("apps", "v1", "StatefulSet", "statefulsets", true),
    res("apps", "v1", "ReplicaSet", "replicasets", true),
    res("batch", "v1", "Job", "jobs", true),
    res("batch", "v1", "CronJob", "cronjobs", true),
    res("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
    res("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true),
    res("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false),
    res("networking.k8s.io", "v1", "Ingress", "ingresses", true),
    res("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false),
    // A custom kind, as a CRD would add it (served from the start: the
    // fake does not derive kinds from definitions).
    res("example.com", "v1", "Widget", "widgets", true),
];

/// An aggregated API group that is listed but whose backend is down (as a
/// metrics server often is): its discovery answers 503.
pub const BROKEN_GROUP: &str = "metrics.k8s.io";

fn resource(name: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.name() == name)
}

/// Objects by (resource name, namespace or "", name).
type Objects = BTreeMap<(String, String, String), Value>;

#[derive(Default)]
struct State {
    objects: Objects,
    revision: u64,
    next_ip: u32,
    /// Resources this account may not list or get.
    forbidden: std::collections::BTreeSet<String>,
    /// Namespaces being deleted: nothing new may go into them.
    terminating: std::collections::BTreeSet<String>,
    /// `METHOD path?query` of every request, oldest first.
    log: Vec<String>,
}

pub struct FakeCluster {
    addr: SocketAddr,
    token: String,
    /// The certificates' directory and files, when served over HTTPS.
    tls: Option<(tempfile::TempDir, crate::tls::Certificates)>,
    state: Arc<Mutex<State>>,
    _server: crate::server::ServerThread,
}

impl FakeCluster {
    /// A cluster with the namespaces `default` and `kube-system`, over HTTP.
    pub fn start() -> FakeCluster {
        FakeCluster::start_with(None)
    }

    /// The same over HTTPS, with a certificate signed by a test CA
    /// ([`FakeCluster::ca_data`]), as every real cluster is reached.
    pub fn start_tls() -> FakeCluster {
        let dir = tempfile::tempdir().expect("a directory for the certificates");
        let certs = crate::tls::Certificates::make(dir.path());
        FakeCluster::start_with(Some((dir, certs)))
    }

    fn start_with(tls: Option<(tempfile::TempDir, crate::tls::Certificates)>) -> FakeCluster {
        let token = format!("test-token-{}", std::process::id());
        let state = Arc::new(Mutex::new(State { next_ip: 10, ..Default::default() }));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (server_state, server_token) = (state.clone(), token.clone());
        let acceptor = tls.as_ref().map(|(_, certs)| acceptor(certs));
        let server = crate::server::ServerThread::spawn("kube-test-server", move |shutdown_rx| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("start the fake cluster's runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
                addr_tx.send(listener.local_addr().expect("local address")).expect("report the address");
                let app =
                    axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let (state, token) = (server_state.clone(), server_token.clone());
                        async move { serve(&state, &token, method, uri, headers, body) }
                    });
                match acceptor {
                    None => {
                        let _ = axum::serve(listener, app)
                            .with_graceful_shutdown(async move {
                                let _ = shutdown_rx.await;
                            })
                            .await;
                    }
                    Some(acceptor) => serve_tls(listener, acceptor, app, shutdown_rx).await,
                }
            });
        });
        let addr = addr_rx.recv().expect("the fake cluster failed to start");
        let cluster = FakeCluster { addr, token, tls, state, _server: server };
        for ns in ["default", "kube-system"] {
            cluster.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        cluster
    }

    /// Base64 of the CA's PEM, as a kubeconfig's `certificate-authority-data`
    /// (None over HTTP).
    pub fn ca_data(&self) -> Option<String> {
        use base64::Engine;
        let (_, certs) = self.tls.as_ref()?;
        let pem = std::fs::read(&certs.ca).expect("read the CA certificate");
        Some(base64::engine::general_purpose::STANDARD.encode(pem))
    }

    /// `http://127.0.0.1:PORT`, or `https://…` for [`FakeCluster::start_tls`].
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Write a kubeconfig at `path` whose context `context` reaches this server.
    pub fn write_kubeconfig(&self, path: &Path, context: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             {ca}users:\n- name: tester\n  user:\n    token: {token}\ncontexts:\n- name: {context}\n  context:\n    \
             cluster: fake\n    user: tester\n    namespace: default\ncurrent-context: {context}\n",
            url = self.url(),
            token = self.token,
            ca = self.ca_data().map(|d| format!("    certificate-authority-data: {d}\n")).unwrap_or_default(),
        );
        std::fs::write(path, yaml).expect("write the kubeconfig");
    }

    /// Create `manifest`, or replace the object of its name; what the server
    /// stored. Panics if the server refuses it.
    pub fn apply(&self, manifest: Value) -> Value {
        let r = kind_resource(&manifest).unwrap_or_else(|| panic!("the fake cluster serves no kind of {manifest}"));
        let ns = manifest.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let name = manifest.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let mut state = self.state.lock().unwrap();
        let key = (r.name(), ns.clone(), name);
        let result = if state.objects.contains_key(&key) {
            let mut m = manifest;
            m["metadata"]["resourceVersion"] = state.objects[&key]["metadata"]["resourceVersion"].clone();
            replace(&mut state, r, &ns, &key.2, m)
        } else {
            create(&mut state, r, &ns, manifest)
        };
        result.unwrap_or_else(|(code, status)| panic!("the fake cluster refused ({code}): {status}"))
    }

    /// The stored object, as a GET returns it.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = (resource.to_string(), namespace.unwrap_or("").to_string(), name.to_string());
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Names of the objects of `resource` in `namespace` (None: cluster-scoped or everywhere).
    pub fn names(&self, resource: &str, namespace: Option<&str>) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .keys()
            .filter(|(r, ns, _)| r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, _, name)| name.clone())
            .collect()
    }

    /// Remove a namespace and everything in it at once (no finalizers).
    pub fn delete_namespace(&self, namespace: &str) {
        let mut state = self.state.lock().unwrap();
        state.objects.retain(|(r, ns, name), _| ns != namespace && !(r == "namespaces" && name == namespace));
    }

    /// Refuse lists and reads of `resource` (403), as RBAC would.
    pub fn forbid(&self, resource: &str) {
        self.state.lock().unwrap().forbidden.insert(resource.to_string());
    }

    /// Mark namespace `ns` as being deleted: its phase is Terminating and
    /// creating anything in it is refused, as a real server does until its
    /// finalizers are done.
    pub fn terminate_namespace(&self, ns: &str) {
        let mut state = self.state.lock().unwrap();
        state.terminating.insert(ns.to_string());
        if let Some(obj) = state.objects.get_mut(&("namespaces".to_string(), String::new(), ns.to_string())) {
            obj["status"] = json!({"phase": "Terminating"});
        }
    }

    /// Every request so far as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

fn acceptor(certs: &crate::tls::Certificates) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
        .expect("read the server certificate")
        .collect::<Result<_, _>>()
        .expect("parse the server certificate");
    let key = PrivateKeyDer::from_pem_file(&certs.key).expect("read the server key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the certificate and key fit");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = &mut shutdown => return,
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

fn kind_resource(manifest: &Value) -> Option<&'static Resource> {
    let api_version = manifest.get("apiVersion")?.as_str()?;
    let kind = manifest.get("kind")?.as_str()?;
    RESOURCES.iter().find(|r| r.api_version() == api_version && r.kind == kind)
}

type Failure = (StatusCode, Value);

fn status(code: StatusCode, reason: &str, message: String) -> Failure {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn not_found(r: &Resource, name: &str) -> Failure {
    status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", r.name()))
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn serve(state: &Mutex<State>, token: &str, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    state.log.push(format!("{method} {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")));
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {token}"));
    if !authorized {
        let (code, body) = status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into());
        return json_response(code, body);
    }
    match route(&mut state, &method, &uri, &body) {
        Ok((code, body)) => json_response(code, body),
        Err((code, body)) => json_response(code, body),
    }
}

fn route(state: &mut State, method: &Method, uri: &Uri, body: &[u8]) -> Result<(StatusCode, Value), Failure> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let query = parse_query(uri.query().unwrap_or(""));
    let page_not_found =
        || status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource".into());
    // Discovery.
    match (method, segments.as_slice()) {
        (&Method::GET, ["api"]) => {
            return Ok((
                StatusCode::OK,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ));
        }
        (&Method::GET, ["apis"]) => {
            let mut groups: Vec<(&str, &str)> =
                RESOURCES.iter().filter(|r| !r.group.is_empty()).map(|r| (r.group, r.version)).collect();
            groups.dedup();
            groups.push((BROKEN_GROUP, "v1beta1"));
            let groups: Vec<Value> = groups
                .iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv], "preferredVersion": gv})
                })
                .collect();
            return Ok((StatusCode::OK, json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})));
        }
        (&Method::GET, ["api", "v1"]) => return Ok((StatusCode::OK, resource_list("", "v1"))),
        (&Method::GET, ["apis", group, _]) if *group == BROKEN_GROUP => {
            return Err(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the server is currently unable to handle the request".into(),
            ));
        }
        (&Method::GET, ["apis", group, version]) => {
            if !RESOURCES.iter().any(|r| r.group == *group && r.version == *version) {
                return Err(page_not_found());
            }
            return Ok((StatusCode::OK, resource_list(group, version)));
        }
        _ => {}
    }
    // Objects: /api/v1/… or /apis/GROUP/VERSION/…
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(page_not_found()),
    };
    let find = |plural: &str| RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural);
    let (r, namespace, name) = match rest {
        [plural] => (find(plural), None, None),
        ["namespaces", ns] if group.is_empty() => (find("namespaces"), None, Some(*ns)),
        [plural, name] => (find(plural), None, Some(*name)),
        ["namespaces", ns, plural] => (find(plural), Some(*ns), None),
        ["namespaces", ns, plural, name] => (find(plural), Some(*ns), Some(*name)),
        _ => (None, None, None),
    };
    let Some(r) = r else { return Err(page_not_found()) };
    if r.namespaced != namespace.is_some() && !(r.namespaced && name.is_none() && method == Method::GET) {
        return Err(page_not_found());
    }
    let ns = namespace.unwrap_or("");
    let key = |name: &str| (r.name(), ns.to_string(), name.to_string());
    if method == Method::GET && state.forbidden.contains(&r.name()) {
        let scope =
            if ns.is_empty() { "at the cluster scope".to_string() } else { format!("in the namespace \"{ns}\"") };
        return Err(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{} is forbidden: User \"tester\" cannot list resource \"{}\" in API group \"{}\" {scope}",
                r.name(),
                r.plural,
                r.group
            ),
        ));
    }
    match (method, name) {
        (&Method::GET, None) => Ok((StatusCode::OK, list(state, r, namespace, &query)?)),
        (&Method::GET, Some(name)) => {
            state.objects.get(&key(name)).cloned().map(|o| (StatusCode::OK, o)).ok_or_else(|| not_found(r, name))
        }
        (&Method::POST, None) => {
            let manifest = parse_body(r, ns, body)?;
            create(state, r, ns, manifest).map(|o| (StatusCode::CREATED, o))
        }
        (&Method::PUT, Some(name)) => {
            let manifest = parse_body(r, ns, body)?;
            if manifest.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
                return Err(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name of the object does not match the name on the URL".into(),
                ));
            }
            replace(state, r, ns, name, manifest).map(|o| (StatusCode::OK, o))
        }
        (&Method::DELETE, Some(name)) => match state.objects.remove(&key(name)) {
            Some(_) => {
                Ok((StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})))
            }
            None => Err(not_found(r, name)),
        },
        _ => Err(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
        )),
    }
}

fn resource_list(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({"name": r.plural, "singularName": r.kind.to_ascii_lowercase(), "namespaced": r.namespaced, "kind": r.kind,
                   "verbs": ["create", "delete", "get", "list", "update"]})
        })
        .collect();
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// `application/x-www-form-urlencoded` decoding (`+` and `%XX`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list(
    state: &State,
    r: &Resource,
    namespace: Option<&str>,
    query: &BTreeMap<String, String>,
) -> Result<Value, Failure> {
    let selector = match query.get("labelSelector") {
        Some(s) => Selector::parse(s).map_err(|m| status(StatusCode::BAD_REQUEST, "BadRequest", m))?,
        None => Selector::default(),
    };
    let start: usize = match query.get("continue") {
        Some(c) => {
            c.parse().map_err(|_| status(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token".into()))?
        }
        None => 0,
    };
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let matching: Vec<&Value> = state
        .objects
        .iter()
        .filter(|((res, ns, _), _)| *res == r.name() && namespace.is_none_or(|n| n == ns))
        .map(|(_, o)| o)
        .filter(|o| selector.matches(o.pointer("/metadata/labels")))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|o| {
            // A list's items carry no type of their own.
            let mut o = (*o).clone();
            if let Some(map) = o.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            o
        })
        .collect();
    let mut metadata = json!({"resourceVersion": state.revision.to_string()});
    if start.saturating_add(page.len()) < matching.len() {
        metadata["continue"] = json!((start + page.len()).to_string());
    }
    Ok(json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": metadata, "items": page}))
}

fn parse_body(r: &Resource, ns: &str, body: &[u8]) -> Result<Value, Failure> {
    let manifest: Value = serde_json::from_slice(body)
        .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", format!("the body is not JSON: {e}")))?;
    if kind_resource(&manifest).is_none_or(|k| k.name() != r.name()) {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the object's apiVersion and kind do not match the {} endpoint", r.name()),
        ));
    }
    match manifest.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(given) if given != ns => Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request".into(),
        )),
        _ => Ok(manifest),
    }
}

fn invalid(r: &Resource, name: &str, message: String) -> Failure {
    status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{} \"{name}\" is invalid: {message}", r.kind))
}

fn create(state: &mut State, r: &Resource, ns: &str, mut manifest: Value) -> Result<Value, Failure> {
    let name = manifest.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    if name.is_empty() {
        return Err(invalid(r, &name, "metadata.name: Required value: name is required".into()));
    }
    if manifest.pointer("/metadata/resourceVersion").is_some() {
        return Err(status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "resourceVersion should not be set on objects to be created".into(),
        ));
    }
    if r.namespaced && !state.objects.contains_key(&("namespaces".into(), String::new(), ns.to_string())) {
        return Err(status(StatusCode::NOT_FOUND, "NotFound", format!("namespaces \"{ns}\" not found")));
    }
    if r.namespaced && state.terminating.contains(ns) {
        return Err(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                r.name()
            ),
        ));
    }
    let key = (r.name(), ns.to_string(), name.clone());
    if state.objects.contains_key(&key) {
        return Err(status(StatusCode::CONFLICT, "AlreadyExists", format!("{} \"{name}\" already exists", r.name())));
    }
    let manual = manifest.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    if r.name() == "jobs.batch" && manifest.pointer("/spec/selector").is_some() && !manual {
        return Err(invalid(r, &name, "spec.selector: Invalid value: `selector` not auto-generated".into()));
    }
    if r.name() == "services" {
        let type_none = manifest.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
        match manifest.pointer("/spec/clusterIP").and_then(Value::as_str) {
            Some(ip) if !type_none => {
                let taken = state.objects.iter().any(|((res, _, _), o)| {
                    res == "services" && o.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip)
                });
                if taken {
                    return Err(invalid(
                        r,
                        &name,
                        format!(
                            "spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"
                        ),
                    ));
                }
            }
            Some(_) => {}
            None => {
                state.next_ip += 1;
                let ip = format!("10.96.{}.{}", state.next_ip / 250, state.next_ip % 250 + 1);
                manifest["spec"]["clusterIP"] = json!(ip);
                manifest["spec"]["clusterIPs"] = json!([ip]);
            }
        }
    }
    state.revision += 1;
    let meta = &mut manifest["metadata"];
    if r.namespaced {
        meta["namespace"] = json!(ns);
    }
    meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", state.revision));
    meta["resourceVersion"] = json!(state.revision.to_string());
    meta["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
    meta["generation"] = json!(1);
    meta["managedFields"] = json!([{"manager": "kubectl-create", "operation": "Update", "apiVersion": r.api_version(),
                                     "time": "2026-12-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {}}]);
    match r.name().as_str() {
        "namespaces" => {
            meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
            manifest["spec"] = json!({"finalizers": ["kubernetes"]});
            manifest["status"] = json!({"phase": "Active"});
        }
        "deployments.apps" | "statefulsets.apps" => {
            let replicas = manifest.pointer("/spec/replicas").cloned().unwrap_or(json!(1));
            manifest["status"] = json!({"replicas": replicas, "readyReplicas": replicas, "observedGeneration": 1});
        }
        "persistentvolumeclaims" => {
            manifest["spec"]["volumeName"] = json!(format!("pvc-{}", state.revision));
            manifest["status"] = json!({"phase": "Bound"});
        }
        // The Job controller's selector, from the Job's uid.
        "jobs.batch" if !manual => {
            let uid = manifest["metadata"]["uid"].clone();
            manifest["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            let labels = &mut manifest["spec"]["template"]["metadata"]["labels"];
            labels["batch.kubernetes.io/controller-uid"] = uid.clone();
            labels["controller-uid"] = uid;
            labels["batch.kubernetes.io/job-name"] = json!(name);
            labels["job-name"] = json!(name);
        }
        _ => {}
    }
    state.objects.insert(key, manifest.clone());
    // What the controllers of a new namespace add.
    if r.name() == "namespaces" {
        let sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}});
        let ca = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": name},
                        "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"}});
        for (res, obj) in [("serviceaccounts", sa), ("configmaps", ca)] {
            let r = resource(res).expect("a served kind");
            create(state, r, &name, obj)?;
        }
    }
    Ok(manifest)
}

fn replace(state: &mut State, r: &Resource, ns: &str, name: &str, mut manifest: Value) -> Result<Value, Failure> {
    let key = (r.name(), ns.to_string(), name.to_string());
    let Some(current) = state.objects.get(&key).cloned() else { return Err(not_found(r, name)) };
    let current_version = current.pointer("/metadata/resourceVersion").cloned();
    match manifest.pointer("/metadata/resourceVersion") {
        Some(v) if Some(v) != current_version.as_ref() => {
            return Err(status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    r.name()
                ),
            ));
        }
        _ => {}
    }
    // Fields that may not change once set.
    for pointer in ["/spec/volumeName", "/spec/selector"] {
        let immutable = matches!(
            (r.name().as_str(), pointer),
            ("persistentvolumeclaims", "/spec/volumeName") | ("jobs.batch", "/spec/selector")
        );
        if immutable && manifest.pointer(pointer) != current.pointer(pointer) {
            return Err(invalid(
                r,
                name,
                format!("{}: Invalid value: field is immutable", pointer.trim_start_matches('/').replace('/', ".")),
            ));
        }
    }
    if r.name() == "services" {
        let old = current.pointer("/spec/clusterIP").cloned();
        match manifest.pointer("/spec/clusterIP") {
            None => {
                manifest["spec"]["clusterIP"] = old.clone().unwrap_or(Value::Null);
                manifest["spec"]["clusterIPs"] = current.pointer("/spec/clusterIPs").cloned().unwrap_or(Value::Null);
            }
            Some(ip) if Some(ip) != old.as_ref() => {
                return Err(invalid(r, name, "spec.clusterIPs[0]: Invalid value: field is immutable".into()));
            }
            Some(_) => {}
        }
    }
    state.revision += 1;
    let meta = &mut manifest["metadata"];
    for k in ["uid", "creationTimestamp", "managedFields"] {
        meta[k] = current["metadata"][k].clone();
    }
    if r.namespaced {
        meta["namespace"] = json!(ns);
    }
    meta["resourceVersion"] = json!(state.revision.to_string());
    let generation = current.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1);
    meta["generation"] = json!(generation + 1);
    if let Some(s) = current.get("status") {
        manifest["status"] = s.clone();
    }
    state.objects.insert(key, manifest.clone());
    Ok(manifest)
}

/// A label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`.
#[derive(Default)]
struct Selector(Vec<Requirement>);

enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    fn parse(s: &str) -> Result<Selector, String> {
        let mut parts = Vec::new();
        let (mut depth, mut cur) = (0, String::new());
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        parts.push(cur);
        let bad = || format!("unable to parse requirement: {s:?}");
        let mut out = Vec::new();
        for p in parts.iter().map(|p| p.trim()) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(bad)?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some((k, v)) = p.split_once("!=") {
                Requirement::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = p.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest)?)
            } else if let Some(k) = p.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else if !p.is_empty() && !p.contains(' ') {
                Requirement::Exists(p.into())
            } else {
                return Err(bad());
            };
            out.push(req);
        }
        Ok(Selector(out))
    }

    fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::Eq(k, v) => get(k) == Some(v),
            Requirement::Ne(k, v) => get(k) != Some(v),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::Absent(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        })
    }
}
