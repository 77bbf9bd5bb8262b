//! Turning results into HTTP responses: JSON (optionally `pretty`), the `envelope` wrapping of
//! contract §6, and the media types of contract §2.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::error::{ApiError, WireError};
use super::query::{Params, V2_MEDIA_TYPE};
use crate::domain::integration::ApiVersion;

/// A successful result before presentation.
#[derive(Debug)]
pub enum Reply {
    /// A list object (`links`, `results`, `totalCount`).
    List(Map<String, Value>),
    /// One object.
    Object(Map<String, Value>),
    /// 204 No Content.
    NoContent,
    /// A plain status body (health).
    Status(StatusCode, Value),
}

fn to_bytes(value: &impl serde::Serialize, pretty: bool) -> Vec<u8> {
    let bytes = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    bytes.unwrap_or_default()
}

fn respond(status: StatusCode, body: &Value, pretty: bool, media: &'static str) -> Response<Body> {
    with_body(status, to_bytes(body, pretty), media)
}

fn with_body(status: StatusCode, bytes: Vec<u8>, media: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    response
}

/// The response for a success.
pub fn success(reply: Reply, params: Params, version: ApiVersion) -> Response<Body> {
    let media = match version {
        ApiVersion::V1 => "application/json",
        ApiVersion::V2 => V2_MEDIA_TYPE,
    };
    match (reply, params.envelope) {
        (Reply::List(mut list), true) => {
            list.insert("status".to_owned(), json!(200));
            respond(StatusCode::OK, &Value::Object(list), params.pretty, media)
        }
        (Reply::List(list), false) => {
            respond(StatusCode::OK, &Value::Object(list), params.pretty, media)
        }
        (Reply::Object(object), true) => respond(
            StatusCode::OK,
            &json!({"status": 200, "content": object}),
            params.pretty,
            media,
        ),
        (Reply::Object(object), false) => {
            respond(StatusCode::OK, &Value::Object(object), params.pretty, media)
        }
        // The envelope must carry the status in the body, so the HTTP status becomes 200.
        (Reply::NoContent, true) => respond(
            StatusCode::OK,
            &json!({"status": 204, "content": {}}),
            params.pretty,
            media,
        ),
        (Reply::NoContent, false) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        (Reply::Status(status, body), _) => {
            respond(status, &body, params.pretty, "application/json")
        }
    }
}

/// The response for an error: the Atlas body (enveloped when asked), its headers, and the
/// cause of a 500 written to the log.
pub fn failure(err: ApiError, params: Params) -> Response<Body> {
    if let Some(cause) = &err.cause {
        tracing::error!(error = ?cause, "unexpected error");
    }
    #[derive(serde::Serialize)]
    struct Enveloped<'a> {
        content: WireError<'a>,
        status: u16,
    }
    let status = err.code.status();
    let bytes = if params.envelope {
        to_bytes(
            &Enveloped {
                content: err.wire(),
                status: status.as_u16(),
            },
            params.pretty,
        )
    } else {
        to_bytes(&err.wire(), params.pretty)
    };
    let mut response = with_body(status, bytes, "application/json");
    for (name, value) in err.headers {
        response.headers_mut().append(name, value);
    }
    response
}
