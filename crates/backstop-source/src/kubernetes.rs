//! `kubernetes`: resources read through the Kubernetes API and stored as
//! clean manifests, one file per object:
//!
//! ```text
//! <namespace>/<resource>/<name>.yaml      namespaced objects (configmaps, deployments.apps, …)
//! _cluster/<resource>/<name>.yaml         cluster-scoped ones (namespaces, clusterroles.rbac.authorization.k8s.io, …)
//! ```
//!
//! `<resource>` is the plural, qualified by its API group unless it is a
//! core one — the name `kubectl get` takes. Server-managed fields (uid,
//! resourceVersion, creationTimestamp, managedFields, generation, status,
//! a Service's allocated cluster IPs, a claim's bound volume) are stripped,
//! so a manifest can be created in any cluster. Objects a controller owns
//! (an `ownerReferences` entry: a Deployment's ReplicaSets and Pods) are
//! left to their owner unless `owned=true`.
//!
//! Custom kinds bring their CustomResourceDefinitions. A kind the account
//! may not list, or an API group that does not answer discovery, is left
//! out with a note in the backup's log, unless `kinds=` names it.
//!
//! A restore creates the manifests in dependency order (definitions and
//! namespaces first), refuses a manifest whose namespace or name differs
//! from its place in the snapshot, maps namespaces (`namespace_map=old:new`)
//! and, for an object that already exists, skips it or replaces it
//! (`conflict=`), keeping the fields the cluster allocated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use backstop_confine::NetScope;
use backstop_repo::CancelToken;
use backstop_repo::backup::BackupSource;
use backstop_repo::backup::source::{EntryData, SourceEntry, SourceTree};
use backstop_secret::Secret;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersion, GroupVersionKind};
use kube::discovery::{ApiCapabilities, ApiResource, Scope, verbs};
use serde_json::{Value, json};

use crate::packager::{ConfigField, Packager, SourceKind};
use crate::{
    Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches, known_keys, opt_bool, opt_list, opt_str,
};

/// Where the cluster is and who we are there.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// A kubeconfig context; none: the current one.
    pub context: Option<String>,
    /// A kubeconfig file; none: `$KUBECONFIG`, `~/.kube/config`, or the
    /// pod's service account when running inside a cluster.
    pub kubeconfig: Option<PathBuf>,
    /// An API server URL, instead of a kubeconfig.
    pub server: Option<String>,
    /// A bearer token for `server`.
    token: Option<Token>,
    /// Base64 PEM of the CA that signed the server's certificate, as in a kubeconfig.
    pub certificate_authority_data: Option<String>,
    pub insecure_skip_tls_verify: bool,
}

#[derive(Clone, Debug)]
enum Token {
    Inline(Secret<String>),
    /// Read when the source runs, not when it is checked.
    File(PathBuf),
}

/// A backup's own settings, beside the connection's.
const BACKUP_KEYS: [&str; 5] = ["namespaces", "exclude_namespaces", "selector", "kinds", "owned"];

pub(crate) const CONNECTION_KEYS: &[&str] = &[
    "context",
    "kubeconfig",
    "server",
    "token",
    "token_file",
    "certificate_authority_data",
    "insecure_skip_tls_verify",
];

