//! Atlas's error body (contract §5): every failure, 401 included, answers
//! `{"detail","error","errorCode","parameters","reason"}`, the detail built from Atlas's
//! template with the parameters substituted. 500s keep their cause for the log only.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

/// The Atlas error codes this server answers with, each with its status and template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400
    InvalidAttribute,
    /// 400
    InvalidJsonAttribute,
    /// 400
    MissingAttribute,
    /// 400
    InvalidEnumValue,
    /// 400
    InvalidIntegrationSettings,
    /// 400
    InvalidFlowdockFlowName,
    /// 400
    MalformedJson,
    /// 400
    HipchatNotSupported,
    /// 400
    InvalidQueryParameter,
    /// 401
    UserUnauthorized,
    /// 401
    NotInGroup,
    /// 403
    AccessForbidden,
    /// 403
    IpAddressNotOnAccessList,
    /// 404
    ResourceNotFound,
    /// 404
    InvalidGroupId,
    /// 404
    IntegrationNotConfigured,
    /// 405
    MethodNotAllowed,
    /// 406
    InvalidVersionDate,
    /// 409
    IntegrationAlreadyConfigured,
    /// 413
    RequestBodyTooLarge,
    /// 429
    RateLimited,
    /// 500
    UnexpectedError,
    /// 503
    ServiceUnavailable,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.spec().0
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        self.spec().1
    }

    fn spec(self) -> (&'static str, StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::InvalidAttribute => (
                "INVALID_ATTRIBUTE",
                S::BAD_REQUEST,
                "Invalid attribute %s specified.",
            ),
            Self::InvalidJsonAttribute => (
                "INVALID_JSON_ATTRIBUTE",
                S::BAD_REQUEST,
                "Received JSON for the %s attribute does not match expected format.",
            ),
            Self::MissingAttribute => (
                "MISSING_ATTRIBUTE",
                S::BAD_REQUEST,
                "The required attribute %s was not specified.",
            ),
            Self::InvalidEnumValue => (
                "INVALID_ENUM_VALUE",
                S::BAD_REQUEST,
                "An invalid enumeration value %s was specified.",
            ),
            Self::InvalidIntegrationSettings => (
                "INVALID_INTEGRATION_SETTINGS",
                S::BAD_REQUEST,
                "The provided settings for the %s integration were invalid: %s.",
            ),
            Self::InvalidFlowdockFlowName => (
                "INVALID_FLOWDOCK_FLOW_NAME",
                S::BAD_REQUEST,
                "Flowdock flow name cannot contain spaces.",
            ),
            Self::MalformedJson => (
                "MALFORMED_JSON",
                S::BAD_REQUEST,
                "Received JSON is malformed.",
            ),
            Self::HipchatNotSupported => (
                "HIPCHAT_NOT_SUPPORTED",
                S::BAD_REQUEST,
                "HipChat integration is only supported for Ops Manager projects.",
            ),
            Self::InvalidQueryParameter => (
                "INVALID_QUERY_PARAMETER",
                S::BAD_REQUEST,
                "Invalid query parameter %s specified.",
            ),
            Self::UserUnauthorized => (
                "USER_UNAUTHORIZED",
                S::UNAUTHORIZED,
                "Current user is not authorized to perform this action.",
            ),
            Self::NotInGroup => (
                "NOT_IN_GROUP",
                S::UNAUTHORIZED,
                "The current user is not in the group, or the group does not exist.",
            ),
            Self::AccessForbidden => (
                "ACCESS_FORBIDDEN",
                S::FORBIDDEN,
                "Access to this resource is forbidden for current user.",
            ),
            Self::IpAddressNotOnAccessList => (
                "IP_ADDRESS_NOT_ON_ACCESS_LIST",
                S::FORBIDDEN,
                "IP address %s is not allowed to access this resource.",
            ),
            Self::ResourceNotFound => (
                "RESOURCE_NOT_FOUND",
                S::NOT_FOUND,
                "Cannot find resource %s.",
            ),
            Self::InvalidGroupId => (
                "INVALID_GROUP_ID",
                S::NOT_FOUND,
                "An invalid group ID %s was specified.",
            ),
            Self::IntegrationNotConfigured => (
                "INTEGRATION_NOT_CONFIGURED",
                S::NOT_FOUND,
                "The integration of type '%s' is not configured for this group.",
            ),
            Self::MethodNotAllowed => (
                "METHOD_NOT_ALLOWED",
                S::METHOD_NOT_ALLOWED,
                "Method %s is not allowed on this resource.",
            ),
            Self::InvalidVersionDate => (
                "INVALID_VERSION_DATE",
                S::NOT_ACCEPTABLE,
                "Invalid accept header or version date.",
            ),
            Self::IntegrationAlreadyConfigured => (
                "INTEGRATION_ALREADY_CONFIGURED",
                S::CONFLICT,
                "The integration of type '%s' is already configured for this group.",
            ),
            Self::RequestBodyTooLarge => (
                "REQUEST_BODY_TOO_LARGE",
                S::PAYLOAD_TOO_LARGE,
                "The request body exceeds the limit of %s bytes.",
            ),
            Self::RateLimited => (
                "RATE_LIMITED",
                S::TOO_MANY_REQUESTS,
                "Resource %s is limited to %s requests every %s minutes.",
            ),
            Self::UnexpectedError => (
                "UNEXPECTED_ERROR",
                S::INTERNAL_SERVER_ERROR,
                "Unexpected error.",
            ),
            Self::ServiceUnavailable => (
                "SERVICE_UNAVAILABLE",
                S::SERVICE_UNAVAILABLE,
                "The service is temporarily unavailable.",
            ),
        }
    }
}

