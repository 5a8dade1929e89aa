//! The UI's style sheet and script, embedded in the binary. Each is served
//! under a name that carries a hash of its bytes, so a browser may keep it
//! for a year and still never uses an old one after an upgrade.

use axum::extract::Path;
use axum::http::header::{self, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

struct Asset {
    /// The name before the hash and its extension: `app` of `app.<hash>.css`.
    stem: &'static str,
    ext: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 2] = [
    Asset { stem: "app", ext: "css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("assets/app.css") },
    Asset {
        stem: "app",
        ext: "js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/app.js"),
    },
];

/// FNV-1a over the bytes: enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

impl Asset {
    fn name(&self) -> String {
        format!("{}.{:016x}.{}", self.stem, fnv1a(self.bytes), self.ext)
    }
}

/// The URL of the asset `stem.ext`, as pages link it.
pub fn url(stem: &str, ext: &str) -> String {
    let asset = ASSETS.iter().find(|a| a.stem == stem && a.ext == ext).expect("a known asset");
    format!("/assets/{}", asset.name())
}

pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name() == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let etag = format!("\"{:016x}\"", fnv1a(asset.bytes));
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        (header::ETAG, HeaderValue::from_str(&etag).expect("hex is ASCII")),
    ];
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.bytes).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_names_change_with_their_bytes() {
        assert_ne!(fnv1a(b"body { }"), fnv1a(b"body {}"));
        let css = url("app", "css");
        assert!(css.starts_with("/assets/app.") && css.ends_with(".css"), "{css}");
        assert_ne!(css, url("app", "js").replace(".js", ".css"), "each file has its own hash");
    }
}