impl Connection {
    fn parse(config: &Config) -> Result<Connection> {
        let context = opt_str(config, "context")?.filter(|c| !c.is_empty());
        let kubeconfig = opt_str(config, "kubeconfig")?.map(PathBuf::from);
        let server = opt_str(config, "server")?;
        let token = opt_str(config, "token")?;
        let token_file = opt_str(config, "token_file")?;
        let certificate_authority_data = opt_str(config, "certificate_authority_data")?;
        let insecure_skip_tls_verify = opt_bool(config, "insecure_skip_tls_verify")?;
        if let Some(server) = &server {
            let url = url::Url::parse(server)
                .map_err(|e| Error::Invalid(format!("server {server:?} is not a URL ({e}); give https://HOST:PORT")))?;
            if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                return Err(Error::Invalid(format!("server {server:?} must be an http(s)://HOST[:PORT] URL")));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Error::Invalid("server must not carry a user or password; give token= instead".into()));
            }
            if context.is_some() || kubeconfig.is_some() {
                return Err(Error::Invalid(
                    "give either server (with token) or a kubeconfig and context, not both".into(),
                ));
            }
        } else if token.is_some() || token_file.is_some() || certificate_authority_data.is_some() {
            return Err(Error::Invalid(
                "token, token_file and certificate_authority_data go with server=URL (a kubeconfig carries its own)"
                    .into(),
            ));
        }
        let token = match (token, token_file) {
            (Some(_), Some(_)) => return Err(Error::Invalid("give token or token_file, not both".into())),
            (Some(t), None) => Some(Token::Inline(t.into())),
            (None, Some(f)) => Some(Token::File(PathBuf::from(f))),
            (None, None) => None,
        };
        Ok(Connection { context, kubeconfig, server, token, certificate_authority_data, insecure_skip_tls_verify })
    }

    /// The API server's `(host, port)` when it is reached with `server=`
    /// and an inline token (or none); `None` when the workers' own
    /// kubeconfig, files or service account would be used.
    pub fn endpoint(&self) -> Result<Option<(String, u16)>> {
        let (Some(server), Some(Token::Inline(_)) | None) = (&self.server, &self.token) else { return Ok(None) };
        let url = url::Url::parse(server).map_err(|e| Error::Invalid(format!("server {server:?}: {e}")))?;
        match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => {
                Ok(Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port)))
            }
            _ => Err(Error::Invalid(format!("server {server:?} names no host"))),
        }
    }

    /// Whom this reaches, fit to show.
    fn label(&self) -> String {
        match (&self.server, &self.context) {
            (Some(server), _) => server.clone(),
            (None, Some(context)) => context.clone(),
            (None, None) => "current-context".into(),
        }
    }

    /// A client of the cluster. Confined to `net`, only `server=` with an
    /// inline token works (nothing of the workers' kubeconfig or files),
    /// and the client connects to the one address the server's name
    /// resolved to and `net` allows, without a proxy.
    async fn client(&self, net: &NetScope) -> Result<kube::Client> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::Tool(format!("kubernetes: cannot configure a client for {}: {e}", self.label()))
        };
        let pinned = if net.is_any() {
            None
        } else {
            let (Some(server), Some(Token::Inline(_)) | None) = (&self.server, &self.token) else {
                return Err(Error::Invalid(
                    "a tenant's kubernetes source gives server= and token= (the workers' kubeconfig, files and \
                     service account are theirs)"
                        .into(),
                ));
            };
            let url = url::Url::parse(server).map_err(|e| Error::Invalid(format!("server {server:?}: {e}")))?;
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                return Err(Error::Invalid(format!("server {server:?} names no host")));
            };
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let addr = net.resolve(&host, port).map_err(|e| Error::Invalid(e.to_string()))?[0];
            let mut at = url.clone();
            at.set_ip_host(addr.ip())
                .map_err(|()| Error::Invalid(format!("server {server:?}: cannot pin its address")))?;
            let named = host.parse::<std::net::IpAddr>().is_err().then_some(host);
            Some((at, named))
        };
        let options = KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let config = if let Some(server) = &self.server {
            let token = match &self.token {
                Some(Token::File(path)) => {
                    let token = std::fs::read_to_string(path)
                        .map_err(|e| Error::Invalid(format!("cannot read token_file {}: {e}", path.display())))?;
                    Some(token.trim().to_string())
                }
                Some(Token::Inline(token)) => Some(token.expose().clone()),
                None => None,
            };
            let kubeconfig: Kubeconfig = serde_json::from_value(json!({
                "clusters": [{"name": "target", "cluster": {
                    "server": server,
                    "certificate-authority-data": self.certificate_authority_data,
                    "insecure-skip-tls-verify": self.insecure_skip_tls_verify,
                }}],
                "users": [{"name": "target", "user": {"token": token}}],
                "contexts": [{"name": "target", "context": {"cluster": "target", "user": "target"}}],
                "current-context": "target",
            }))
            .map_err(|e| unreachable(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| unreachable(&e))?
        } else if let Some(path) = &self.kubeconfig {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| Error::Invalid(format!("cannot read the kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| unreachable(&e))?
        } else if self.context.is_some() {
            kube::Config::from_kubeconfig(&options).await.map_err(|e| unreachable(&e))?
        } else {
            kube::Config::infer().await.map_err(|e| unreachable(&e))?
        };
        // The client's own retries back off for minutes on a 503 (an
        // aggregated API whose backend is down answers that to every
        // discovery); a failed job is retried by the service instead.
        let mut config = config;
        config.default_retry = false;
        if let Some((at, named)) = pinned {
            config.cluster_url = at.as_str().parse().map_err(|e| unreachable(&e))?;
            // The certificate is still checked against the name.
            config.tls_server_name = named;
            config.proxy_url = None;
        }
        kube::Client::try_from(config).map_err(|e| unreachable(&e))
    }

    /// What the cluster serves: every group at its preferred version. A
    /// group that does not answer (an aggregated API whose backend is down,
    /// as metrics servers often are) is left out and named in `notes`;
    /// the core group must answer.
    async fn discover(
        &self,
        client: &kube::Client,
        notes: &mut Vec<String>,
    ) -> Result<Vec<(ApiResource, ApiCapabilities)>> {
        let doing = format!("discovering the API of {}", self.label());
        let core = kube::discovery::group(client, "").await.map_err(|e| api_error(&doing, e))?;
        let mut served = core.recommended_resources();
        let groups = client.list_api_groups().await.map_err(|e| api_error(&doing, e))?;
        for g in groups.groups {
            let Some(version) = g.preferred_version.as_ref().or(g.versions.first()) else { continue };
            let gv: GroupVersion = match version.group_version.parse() {
                Ok(gv) => gv,
                Err(_) => continue,
            };
            match kube::discovery::pinned_group(client, &gv).await {
                Ok(group) => served.extend(group.recommended_resources()),
                Err(e) => notes.push(format!(
                    "kubernetes: the API group {} did not answer discovery ({}); its kinds are not backed up",
                    g.name,
                    short_error(&e)
                )),
            }
        }
        Ok(served)
    }
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub connection: Connection,
    /// None: every namespace.
    pub namespaces: Option<Vec<String>>,
    pub exclude_namespaces: Vec<String>,
    /// A label selector (`app=web,tier!=cache`), passed to the API server.
    pub selector: Option<String>,
    /// Resource names (`configmaps`, `deployments.apps`, `Deployment`); none:
    /// every namespaced kind that can be listed and created, but the ones
    /// that only record what happened ([`TRANSIENT`]).
    pub kinds: Option<Vec<String>>,
    /// Also objects a controller owns.
    pub owned: bool,
}

impl BackupConfig {
    pub fn parse(config: &Config) -> Result<BackupConfig> {
        let mut known = CONNECTION_KEYS.to_vec();
        known.extend(BACKUP_KEYS);
        known_keys(config, "kubernetes", &known)?;
        let selector = opt_str(config, "selector")?.filter(|s| !s.trim().is_empty());
        if let Some(s) = &selector {
            check_selector(s)?;
        }
        Ok(BackupConfig {
            connection: Connection::parse(config)?,
            namespaces: opt_list(config, "namespaces", check_namespace)?,
            exclude_namespaces: opt_list(config, "exclude_namespaces", check_namespace)?.unwrap_or_default(),
            selector,
            kinds: opt_list(config, "kinds", check_kind)?,
            owned: opt_bool(config, "owned")?,
        })
    }
}

/// What a restore does with an object that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    Skip,
    Overwrite,
}

#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub connection: Connection,
    /// Restore only these namespaces (as named in the snapshot).
    pub namespaces: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    /// Snapshot namespace → target namespace.
    pub namespace_map: BTreeMap<String, String>,
    pub conflict: Conflict,
}

