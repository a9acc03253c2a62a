//! Every response weir writes itself, in one place.

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;

/// Cilium's refusal, byte for byte.
pub const ACCESS_DENIED: &str = "Access denied\r\n";

pub fn access_denied() -> Response<ProxyBody> {
    text(StatusCode::FORBIDDEN, ACCESS_DENIED)
}

pub fn bad_request(why: &str) -> Response<ProxyBody> {
    text(StatusCode::BAD_REQUEST, &format!("Bad request: {why}\r\n"))
}

pub fn filter_failed() -> Response<ProxyBody> {
    text(StatusCode::INTERNAL_SERVER_ERROR, "Policy filter failed\r\n")
}

pub fn upstream_unavailable() -> Response<ProxyBody> {
    text(StatusCode::SERVICE_UNAVAILABLE, "Upstream unavailable\r\n")
}

pub fn upstream_failed() -> Response<ProxyBody> {
    text(StatusCode::BAD_GATEWAY, "Upstream failed\r\n")
}

pub fn method_not_allowed(why: &str) -> Response<ProxyBody> {
    text(StatusCode::METHOD_NOT_ALLOWED, &format!("{why}\r\n"))
}

pub fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// A reply a filter chose. Header names and values were checked by the caller.
pub fn custom(status: StatusCode, headers: Vec<(HeaderName, HeaderValue)>, body: Vec<u8>) -> Response<ProxyBody> {
    let length = body.len();
    let mut response = Response::new(ProxyBody::local(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().append(name, value);
    }
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// Ask an HTTP/1 client to close after this response (its request body was
/// not read to the end, so the connection cannot be reused).
pub fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
