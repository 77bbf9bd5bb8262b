//! Turning results into HTTP responses: JSON (optionally `pretty`), the `envelope` wrapping of
//! contract §6, and the media types of contract §2.

use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::error::{ApiError, ErrorCode, WireError};
use super::query::{Params, V2_MEDIA_TYPE};
use crate::domain::integration::{ApiVersion, Rendered};

/// A successful result before presentation.
#[derive(Debug)]
pub enum Reply {
    /// A list object (`links`, `results`, `totalCount`).
    List(ListPage),
    /// One object.
    Object(Rendered),
    /// 204 No Content.
    NoContent,
    /// A plain status body (health).
    Status(StatusCode, Value),
}

/// A page of a list (contract §6).
#[derive(Debug)]
pub struct ListPage {
    /// `self`, `previous`, `next`.
    pub links: Vec<Value>,
    /// This page's objects.
    pub results: Vec<Rendered>,
    /// With `includeCount`: every object's count.
    pub total_count: Option<u64>,
}

/// A page's compact JSON, with the envelope's `status` when there is one: its members by
/// name, as a map of them would be written; the objects are copied as rendered.
fn page_json(page: &ListPage, status: Option<u16>) -> Vec<u8> {
    let objects: usize = page.results.iter().map(|r| r.as_bytes().len() + 1).sum();
    let mut out = Vec::with_capacity(objects + 256);
    out.extend_from_slice(b"{\"links\":");
    serde_json::to_writer(&mut out, &page.links).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"results\":[");
    for (i, object) in page.results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(object.as_bytes());
    }
    out.push(b']');
    if let Some(status) = status {
        out.extend_from_slice(format!(",\"status\":{status}").as_bytes());
    }
    if let Some(total) = page.total_count {
        out.extend_from_slice(format!(",\"totalCount\":{total}").as_bytes());
    }
    out.push(b'}');
    out
}

/// An object's compact JSON, inside the envelope (`content` and `status`, in a map's order)
/// when asked.
fn object_json(object: Rendered, envelope: Option<u16>) -> Vec<u8> {
    match envelope {
        None => object.into_bytes(),
        Some(status) => {
            let mut out = Vec::with_capacity(object.as_bytes().len() + 32);
            out.extend_from_slice(b"{\"content\":");
            out.extend_from_slice(object.as_bytes());
            out.extend_from_slice(format!(",\"status\":{status}}}").as_bytes());
            out
        }
    }
}

/// Compact JSON as sent: unchanged, or with `pretty` laid out again as serde_json's pretty
/// printer writes it (members in the same order: maps are ordered by name).
fn laid_out(compact: Vec<u8>, pretty: bool) -> Vec<u8> {
    if !pretty {
        return compact;
    }
    match serde_json::from_slice::<Value>(&compact) {
        Ok(value) => to_bytes(&value, true),
        Err(_) => compact,
    }
}

fn to_bytes(value: &impl serde::Serialize, pretty: bool) -> Vec<u8> {
    let bytes = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    bytes.unwrap_or_default()
}

fn respond(
    status: StatusCode,
    body: &impl serde::Serialize,
    pretty: bool,
    media: &'static str,
) -> Response<Body> {
    with_body(status, to_bytes(body, pretty), media)
}

fn with_body(status: StatusCode, bytes: impl Into<Body>, media: &'static str) -> Response<Body> {
    let mut response = Response::new(bytes.into());
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
        (Reply::List(page), envelope) => with_body(
            StatusCode::OK,
            laid_out(page_json(&page, envelope.then_some(200)), params.pretty),
            media,
        ),
        (Reply::Object(object), envelope) => with_body(
            StatusCode::OK,
            laid_out(object_json(object, envelope.then_some(200)), params.pretty),
            media,
        ),
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
    let shared = (!params.envelope && !params.pretty && err.parameters.is_empty())
        .then(|| plain_body(err.code))
        .flatten();
    let body: Body = match shared {
        Some(bytes) => bytes.into(),
        None if params.envelope => to_bytes(
            &Enveloped {
                content: err.wire(),
                status: status.as_u16(),
            },
            params.pretty,
        )
        .into(),
        None => to_bytes(&err.wire(), params.pretty).into(),
    };
    let mut response = with_body(status, body, "application/json");
    for (name, value) in err.headers {
        response.headers_mut().append(name, value);
    }
    response
}