impl RestoreConfig {
    pub fn parse(config: &Config) -> Result<RestoreConfig> {
        let mut known = CONNECTION_KEYS.to_vec();
        known.extend(["namespaces", "kinds", "namespace_map", "conflict"]);
        known_keys(config, "kubernetes", &known)?;
        let mut namespace_map = BTreeMap::new();
        for pair in opt_list(config, "namespace_map", |_| Ok(()))?.unwrap_or_default() {
            let Some((from, to)) = pair.split_once(':') else {
                return Err(Error::Invalid(format!("namespace_map entry {pair:?} is not OLD:NEW")));
            };
            check_namespace(from)?;
            check_namespace(to)?;
            namespace_map.insert(from.to_string(), to.to_string());
        }
        let conflict = match opt_str(config, "conflict")?.as_deref() {
            None | Some("skip") => Conflict::Skip,
            Some("overwrite") => Conflict::Overwrite,
            Some(other) => {
                return Err(Error::Invalid(format!("conflict={other} is not skip or overwrite")));
            }
        };
        Ok(RestoreConfig {
            connection: Connection::parse(config)?,
            namespaces: opt_list(config, "namespaces", check_namespace)?,
            kinds: opt_list(config, "kinds", check_kind)?,
            namespace_map,
            conflict,
        })
    }
}

/// Kinds left out unless asked for by name: records of what happened,
/// kept up by controllers, not state to restore.
pub const TRANSIENT: &[&str] = &[
    "events",
    "events.events.k8s.io",
    "endpoints",
    "endpointslices.discovery.k8s.io",
    "leases.coordination.k8s.io",
    "controllerrevisions.apps",
];

/// The directory of cluster-scoped objects (an underscore is never part of a namespace's name).
pub const CLUSTER_DIR: &str = "_cluster";

/// A namespace's name is a DNS label.
fn check_namespace(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{name:?} is not a namespace name (a DNS label: a-z, 0-9, -)")))
    }
}

fn check_kind(name: &str) -> Result<()> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} is not a resource name (configmaps, deployments.apps, or a kind such as Deployment)"
        )))
    }
}

/// Requirements separated by commas outside parentheses, none empty; the
/// server checks the rest.
fn check_selector(selector: &str) -> Result<()> {
    let mut depth = 0i32;
    let mut piece = String::new();
    let mut pieces = Vec::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                pieces.push(std::mem::take(&mut piece));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            break;
        }
        piece.push(c);
    }
    pieces.push(piece);
    if depth != 0 || pieces.iter().any(|p| p.trim().is_empty() || p.trim() == "!") {
        return Err(Error::Invalid(format!(
            "selector {selector:?} is not a label selector (for example app=web,tier!=cache or env in (prod,staging))"
        )));
    }
    Ok(())
}

/// `configmaps` or `deployments.apps`: the directory a resource's objects go to.
fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() { ar.plural.clone() } else { format!("{}.{}", ar.plural, ar.group) }
}

/// An object name usable as one path component and in an API URL as it
/// is: what DNS names and RBAC names (`system:controller:x`) are made of.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:@".contains(&b))
}

/// Run `fut` to completion on a runtime of its own (from a thread that is
/// not already inside one).
fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let run = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Tool(format!("kubernetes: cannot start the client's runtime: {e}")))?;
        Ok(runtime.block_on(fut))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join())
            .unwrap_or_else(|_| Err(Error::Tool("kubernetes: the client's thread failed".into())))
    } else {
        run()
    }
}

/// A failed call in a few words, with its causes (a connection error's
/// own message is only "client error (Connect)").
fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => {
            let mut text = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                let said = c.to_string();
                if !text.contains(&said) {
                    text.push_str(": ");
                    text.push_str(&said);
                }
                cause = c.source();
            }
            text
        }
    }
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 403)
}

/// A failed API call as an error that says what was being done.
fn api_error(doing: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(status) if status.code == 401 => Error::Tool(format!(
            "kubernetes: {doing}: the API server refused the credentials (401 Unauthorized); check the token or kubeconfig"
        )),
        kube::Error::Api(status) if status.code == 403 => Error::Tool(format!(
            "kubernetes: {doing}: forbidden (403): {}; grant the account list/get access, or narrow kinds= and namespaces=",
            status.message
        )),
        other => Error::Tool(format!("kubernetes: {doing}: {}", short_error(&other))),
    }
}

/// The cluster's resources that `kinds` names, or the default set.
fn choose(
    all: Vec<(ApiResource, ApiCapabilities)>,
    kinds: Option<&[String]>,
) -> Result<Vec<(ApiResource, ApiCapabilities)>> {
    let usable = |caps: &ApiCapabilities| {
        caps.supports_operation(verbs::LIST)
            && caps.supports_operation(verbs::GET)
            && caps.supports_operation(verbs::CREATE)
    };
    let Some(kinds) = kinds else {
        return Ok(all
            .into_iter()
            .filter(|(ar, caps)| {
                caps.scope == Scope::Namespaced && usable(caps) && !TRANSIENT.contains(&resource_name(ar).as_str())
            })
            .collect());
    };
    let mut chosen: Vec<(ApiResource, ApiCapabilities)> = Vec::new();
    for wanted in kinds {
        let w = wanted.to_ascii_lowercase();
        let matches: Vec<&(ApiResource, ApiCapabilities)> = all
            .iter()
            .filter(|(ar, _)| resource_name(ar) == w || ar.plural == w || ar.kind.to_ascii_lowercase() == w)
            .collect();
        // An exact `plural.group`, else the core group's, else the one match.
        let found = matches
            .iter()
            .find(|(ar, _)| resource_name(ar) == w)
            .or_else(|| matches.iter().find(|(ar, _)| ar.group.is_empty()))
            .or(if matches.len() == 1 { matches.first() } else { None });
        let Some((ar, caps)) = found else {
            return Err(Error::Invalid(if matches.is_empty() {
                format!("the cluster serves no resource {wanted:?} (kubectl api-resources lists them)")
            } else {
                format!(
                    "{wanted:?} is ambiguous: say which, one of {}",
                    matches.iter().map(|(ar, _)| resource_name(ar)).collect::<Vec<_>>().join(", ")
                )
            }));
        };
        if !usable(caps) {
            return Err(Error::Invalid(format!(
                "{} cannot be backed up: the API does not let its objects be listed and created",
                resource_name(ar)
            )));
        }
        if !chosen.iter().any(|(c, _)| c == ar) {
            chosen.push(((*ar).clone(), caps.clone()));
        }
    }
    Ok(chosen)
}

