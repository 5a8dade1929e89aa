//! The UI's style sheet and script, embedded in the binary. Each is served
//! under a name that carries a hash of its bytes, so a browser may keep it
//! for a year and still never uses an old one after an upgrade, and
//! compressed (once, on first use): zstd for browsers that take it (Chromium
//! asks for it over HTTPS), else deflate (every browser, also over HTTP).

use std::sync::OnceLock;

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

/// A content coding of the assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Zstd,
    /// HTTP's `deflate`: a zlib stream (RFC 1950).
    Deflate,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Deflate => "deflate",
        }
    }

    fn compress(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Coding::Zstd => zstd::bulk::compress(bytes, 19).expect("zstd compresses a buffer in memory"),
            Coding::Deflate => miniz_oxide::deflate::compress_to_vec_zlib(bytes, 10),
        }
    }
}

/// Asset `index` of [`ASSETS`] compressed with `coding`.
fn compressed(index: usize, coding: Coding) -> &'static [u8] {
    static ZSTD: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    static DEFLATE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let cell = if coding == Coding::Zstd { &ZSTD } else { &DEFLATE };
    &cell.get_or_init(|| ASSETS.iter().map(|a| coding.compress(a.bytes)).collect())[index]
}

/// The best coding the request's `Accept-Encoding` takes, if any.
fn coding_for(headers: &HeaderMap) -> Option<Coding> {
    let takes = |name: &str| {
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|coding| coding.split(';').next().is_some_and(|c| c.trim().eq_ignore_ascii_case(name)))
    };
    [Coding::Zstd, Coding::Deflate].into_iter().find(|c| takes(c.name()))
}

/// The URL of the asset `stem.ext`, as pages link it.
pub fn url(stem: &str, ext: &str) -> String {
    let asset = ASSETS.iter().find(|a| a.stem == stem && a.ext == ext).expect("a known asset");
    format!("/assets/{}", asset.name())
}

pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name() == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let asset = &ASSETS[index];
    let etag = format!("\"{:016x}\"", fnv1a(asset.bytes));
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        (header::ETAG, HeaderValue::from_str(&etag).expect("hex is ASCII")),
    ];
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
    let content_type = (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    if let Some(coding) = coding_for(&headers) {
        let encoding = (header::CONTENT_ENCODING, HeaderValue::from_static(coding.name()));
        return (cache, [content_type, vary, encoding], compressed(index, coding)).into_response();
    }
    (cache, [content_type, vary], asset.bytes).into_response()
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

    #[test]
    fn a_browser_gets_the_best_coding_it_takes_and_each_decompresses_to_the_asset() {
        let mut headers = HeaderMap::new();
        assert_eq!(coding_for(&headers), None);
        for (accept, coding) in [
            ("gzip, deflate, br, zstd", Some(Coding::Zstd)),
            ("gzip, deflate", Some(Coding::Deflate)),
            ("gzip, zstd;q=0.5", Some(Coding::Zstd)),
            ("gzip, xzstd", None),
        ] {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(accept));
            assert_eq!(coding_for(&headers), coding, "{accept}");
        }
        for (i, asset) in ASSETS.iter().enumerate() {
            let zstd = zstd::bulk::decompress(compressed(i, Coding::Zstd), asset.bytes.len()).unwrap();
            assert_eq!(zstd, asset.bytes);
            let deflate = miniz_oxide::inflate::decompress_to_vec_zlib(compressed(i, Coding::Deflate)).unwrap();
            assert_eq!(deflate, asset.bytes);
            assert!(compressed(i, Coding::Deflate).len() < asset.bytes.len() / 2, "{} compresses", asset.name());
        }
    }
}