/// The compact body of an error without parameters (the 401 of every wrong or missing
/// password among them), written once per code and shared: under callgrind, writing it again
/// was ≈ 3,500 of a 401's ≈ 53,000 instructions. `None` for a code beyond the table, which is
/// then written each time.
fn plain_body(code: ErrorCode) -> Option<Bytes> {
    // More slots than there are codes (a fieldless enum's `as usize` is its declaration index).
    static BODIES: [OnceLock<Bytes>; 64] = [const { OnceLock::new() }; 64];
    let slot = BODIES.get(code as usize)?;
    Some(
        slot.get_or_init(|| Bytes::from(to_bytes(&ApiError::plain(code).wire(), false)))
            .clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shared_error_body_is_the_one_written_for_it() {
        use http_body_util::BodyExt;
        for code in [
            ErrorCode::UserUnauthorized,
            ErrorCode::NotInGroup,
            ErrorCode::MalformedJson,
        ] {
            let written = to_bytes(&ApiError::plain(code).wire(), false);
            assert_eq!(plain_body(code).as_deref(), Some(written.as_slice()));
            let response = failure(ApiError::plain(code), Params::default());
            assert_eq!(response.status(), code.status());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.as_ref(), written.as_slice(), "{code:?}");
        }
        // The same code with parameters is written with them, not from the table.
        let response = failure(
            ApiError::new(ErrorCode::MalformedJson, ["x"]),
            Params::default(),
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body.as_ref(),
            to_bytes(
                &ApiError::new(ErrorCode::MalformedJson, ["x"]).wire(),
                false
            )
            .as_slice()
        );
    }

    fn sample_objects() -> Vec<Rendered> {
        use crate::domain::ids::ObjectId;
        use crate::domain::integration::IntegrationType;
        [
            (
                IntegrationType::Slack,
                &br#"{"apiToken":"xoxb-1234567890","channelName":"a\"b","teamName":"t"}"#[..],
            ),
            (
                IntegrationType::PagerDuty,
                br#"{"region":"US","serviceKey":"0123456789abcdef"}"#,
            ),
        ]
        .into_iter()
        .map(|(kind, plain)| {
            Rendered::from_stored(kind, plain, ApiVersion::V2, ObjectId::generate()).unwrap()
        })
        .collect()
    }

    #[test]
    fn pages_are_written_as_maps_of_the_same_members_are() {
        let links =
            vec![json!({"href": "http://localhost/x?pageNum=1&itemsPerPage=100", "rel": "self"})];
        for results in [Vec::new(), sample_objects()] {
            for (status, total_count) in [
                (None, None),
                (Some(200), None),
                (None, Some(3)),
                (Some(200), Some(3)),
            ] {
                let page = ListPage {
                    links: links.clone(),
                    results: results.clone(),
                    total_count,
                };
                let mut map = serde_json::Map::new();
                map.insert("links".to_owned(), Value::Array(links.clone()));
                let objects = results.iter().map(|r| Value::Object(r.clone().into_map()));
                map.insert("results".to_owned(), Value::Array(objects.collect()));
                if let Some(status) = status {
                    map.insert("status".to_owned(), json!(status));
                }
                if let Some(total) = total_count {
                    map.insert("totalCount".to_owned(), json!(total));
                }
                let written = page_json(&page, status);
                assert_eq!(
                    String::from_utf8(written.clone()).unwrap(),
                    serde_json::to_string(&map).unwrap()
                );
                assert_eq!(
                    laid_out(written, true),
                    serde_json::to_vec_pretty(&map).unwrap()
                );
            }
        }
    }

    #[test]
    fn objects_are_written_as_maps_of_the_same_members_are() {
        for object in sample_objects() {
            let map = object.clone().into_map();
            assert_eq!(
                object_json(object.clone(), None),
                serde_json::to_vec(&map).unwrap()
            );
            let enveloped = json!({"status": 200, "content": map});
            assert_eq!(
                object_json(object.clone(), Some(200)),
                serde_json::to_vec(&enveloped).unwrap()
            );
            assert_eq!(
                laid_out(object_json(object, Some(200)), true),
                serde_json::to_vec_pretty(&enveloped).unwrap()
            );
        }
    }
}