/// Every object of `ar` (in `namespace`, or everywhere), page by page.
async fn list_all(
    client: &kube::Client,
    ar: &ApiResource,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> kube::Result<Vec<DynamicObject>> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    let mut params =
        ListParams { label_selector: selector.map(str::to_string), limit: Some(500), ..Default::default() };
    let mut out = Vec::new();
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => return Ok(out),
        }
    }
}

/// `obj` without what the server manages, as a manifest that can be
/// created anywhere.
pub fn clean(ar: &ApiResource, obj: &DynamicObject) -> Result<Value> {
    let mut v =
        serde_json::to_value(obj).map_err(|e| Error::Tool(format!("kubernetes: an object does not encode: {e}")))?;
    // Items of a list carry no apiVersion and kind of their own.
    v["apiVersion"] = json!(ar.api_version);
    v["kind"] = json!(ar.kind);
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(key);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.retain(|k, _| !SERVER_ANNOTATIONS.contains(&k.as_str()));
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    let manual_selector = v.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(v) };
    match (ar.group.as_str(), ar.kind.as_str()) {
        // Allocated by the cluster; another cluster allocates its own.
        ("", "Service") => {
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            // Node ports too: a copy beside the original could not take them.
            spec.remove("healthCheckNodePort");
            for port in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(port) = port.as_object_mut() {
                    port.remove("nodePort");
                }
            }
        }
        // Scheduled onto a node of this cluster.
        ("", "Pod") => {
            spec.remove("nodeName");
        }
        // Bound to a volume of this cluster; a restored claim gets one where it lands.
        ("", "PersistentVolumeClaim") => {
            spec.remove("volumeName");
        }
        // Claimed by an object of this cluster; the restored claim of that name binds it again.
        ("", "PersistentVolume") => {
            if let Some(claim) = spec.get_mut("claimRef").and_then(Value::as_object_mut) {
                claim.remove("uid");
                claim.remove("resourceVersion");
            }
        }
        // The selector and labels the Job controller generated from the Job's uid.
        ("batch", "Job") if !manual_selector => {
            spec.remove("selector");
            if let Some(labels) =
                spec.get_mut("template").and_then(|t| t.pointer_mut("/metadata/labels")).and_then(Value::as_object_mut)
            {
                labels.remove("controller-uid");
                labels.remove("batch.kubernetes.io/controller-uid");
            }
        }
        _ => {}
    }
    Ok(v)
}

/// Annotations the control plane writes for itself.
const SERVER_ANNOTATIONS: &[&str] = &[
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

/// A manifest as YAML, `apiVersion`, `kind` and `metadata` first as kubectl shows them.
pub fn to_yaml(manifest: &Value) -> Result<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Ordered<'a> {
        #[serde(rename = "apiVersion")]
        api_version: &'a Value,
        kind: &'a Value,
        metadata: &'a Value,
        #[serde(flatten)]
        rest: BTreeMap<&'a str, &'a Value>,
    }
    let map = manifest.as_object().ok_or_else(|| Error::Tool("kubernetes: a manifest is not an object".into()))?;
    let null = Value::Null;
    let ordered = Ordered {
        api_version: map.get("apiVersion").unwrap_or(&null),
        kind: map.get("kind").unwrap_or(&null),
        metadata: map.get("metadata").unwrap_or(&null),
        rest: map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.as_str(), v))
            .collect(),
    };
    serde_saphyr::to_string(&ordered)
        .map(String::into_bytes)
        .map_err(|e| Error::Tool(format!("kubernetes: a manifest does not encode as YAML: {e}")))
}

/// A manifest read back.
pub fn from_yaml(yaml: &[u8]) -> Result<Value> {
    let value: Value =
        serde_saphyr::from_slice(yaml).map_err(|e| Error::Invalid(format!("not a YAML manifest: {e}")))?;
    if value.get("apiVersion").and_then(Value::as_str).is_none()
        || value.get("kind").and_then(Value::as_str).is_none()
        || value.pointer("/metadata/name").and_then(Value::as_str).is_none()
    {
        return Err(Error::Invalid("a manifest needs apiVersion, kind and metadata.name".into()));
    }
    Ok(value)
}

