//! The conformance suite against a real S3-protocol server over HTTP.

use std::sync::atomic::Ordering;

use backstop_backend::{Backend, ErrorKind, NetScope, PutMode, S3Backend, S3Options, conformance};
use backstop_testkit::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};

fn options(server: &S3Server, secret: &str) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint()),
        region: Some(REGION.into()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(secret.into()),
        session_token: None,
        allow_http: Some(true),
    }
}

#[test]
fn s3_backend_passes_the_conformance_suite() {
    let server = S3Server::start(&["conformance"]);
    let backend = S3Backend::new("conformance", "", &options(&server, SECRET_KEY), &NetScope::Any).unwrap();
    conformance::run_all(&backend);
}

#[test]
fn s3_backend_under_a_prefix_passes_the_conformance_suite_and_stays_inside_it() {
    let server = S3Server::start(&["shared"]);
    let outside = S3Backend::new("shared", "", &options(&server, SECRET_KEY), &NetScope::Any).unwrap();
    outside.put("other-tenant/object", b"keep me", PutMode::Create).unwrap();
    let backend = S3Backend::new("shared", "team/repo", &options(&server, SECRET_KEY), &NetScope::Any).unwrap();
    conformance::run_all(&backend);
    assert_eq!(outside.get("other-tenant/object").unwrap(), b"keep me");
    assert!(outside.list("team/").unwrap().is_empty());
}

#[test]
fn wrong_credentials_are_reported_as_permission_denied() {
    let server = S3Server::start(&["bucket"]);
    let backend = S3Backend::new("bucket", "", &options(&server, "wrong-secret"), &NetScope::Any).unwrap();
    let err = backend.put("config", b"x", PutMode::Create).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

#[test]
fn a_missing_bucket_is_a_configuration_error() {
    let server = S3Server::start(&[]);
    let backend = S3Backend::new("no-such-bucket", "", &options(&server, SECRET_KEY), &NetScope::Any).unwrap();
    let err = backend.get("config").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidConfig | ErrorKind::NotFound), "{err}");
}

fn granted(grants: &[&str]) -> NetScope {
    NetScope::Granted { grants: grants.iter().map(|g| g.parse().unwrap()).collect(), own: vec![] }
}

#[test]
fn a_confined_repository_reaches_only_what_its_tenant_was_granted() {
    let server = S3Server::start(&["bucket"]);
    let port = server.endpoint().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    for scope in [NetScope::nowhere(), granted(&["0.0.0.0/0"]), granted(&["localhost"])] {
        let err = S3Backend::new("bucket", "", &options(&server, SECRET_KEY), &scope).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{scope:?}: {err}");
        assert!(err.to_string().contains("may not connect to"), "{err}");
    }
    // A grant that names loopback (and the port) opens it, by address and by name.
    let scope = granted(&[&format!("127.0.0.1/32:{port}")]);
    let backend = S3Backend::new("bucket", "", &options(&server, SECRET_KEY), &scope).unwrap();
    backend.put("config", b"granted", PutMode::Create).unwrap();
    let mut by_name = options(&server, SECRET_KEY);
    by_name.endpoint = Some(format!("http://localhost:{port}"));
    let backend = S3Backend::new("bucket", "", &by_name, &scope).unwrap();
    assert_eq!(backend.get("config").unwrap(), b"granted", "the name resolved to the granted address only");
    // The service's own environment is not lent to a confined repository.
    let mut no_endpoint = options(&server, SECRET_KEY);
    no_endpoint.endpoint = None;
    assert!(S3Backend::new("bucket", "", &no_endpoint, &scope).is_err());
    let mut no_keys = options(&server, SECRET_KEY);
    no_keys.secret_access_key = None;
    no_keys.access_key_id = None;
    assert!(S3Backend::new("bucket", "", &no_keys, &scope).is_err());
}

#[test]
fn errors_never_echo_what_a_server_sent_and_redirects_are_not_followed() {
    let body = "<Error><Code>AccessDenied</Code><Message>root:x:0:0 planted-remote-body</Message></Error>";
    let (port, _) = backstop_testkit::canned_http(format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut opts = options_at(port);
    let scope = granted(&["127.0.0.1/32"]);
    let backend = S3Backend::new("bucket", "", &opts, &scope).unwrap();
    let err = backend.get("config").unwrap_err().to_string();
    assert!(err.contains("403") && err.contains("AccessDenied"), "{err}");
    assert!(!err.contains("planted-remote-body") && !err.contains("root:x"), "{err}");

    let (elsewhere, hits) = backstop_testkit::canned_http("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into());
    let (redirecting, _) = backstop_testkit::canned_http(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{elsewhere}/bucket/config\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    opts = options_at(redirecting);
    let backend = S3Backend::new("bucket", "", &opts, &scope).unwrap();
    assert!(backend.get("config").is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was not followed");
}

fn options_at(port: u16) -> S3Options {
    S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some(REGION.into()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        session_token: None,
        allow_http: Some(true),
    }
}
