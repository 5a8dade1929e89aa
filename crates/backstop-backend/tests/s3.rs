//! The conformance suite against a real S3-protocol server over HTTP.

use backstop_backend::{Backend, ErrorKind, PutMode, S3Backend, S3Options, conformance};
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
    let backend = S3Backend::new("conformance", "", &options(&server, SECRET_KEY)).unwrap();
    conformance::run_all(&backend);
}

#[test]
fn s3_backend_under_a_prefix_passes_the_conformance_suite_and_stays_inside_it() {
    let server = S3Server::start(&["shared"]);
    let outside = S3Backend::new("shared", "", &options(&server, SECRET_KEY)).unwrap();
    outside.put("other-tenant/object", b"keep me", PutMode::Create).unwrap();
    let backend = S3Backend::new("shared", "team/repo", &options(&server, SECRET_KEY)).unwrap();
    conformance::run_all(&backend);
    assert_eq!(outside.get("other-tenant/object").unwrap(), b"keep me");
    assert!(outside.list("team/").unwrap().is_empty());
}

#[test]
fn wrong_credentials_are_reported_as_permission_denied() {
    let server = S3Server::start(&["bucket"]);
    let backend = S3Backend::new("bucket", "", &options(&server, "wrong-secret")).unwrap();
    let err = backend.put("config", b"x", PutMode::Create).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

#[test]
fn a_missing_bucket_is_a_configuration_error() {
    let server = S3Server::start(&[]);
    let backend = S3Backend::new("no-such-bucket", "", &options(&server, SECRET_KEY)).unwrap();
    let err = backend.get("config").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidConfig | ErrorKind::NotFound), "{err}");
}