/// The manifests to back up, by their path in the snapshot.
async fn collect(config: &BackupConfig, net: &NetScope, notes: &mut Vec<String>) -> Result<BTreeMap<String, Value>> {
    let client = config.connection.client(net).await?;
    let served = config.connection.discover(&client, notes).await?;
    // Served only where the apiextensions API is (every real cluster).
    let crd_ar = served
        .iter()
        .find(|(ar, _)| ar.group == "apiextensions.k8s.io" && ar.kind == "CustomResourceDefinition")
        .map(|(ar, _)| ar.clone());
    let explicit = config.kinds.is_some();
    let resources = choose(served, config.kinds.as_deref())?;
    let selector = config.selector.as_deref();
    let excluded = |ns: &str| config.exclude_namespaces.iter().any(|x| x == ns);
    let mut out = BTreeMap::new();
    let mut used_namespaces = BTreeSet::new();
    let mut custom = BTreeSet::new();
    'resources: for (ar, caps) in &resources {
        let scopes: Vec<Option<&str>> = match (&caps.scope, &config.namespaces) {
            (Scope::Cluster, _) | (Scope::Namespaced, None) => vec![None],
            (Scope::Namespaced, Some(namespaces)) => {
                namespaces.iter().filter(|ns| !excluded(ns)).map(|ns| Some(ns.as_str())).collect()
            }
        };
        let mut objects = Vec::new();
        for namespace in scopes {
            match list_all(&client, ar, namespace, selector).await {
                Ok(found) => objects.extend(found),
                // Not asked for by name: a kind this account may not read is said and left out.
                Err(e) if !explicit && is_forbidden(&e) => {
                    notes.push(format!(
                        "kubernetes: listing {} is forbidden to this account; it is not backed up",
                        resource_name(ar)
                    ));
                    continue 'resources;
                }
                Err(e) => {
                    let where_ = namespace.map(|ns| format!(" in namespace {ns}")).unwrap_or_default();
                    return Err(api_error(&format!("listing {}{where_}", resource_name(ar)), e));
                }
            }
        }
        for obj in objects {
            let name = obj.metadata.name.clone().unwrap_or_default();
            if !safe_name(&name) {
                notes.push(format!("kubernetes: a {} named {name:?} is left out: the name is no file name", ar.kind));
                continue;
            }
            if !config.owned && obj.metadata.owner_references.as_ref().is_some_and(|o| !o.is_empty()) {
                continue;
            }
            let dir = match (&caps.scope, obj.metadata.namespace.as_deref()) {
                (Scope::Namespaced, Some(ns)) => {
                    if excluded(ns) {
                        continue;
                    }
                    check_namespace(ns).map_err(|_| Error::Tool(format!("kubernetes: odd namespace {ns:?}")))?;
                    used_namespaces.insert(ns.to_string());
                    ns.to_string()
                }
                _ => CLUSTER_DIR.to_string(),
            };
            if maybe_custom(&ar.group) {
                custom.insert(format!("{}.{}", ar.plural, ar.group));
            }
            out.insert(format!("{dir}/{}/{name}.yaml", resource_name(ar)), clean(ar, &obj)?);
        }
    }
    // The definitions of the custom kinds backed up, so that a fresh
    // cluster can take their objects (a CRD is named PLURAL.GROUP).
    if let Some(crd_ar) = &crd_ar {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), crd_ar);
        for name in custom {
            let path = format!("{CLUSTER_DIR}/{}/{name}.yaml", resource_name(crd_ar));
            match api.get_opt(&name).await {
                Ok(Some(obj)) => {
                    out.insert(path, clean(crd_ar, &obj)?);
                }
                // Served by an aggregated API, not defined by a CRD.
                Ok(None) => {}
                Err(e) => notes.push(format!(
                    "kubernetes: the definition of {name} could not be read ({}); restore it before its objects",
                    short_error(&e)
                )),
            }
        }
    }
    // The namespaces themselves (labels, annotations) go along: every one
    // asked for, and every one an object came from.
    let asked = config.namespaces.iter().flatten().filter(|ns| !excluded(ns)).cloned();
    let namespaces: BTreeSet<String> = used_namespaces.into_iter().chain(asked).collect();
    let namespace_ar = namespace_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &namespace_ar);
    for ns in namespaces {
        let path = format!("{CLUSTER_DIR}/{}/{ns}.yaml", resource_name(&namespace_ar));
        if out.contains_key(&path) {
            continue;
        }
        match api.get(&ns).await {
            Ok(obj) => {
                let mut manifest = clean(&namespace_ar, &obj)?;
                // The namespace's finalizers are the cluster's business.
                if let Some(spec) = manifest.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("finalizers");
                }
                out.insert(path, manifest);
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(Error::Invalid(format!("the cluster has no namespace {ns}")));
            }
            // An account confined to its namespaces may not read them.
            Err(e) if is_forbidden(&e) => notes.push(format!(
                "kubernetes: namespace {ns} itself may not be read by this account; its labels and annotations are not backed up"
            )),
            Err(e) => return Err(api_error(&format!("reading namespace {ns}"), e)),
        }
    }
    Ok(out)
}

/// v1 Namespace, which every cluster serves.
fn namespace_resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&())
}

/// Whether objects of `group` may be custom resources (not one of
/// Kubernetes' own groups).
fn maybe_custom(group: &str) -> bool {
    group.contains('.') && !group.ends_with(".k8s.io") && group != "k8s.io"
}

pub fn tree(config: &BackupConfig, net: &NetScope) -> Result<SourceTree> {
    let mut notes = Vec::new();
    let manifests = block_on(collect(config, net, &mut notes))??;
    let mut entries = Vec::with_capacity(manifests.len());
    for (path, manifest) in manifests {
        // Secrets among them: readable by the owner only, wherever restored as files.
        entries.push(SourceEntry { path, mode: 0o600, data: EntryData::Bytes(to_yaml(&manifest)?) });
    }
    Ok(SourceTree {
        kind: "kubernetes".into(),
        label: format!("kubernetes:{}", config.connection.label()),
        entries,
        image_chunk_size: crate::image::DEFAULT_CHUNK,
        notes,
        capture: None,
    })
}

/// Restore order: what others need first (Velero's order, shortened).
const RESTORE_ORDER: &[&str] = &[
    "customresourcedefinitions.apiextensions.k8s.io",
    "namespaces",
    "storageclasses.storage.k8s.io",
    "persistentvolumes",
    "persistentvolumeclaims",
    "serviceaccounts",
    "secrets",
    "configmaps",
    "limitranges",
    "resourcequotas",
    "clusterroles.rbac.authorization.k8s.io",
    "roles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "services",
];

/// A snapshot entry `dir/resource/name.yaml`, split.
fn split_entry(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.split('/');
    let (dir, resource, file) = (parts.next()?, parts.next()?, parts.next()?);
    let name = file.strip_suffix(".yaml")?;
    if parts.next().is_some() { None } else { Some((dir, resource, name)) }
}

/// One manifest to restore, checked against where the snapshot holds it.
struct Item {
    path: String,
    /// `configmaps`, `deployments.apps`: the entry's directory.
    resource: String,
    /// The snapshot's namespace, None for cluster-scoped objects.
    namespace: Option<String>,
    manifest: Value,
}

