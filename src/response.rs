//! Answers made here rather than proxied (refusals, admin pages, the demo's IdP): the one
//! helper every listener uses, so each sets its content type the same way and none forgets
//! `Cache-Control: no-store` on something a shared cache must not keep.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// A local answer with a body of `content_type`.
pub fn local(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `local`, marked `Cache-Control: no-store` (decisions, status pages, metrics).
pub fn no_store(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = local(status, content_type, body);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