/// A client-visible failure: an Atlas error body plus any headers it needs.
#[derive(Debug)]
pub struct ApiError {
    /// The error code.
    pub code: ErrorCode,
    /// The parameters substituted into the detail template.
    pub parameters: Vec<String>,
    /// Extra response headers (`WWW-Authenticate`, `Allow`, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// For 500s: the cause, logged and never returned.
    pub cause: Option<anyhow::Error>,
}

/// The result type of the HTTP layer.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    /// An error with its parameters.
    pub fn new<I, S>(code: ErrorCode, parameters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            code,
            parameters: parameters.into_iter().map(Into::into).collect(),
            headers: Vec::new(),
            cause: None,
        }
    }

    /// An error without parameters.
    pub fn plain(code: ErrorCode) -> Self {
        Self::new(code, Vec::<String>::new())
    }

    /// A 500 whose cause goes to the log only.
    pub fn internal(cause: anyhow::Error) -> Self {
        Self {
            cause: Some(cause),
            ..Self::plain(ErrorCode::UnexpectedError)
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The detail: the template with `%s` replaced by the parameters in order.
    pub fn detail(&self) -> String {
        let template = self.code.spec().2;
        let mut out = String::with_capacity(template.len() + 32);
        let mut params = self.parameters.iter();
        let mut pieces = template.split("%s");
        if let Some(first) = pieces.next() {
            out.push_str(first);
        }
        for piece in pieces {
            out.push_str(params.next().map_or("", String::as_str));
            out.push_str(piece);
        }
        out
    }

    /// The Atlas error body.
    pub fn body(&self) -> Value {
        serde_json::to_value(self.wire()).unwrap_or(Value::Null)
    }

    /// The Atlas error body, ready to serialize without building a `Value` (fields in the
    /// alphabetical order Atlas uses).
    pub fn wire(&self) -> WireError<'_> {
        let status = self.code.status();
        WireError {
            detail: self.detail(),
            error: status.as_u16(),
            error_code: self.code.as_str(),
            parameters: &self.parameters,
            reason: status.canonical_reason().unwrap_or(""),
        }
    }
}

/// The Atlas error body as serialized.
#[derive(Debug, serde::Serialize)]
pub struct WireError<'a> {
    detail: String,
    error: u16,
    #[serde(rename = "errorCode")]
    error_code: &'static str,
    parameters: &'a [String],
    reason: &'static str,
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Unavailable(message) => {
                tracing::warn!(%message, "database unavailable");
                Self::plain(ErrorCode::ServiceUnavailable).with_header(
                    axum::http::header::RETRY_AFTER,
                    HeaderValue::from_static("1"),
                )
            }
            // A row the write refers to vanished after the access check (the project was
            // deleted meanwhile): the caller is no longer in that group.
            crate::store::StoreError::NotFound => Self::plain(ErrorCode::NotInGroup),
            other => Self::internal(anyhow::Error::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detail_substitutes_parameters_in_order() {
        let err = ApiError::new(
            ErrorCode::InvalidIntegrationSettings,
            ["DATADOG", "apiKey must be a hexadecimal string"],
        );
        assert_eq!(
            err.detail(),
            "The provided settings for the DATADOG integration were invalid: apiKey must be a hexadecimal string."
        );
    }

    #[test]
    fn body_has_atlas_fields() {
        let err = ApiError::new(ErrorCode::IntegrationAlreadyConfigured, ["DATADOG"]);
        assert_eq!(
            err.body(),
            json!({"detail":"The integration of type 'DATADOG' is already configured for this group.",
                   "error":409,"errorCode":"INTEGRATION_ALREADY_CONFIGURED","parameters":["DATADOG"],"reason":"Conflict"})
        );
    }
}