/// `--to kubernetes:[CONTEXT]`: create the snapshot's manifests in a cluster.
pub(crate) fn restore(ctx: &RestoreContext, config: &Config, net: &NetScope) -> Result<RestoreReport> {
    let config = RestoreConfig::parse(config)?;
    let kinds: Option<Vec<String>> = config.kinds.as_ref().map(|k| k.iter().map(|k| k.to_ascii_lowercase()).collect());
    let mut items = Vec::new();
    for (path, _) in &ctx.entries {
        let no_manifest =
            || Error::Invalid(format!("the snapshot's entry {path} is no manifest (is it a kubernetes snapshot?)"));
        let (dir, resource, name) = split_entry(path).ok_or_else(no_manifest)?;
        let namespace = (dir != CLUSTER_DIR).then(|| dir.to_string());
        if let Some(wanted) = &config.namespaces {
            let ns = namespace.as_deref().or((resource == "namespaces").then_some(name));
            if !ns.is_some_and(|ns| wanted.iter().any(|w| w == ns)) {
                continue;
            }
        }
        let mut yaml = Vec::new();
        ctx.dump(path, &mut yaml)?;
        let manifest = from_yaml(&yaml).map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
        // What the API is asked must be what the entry's place says: a
        // manifest cannot slip into another namespace, name or kind.
        let meta_ns = manifest.pointer("/metadata/namespace").and_then(Value::as_str);
        let meta_name = manifest.pointer("/metadata/name").and_then(Value::as_str);
        if meta_name != Some(name) || meta_ns != namespace.as_deref() || !safe_name(name) {
            return Err(Error::Invalid(format!(
                "{path}: the manifest's namespace and name do not match its place in the snapshot; the snapshot is damaged or was tampered with"
            )));
        }
        if let Some(ns) = &namespace {
            check_namespace(ns).map_err(|e| Error::Invalid(format!("{path}: {e}")))?;
        }
        if let Some(kinds) = &kinds {
            let kind = manifest["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
            let plural = resource.split('.').next().unwrap_or_default();
            if resource != "namespaces" && !kinds.iter().any(|k| k == resource || k == plural || *k == kind) {
                continue;
            }
        }
        items.push(Item { path: path.clone(), resource: resource.to_string(), namespace, manifest });
    }
    if items.is_empty() {
        return Err(Error::Invalid("nothing in the snapshot matches namespaces= and kinds=".into()));
    }
    let rank = |resource: &str| RESTORE_ORDER.iter().position(|r| *r == resource).unwrap_or(RESTORE_ORDER.len());
    items.sort_by(|a, b| (rank(&a.resource), &a.path).cmp(&(rank(&b.resource), &b.path)));
    block_on(apply(ctx.cancel, &config, net, items))?
}

/// What became of one object.
enum Outcome {
    Created,
    Replaced,
    Skipped,
}

/// The API resource of `api_version`/`kind` as the target cluster serves it.
async fn resolve(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    wait: bool,
) -> Result<(ApiResource, ApiCapabilities), String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    // A definition created moments ago takes a little while to be served.
    let attempts = if wait { 20 } else { 1 };
    let mut last = String::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(found) => return Ok(found),
            Err(e) => last = short_error(&e),
        }
    }
    Err(format!("the cluster serves no {api_version} {kind} ({last})"))
}

