//! The web dashboard: plain HTML, CSS and JavaScript from `server/assets/`, compiled into
//! the binary so `memoryrouter serve` needs no other files, web server or CDN.
//!
//! Every dashboard response carries a strict Content-Security-Policy (no inline script or
//! style, no third-party origin, no framing, no form posts), `nosniff` and `no-referrer`.
//! The dashboard talks to the API with the admin key in the `Authorization` header, so it
//! needs no cookie and is not open to cross-site request forgery.
//!
//! Assets are not fingerprinted, so they are served `no-cache` with an `ETag`: the browser
//! revalidates each load (a cheap 304) and a new binary's assets take effect at once.

use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, ETAG, HeaderValue, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, Response, StatusCode};

use crate::http::{Body, full, text_response};

/// The policy the dashboard is written for: everything from this origin only, images also
/// as `data:` URLs, and nothing inline. Anything that needs more is a bug in the dashboard.
pub(crate) const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

const CACHE_CONTROL_VALUE: &str = "no-cache";

/// One file of the dashboard.
struct Asset {
    /// The name under `/assets/` (and in `server/assets/`).
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// FNV-1a of the bytes, computed at compile time; the `ETag` value.
    hash: u64,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!("../assets/", $name)),
            hash: fnv1a(include_bytes!(concat!("../assets/", $name))),
        }
    };
}

/// Every file in `server/assets/` (a unit test checks that none is missing).
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("ui.js", "text/javascript; charset=utf-8"),
    asset!("overview.js", "text/javascript; charset=utf-8"),
    asset!("keys.js", "text/javascript; charset=utf-8"),
    asset!("providers.js", "text/javascript; charset=utf-8"),
    asset!("memories.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// 64-bit FNV-1a: tiny, `const`, and plenty to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

fn find(path: &str) -> Option<&'static Asset> {
    let name = match path {
        "/" | "/index.html" => "index.html",
        _ => path.strip_prefix("/assets/")?,
    };
    ASSETS.iter().find(|asset| asset.name == name)
}

/// The content type and bytes served at `path` (`/`, `/index.html` or `/assets/<name>`).
#[cfg(test)]
fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    find(path).map(|asset| (asset.content_type, asset.bytes))
}

/// The response for a `GET` of `path`: the asset with its security and cache headers, a
/// `304` when the browser's `If-None-Match` already names this version, or a `404`.
pub(crate) fn response(path: &str, request_headers: &HeaderMap) -> Response<Body> {
    let Some(asset) = find(path) else {
        let mut response = text_response(
            StatusCode::NOT_FOUND,
            "Not found.\n",
            "text/plain; charset=utf-8",
        );
        add_security_headers(response.headers_mut());
        return response;
    };
    let etag = format!("\"{:016x}\"", asset.hash);
    let mut response = if etag_matches(request_headers, &etag) {
        let mut response = Response::new(full(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        text_response(StatusCode::OK, asset.bytes, asset.content_type)
    };
    let headers = response.headers_mut();
    add_security_headers(headers);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL_VALUE));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, value);
    }
    response
}

fn add_security_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // For browsers that predate `frame-ancestors`.
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `If-None-Match` is a list of (possibly weak) tags, or `*`.
fn etag_matches(request_headers: &HeaderMap, etag: &str) -> bool {
    request_headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|list| {
            list.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str) -> &'static str {
        let asset = ASSETS
            .iter()
            .find(|a| a.name == name)
            .expect("asset is listed");
        std::str::from_utf8(asset.bytes).expect("asset is UTF-8")
    }

    #[test]
    fn serves_the_page_at_root_and_index() {
        for path in ["/", "/index.html"] {
            let (content_type, bytes) = asset(path).expect("page is served");
            assert_eq!(content_type, "text/html; charset=utf-8");
            assert!(bytes.starts_with(b"<!doctype html>"));
        }
        assert_eq!(
            asset("/assets/app.js").map(|(t, _)| t),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(asset("/assets/nope.js"), None);
        assert_eq!(asset("/assets/../Cargo.toml"), None);
        assert_eq!(asset("/app.js"), None);
    }

    #[test]
    fn every_file_in_the_assets_folder_is_compiled_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("assets folder")
            .map(|entry| {
                entry
                    .expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        on_disk.sort();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn every_referenced_asset_and_module_exists() {
        let page = text("index.html");
        let mut referenced: Vec<&str> = page
            .split("\"/assets/")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        for js in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let source = text(js.name);
            referenced.extend(
                source
                    .split("from './")
                    .skip(1)
                    .filter_map(|s| s.split('\'').next()),
            );
        }
        assert!(
            referenced.len() >= 10,
            "found the references: {referenced:?}"
        );
        for name in referenced {
            assert!(
                find(&format!("/assets/{name}")).is_some(),
                "{name} is referenced but not served"
            );
        }
    }

    /// Whether the page has an attribute like ` onclick=`, which a strict CSP blocks.
    fn has_event_handler_attribute(page: &str) -> bool {
        page.split(" on").skip(1).any(|rest| {
            rest.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic())
            })
        })
    }

    #[test]
    fn nothing_needs_unsafe_inline_or_renders_data_as_html() {
        let page = text("index.html").to_ascii_lowercase();
        assert!(
            !page.contains("<script>") && !page.contains("<style"),
            "no inline script or style element"
        );
        assert!(!page.contains(" style="), "no style attributes");
        assert!(
            !has_event_handler_attribute(&page),
            "no inline event handlers"
        );
        for attribute in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(
                !page.contains(attribute),
                "no third-party origin ({attribute})"
            );
        }
        for js in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let source = text(js.name);
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(!source.contains(banned), "{} uses {banned}", js.name);
            }
        }
    }

    #[test]
    fn responses_carry_the_security_headers_and_revalidate() {
        let response = response("/", &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers[CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY_VALUE
        );
        assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[REFERRER_POLICY], "no-referrer");
        assert_eq!(headers[CACHE_CONTROL], "no-cache");
        let etag = headers[ETAG].clone();

        let mut conditional = HeaderMap::new();
        conditional.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&format!("W/\"0\", {}", etag.to_str().expect("ascii")))
                .expect("valid"),
        );
        let cached = super::response("/", &conditional);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[ETAG], etag);
        assert_eq!(
            cached.headers()[CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY_VALUE
        );

        conditional.insert(
            IF_NONE_MATCH,
            HeaderValue::from_static("\"0000000000000000\""),
        );
        assert_eq!(super::response("/", &conditional).status(), StatusCode::OK);

        let missing = super::response("/assets/missing.js", &HeaderMap::new());
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[test]
    fn the_policy_is_the_one_the_dashboard_is_written_for() {
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(
                CONTENT_SECURITY_POLICY_VALUE
                    .split("; ")
                    .any(|d| d == directive),
                "{directive}"
            );
        }
        assert!(!CONTENT_SECURITY_POLICY_VALUE.contains("unsafe"));
    }

    #[test]
    fn etags_differ_between_files() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        let mut hashes: Vec<u64> = ASSETS.iter().map(|a| a.hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ASSETS.len());
    }
}