async fn apply(
    cancel: &CancelToken,
    config: &RestoreConfig,
    net: &NetScope,
    items: Vec<Item>,
) -> Result<RestoreReport> {
    let client = config.connection.client(net).await?;
    let mapped = |ns: &str| config.namespace_map.get(ns).cloned().unwrap_or_else(|| ns.to_string());
    let mut report = RestoreReport::default();
    let mut failures = Vec::new();
    let mut kinds: BTreeMap<(String, String), Result<(ApiResource, ApiCapabilities), String>> = BTreeMap::new();
    // Namespaces made sure of: Ok, or why their objects cannot go in.
    let mut namespaces: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    let mut definitions_created = false;
    for item in items {
        if cancel.is_cancelled() {
            return Err(backstop_repo::Error::Cancelled.into());
        }
        let Item { path, resource, namespace, mut manifest } = item;
        remap(&mut manifest, &resource, &mapped);
        // The owners' uids are the old cluster's: the collector would delete
        // the object at once. Controllers adopt what their selectors match.
        if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("ownerReferences");
        }
        let api_version = manifest["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
        let key = (api_version.clone(), kind.clone());
        if !kinds.contains_key(&key) {
            let wait = definitions_created && api_version.split_once('/').is_some_and(|(g, _)| maybe_custom(g));
            kinds.insert(key.clone(), resolve(&client, &api_version, &kind, wait).await);
        }
        let (ar, caps) = match &kinds[&key] {
            Ok(found) => found.clone(),
            Err(e) => {
                failures.push(format!("{path}: {e}"));
                continue;
            }
        };
        if resource_name(&ar) != resource || (caps.scope == Scope::Cluster) != namespace.is_none() {
            failures.push(format!("{path}: a {api_version} {kind} does not belong in {resource}"));
            continue;
        }
        let target_ns = namespace.as_deref().map(&mapped);
        let api: Api<DynamicObject> = match &target_ns {
            Some(ns) => {
                if !namespaces.contains_key(ns) {
                    let made = ensure_namespace(&client, ns, &mut report).await;
                    namespaces.insert(ns.clone(), made);
                }
                if let Err(why) = &namespaces[ns] {
                    failures.push(format!("{path}: {why}"));
                    continue;
                }
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            None => Api::all_with(client.clone(), &ar),
        };
        let name = manifest["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let target = format!("{}/{}/{name}", target_ns.as_deref().unwrap_or(CLUSTER_DIR), resource);
        match create_or(&api, &name, manifest, config.conflict).await {
            Ok(outcome) => {
                // Made just now; one that existed is checked before objects go in.
                if resource == "namespaces" && matches!(outcome, Outcome::Created) {
                    namespaces.insert(name.clone(), Ok(()));
                }
                if resource == "customresourcedefinitions.apiextensions.k8s.io" && !matches!(outcome, Outcome::Skipped)
                {
                    definitions_created = true;
                }
                let what = match outcome {
                    Outcome::Created => "created",
                    Outcome::Replaced => "replaced",
                    Outcome::Skipped => "skipped: it exists",
                };
                report.restored.push((path, format!("kubernetes:{target} ({what})")));
            }
            Err(e) => failures.push(format!("{path}: {e}")),
        }
    }
    if !failures.is_empty() {
        return Err(Error::Tool(format!(
            "kubernetes: {} objects were not restored ({} were): {}",
            failures.len(),
            report.restored.len(),
            failures.join("; ")
        )));
    }
    Ok(report)
}

/// Snapshot namespaces → target namespaces, in the object and where
/// objects name a namespace: role binding subjects, a volume's claim.
fn remap(manifest: &mut Value, resource: &str, mapped: &dyn Fn(&str) -> String) {
    let remap_at = |manifest: &mut Value, pointer: &str| {
        if let Some(ns) = manifest.pointer_mut(pointer)
            && let Some(s) = ns.as_str()
        {
            *ns = json!(mapped(s));
        }
    };
    remap_at(manifest, "/metadata/namespace");
    match resource {
        "namespaces" => {
            remap_at(manifest, "/metadata/name");
            if let Some(name) = manifest.pointer("/metadata/name").cloned()
                && let Some(labels) = manifest.pointer_mut("/metadata/labels").and_then(Value::as_object_mut)
                && labels.contains_key("kubernetes.io/metadata.name")
            {
                labels.insert("kubernetes.io/metadata.name".into(), name);
            }
        }
        "persistentvolumes" => remap_at(manifest, "/spec/claimRef/namespace"),
        "rolebindings.rbac.authorization.k8s.io" | "clusterrolebindings.rbac.authorization.k8s.io" => {
            let count = manifest.get("subjects").and_then(Value::as_array).map_or(0, Vec::len);
            for i in 0..count {
                remap_at(manifest, &format!("/subjects/{i}/namespace"));
            }
        }
        _ => {}
    }
}

/// Make sure namespace `ns` exists (the snapshot may not hold it, or
/// namespaces= left it out); Err says why objects cannot go into it.
async fn ensure_namespace(client: &kube::Client, ns: &str, report: &mut RestoreReport) -> Result<(), String> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &namespace_resource());
    match api.get_opt(ns).await {
        Ok(Some(existing)) => {
            if existing.data.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
                return Err(format!("namespace {ns} is being deleted; wait until it is gone, or map it elsewhere"));
            }
            Ok(())
        }
        // An account confined to its namespaces may not read them: go ahead.
        Err(e) if is_forbidden(&e) => Ok(()),
        Err(e) => Err(format!("namespace {ns}: {}", short_error(&e))),
        Ok(None) => {
            let obj: DynamicObject =
                serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                    .map_err(|e| e.to_string())?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    report.restored.push((
                        format!("(namespace {ns})"),
                        format!("kubernetes:{CLUSTER_DIR}/namespaces/{ns} (created without labels: the snapshot's manifest of it was not restored)"),
                    ));
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(format!("namespace {ns} could not be created: {}", short_error(&e))),
            }
        }
    }
}

/// Fields the cluster allocated to an existing object that a replace must
/// keep (they are immutable, and the manifest was stripped of them).
const ALLOCATED: &[(&str, &[&str])] = &[
    ("Service", &["/spec/clusterIP", "/spec/clusterIPs"]),
    ("PersistentVolumeClaim", &["/spec/volumeName"]),
    (
        "Job",
        &[
            "/spec/selector",
            "/spec/template/metadata/labels/controller-uid",
            "/spec/template/metadata/labels/batch.kubernetes.io~1controller-uid",
        ],
    ),
];

/// Copy `pointer` from `from` into `to` where `to` lacks it and its parent exists.
fn keep_field(from: &Value, to: &mut Value, pointer: &str) {
    let Some(value) = from.pointer(pointer) else { return };
    if to.pointer(pointer).is_some() {
        return;
    }
    let Some((parent, last)) = pointer.rsplit_once('/') else { return };
    let key = last.replace("~1", "/").replace("~0", "~");
    if let Some(map) = to.pointer_mut(parent).and_then(Value::as_object_mut) {
        map.insert(key, value.clone());
    }
}

async fn create_or(
    api: &Api<DynamicObject>,
    name: &str,
    manifest: Value,
    conflict: Conflict,
) -> Result<Outcome, String> {
    let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
    let mut obj: DynamicObject = serde_json::from_value(manifest).map_err(|e| format!("not an object: {e}"))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(Outcome::Created),
        Err(kube::Error::Api(s)) if s.code == 409 => match conflict {
            Conflict::Skip => Ok(Outcome::Skipped),
            Conflict::Overwrite => {
                let existing = api.get(name).await.map_err(|e| short_error(&e))?;
                obj.metadata.resource_version = existing.metadata.resource_version;
                for (_, pointers) in ALLOCATED.iter().filter(|(k, _)| *k == kind) {
                    for pointer in *pointers {
                        keep_field(&existing.data, &mut obj.data, pointer);
                    }
                }
                api.replace(name, &PostParams::default(), &obj).await.map_err(|e| short_error(&e))?;
                Ok(Outcome::Replaced)
            }
        },
        Err(e) => Err(short_error(&e)),
    }
}

/// The `kubernetes` kind.
pub struct Kubernetes;

impl Packager for Kubernetes {
    fn kind(&self) -> SourceKind {
        SourceKind::Kubernetes
    }

    fn target_key(&self) -> Option<&'static str> {
        Some("context")
    }

    fn validate(&self, config: &Config) -> Result<()> {
        BackupConfig::parse(config).map(drop)
    }

    fn fields(&self) -> &'static [ConfigField] {
        const FIELDS: &[ConfigField] = &[
            ConfigField::text("context", "Context", "a context of the workers' kubeconfig"),
            ConfigField::text("kubeconfig", "Kubeconfig", "path of a kubeconfig file on the worker"),
            ConfigField::text("server", "API server", "https://host:port of the cluster's API"),
            ConfigField::secret("token", "Token", "a service account's bearer token"),
            ConfigField::text("token_file", "Token file", "path of a file holding the token, on the worker"),
            ConfigField::text("certificate_authority_data", "CA certificate", "base64 PEM of the API server's CA"),
            ConfigField::flag(
                "insecure_skip_tls_verify",
                "Skip TLS verification",
                "do not check the API server's certificate",
            ),
            ConfigField::lines("namespaces", "Namespaces", "one per line; none: every namespace"),
            ConfigField::lines("exclude_namespaces", "Leave out namespaces", "one per line"),
            ConfigField::text("selector", "Label selector", "e.g. app=shop,tier!=cache"),
            ConfigField::lines("kinds", "Kinds", "resource kinds, one per line; none: every kind"),
            ConfigField::flag("owned", "Owned resources too", "also back up resources a controller owns"),
        ];
        FIELDS
    }

    fn touches(&self, config: &Config, restore: bool) -> Result<Touches> {
        let connection =
            if restore { RestoreConfig::parse(config)?.connection } else { BackupConfig::parse(config)?.connection };
        let mut out = Touches::default();
        match connection.endpoint()? {
            Some(endpoint) => out.hosts.push(endpoint),
            None => {
                out.workers_own =
                    Some("a kubernetes source without server= and token= uses the workers' own credentials".into())
            }
        }
        Ok(out)
    }

    fn backup(&self, config: &Config, reach: &Reach) -> Result<BackupSource> {
        Ok(BackupSource::Tree(tree(&BackupConfig::parse(config)?, &reach.net)?))
    }

    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        Some(CONNECTION_KEYS)
    }

    fn validate_restore(&self, config: &Config) -> Result<()> {
        RestoreConfig::parse(config).map(drop)
    }

    fn restore(&self, ctx: &RestoreContext, config: &Config, reach: &Reach) -> Result<RestoreReport> {
        restore(ctx, config, &reach.net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_through_yaml_whatever_their_strings_hold() {
        let tricky = [
            "yes",
            "no",
            "on",
            "off",
            "y",
            "~",
            "null",
            "Null",
            "true",
            "1",
            "0123",
            "0x1f",
            "1e3",
            ".inf",
            "-.nan",
            "",
            " lead",
            "trail ",
            "a: b",
            "- x",
            "#c",
            "x #c",
            "{a}",
            "[b]",
            "*ref",
            "&anchor",
            "!tag",
            "%dir",
            "@at",
            "`tick",
            "'single'",
            "\"double\"",
            "multi\nline\n",
            "no newline\nat end",
            "\ttab",
            "back\\slash",
            "grüße ✓",
            "2026-12-01",
            "12:30:00",
            "---",
            "...",
            "|",
            ">",
            "=",
            "<<",
        ];
        let data: serde_json::Map<String, Value> =
            tricky.iter().enumerate().map(|(i, s)| (format!("k{i}"), json!(s))).collect();
        let manifest = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "t", "namespace": "n", "labels": {"app.kubernetes.io/name": "x"}},
            "data": data,
            "numbers": {"int": 8080, "neg": -1, "big": 9007199254740993u64, "float": 0.5, "bool": true, "nil": null},
            "list": [[], {}, [1, "2"]],
        });
        let yaml = to_yaml(&manifest).unwrap();
        let text = String::from_utf8(yaml.clone()).unwrap();
        assert!(text.starts_with("apiVersion: v1\nkind: ConfigMap\nmetadata:\n"), "{text}");
        assert_eq!(from_yaml(&yaml).unwrap(), manifest, "{text}");
    }

    #[test]
    fn proptest_any_string_survives() {
        use proptest::prelude::*;
        proptest!(|(value in any::<String>(), key in "[a-z][a-z0-9._-]{0,20}")| {
            let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"}, "data": {key.clone(): value.clone()}});
            let yaml = to_yaml(&manifest).unwrap();
            prop_assert_eq!(from_yaml(&yaml).unwrap(), manifest, "{}", String::from_utf8_lossy(&yaml));
        });
    }

    #[test]
    fn proptest_any_bytes_read_back_never_panic() {
        use proptest::prelude::*;
        let yamlish = proptest::collection::vec(
            prop_oneof![
                Just("a: "),
                Just("- "),
                Just("\n  "),
                Just("&x "),
                Just("*x"),
                Just("!!str "),
                Just("{"),
                Just("["),
                Just("'"),
                Just("\""),
                Just("apiVersion: v1\n"),
                Just("metadata:\n  name: n\n"),
                Just("kind: K\n")
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat().into_bytes());
        proptest!(|(bytes in prop_oneof![any::<Vec<u8>>(), yamlish])| {
            if let Ok(manifest) = from_yaml(&bytes) {
                prop_assert!(to_yaml(&manifest).is_ok());
            }
        });
    }

    #[test]
    fn selectors_and_names_are_checked() {
        for ok in ["app=web", "app=web,tier!=cache", "env in (prod,staging)", "!legacy", "a,b"] {
            check_selector(ok).unwrap();
        }
        for bad in ["", "app=web,", "env in (prod", "a,,b", "!"] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
        assert!(safe_name("kube-root-ca.crt") && safe_name("system:controller:x"));
        assert!(!safe_name("..") && !safe_name("a/b") && !safe_name(""));
        assert_eq!(split_entry("shop/deployments.apps/web.yaml"), Some(("shop", "deployments.apps", "web")));
        assert_eq!(split_entry("shop/web.yaml"), None);
        assert_eq!(split_entry("a/b/c/d.yaml"), None);
    }
}
