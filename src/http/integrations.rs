//! The five integrations operations (contract §2), for v1.0 and v2 alike.
//!
//! Handlers stay thin: parse the body, validate through the domain schema, seal or open the
//! configuration, call the store, and render with masking. Configurations are sealed whole,
//! with `integration:<group>:<type>` as associated data so a ciphertext cannot be moved to
//! another row.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ErrorCode, Result};
use super::query::Params;
use super::reply::{ListPage, Reply};
use super::AppState;
use crate::crypto::Keyring;
use crate::domain::ids::{GroupId, ObjectId};
use crate::domain::integration::{self, ApiVersion, Config, FieldError, IntegrationType, Rendered};
use crate::store::{ReadHint, StoreError, StoredIntegration};

/// The largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The deepest JSON nesting accepted (the top-level object is level 1).
pub const MAX_JSON_DEPTH: usize = 64;

/// What every operation needs to know about its request.
pub struct Context<'a> {
    /// Shared state.
    pub state: &'a AppState,
    /// The project.
    pub group: GroupId,
    /// The storage's hint for reading the project's integrations (from the access check).
    pub hint: ReadHint,
    /// The API version.
    pub version: ApiVersion,
    /// The query parameters.
    pub params: Params,
    /// The absolute URL of the addressed resource, without query, for `links`.
    pub link_base: super::LinkBase<'a>,
}

/// Associated data for an integration's sealed configuration.
pub fn config_aad(group: GroupId, kind: IntegrationType) -> ConfigAad {
    // Built by hand, on the stack: `format!` was ≈ 900 instructions, and a `Vec` one more
    // allocation, for every row a GET or a list opens.
    let mut aad = ConfigAad {
        bytes: [0; ConfigAad::CAPACITY],
        len: 0,
    };
    let hex = group.hex();
    for part in [
        b"integration:".as_slice(),
        &hex,
        b":",
        kind.as_str().as_bytes(),
    ] {
        // Every type's name fits (a unit test checks them all against the formatted text).
        let end = aad.len + part.len();
        if let Some(slot) = aad.bytes.get_mut(aad.len..end) {
            slot.copy_from_slice(part);
            aad.len = end;
        }
    }
    aad
}

/// The associated data of [`config_aad`].
pub struct ConfigAad {
    bytes: [u8; ConfigAad::CAPACITY],
    len: usize,
}

impl ConfigAad {
    /// `integration:`, 24 digits, `:` and a type name of up to 27 characters.
    const CAPACITY: usize = 64;
}

impl std::ops::Deref for ConfigAad {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Seals a configuration for storage.
pub fn seal(keyring: &Keyring, group: GroupId, config: &Config) -> Vec<u8> {
    let plain = secrecy::SecretSlice::from(config.to_json());
    keyring.encrypt(&config_aad(group, config.kind()), plain.expose_secret())
}

/// Opens a stored configuration and hands its JSON to `read`: [`Config::from_json`] for a
/// configuration to work on, [`Rendered::from_stored`] for one to show.
pub fn open<T>(
    keyring: &Keyring,
    group: GroupId,
    stored: &StoredIntegration,
    read: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
) -> anyhow::Result<T> {
    let plain = keyring
        .decrypt(&config_aad(group, stored.kind), &stored.sealed)
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot decrypt the {} integration of group {group}: {err}",
                stored.kind
            )
        })?;
    read(plain.expose_secret()).map_err(|_| {
        anyhow::anyhow!(
            "the stored {} configuration of group {group} is not valid JSON",
            stored.kind
        )
    })
}

/// Opens a stored configuration ([`open`]); a value sealed under a key this server does not
/// know yet (a rotation started by another process) makes it adopt the pending key and try
/// again.
async fn open_stored<T>(
    ctx: &Context<'_>,
    stored: &StoredIntegration,
    read: impl Fn(&[u8]) -> Result<T, serde_json::Error>,
) -> anyhow::Result<T> {
    match open(&ctx.state.keyring.ring(), ctx.group, stored, &read) {
        Ok(opened) => Ok(opened),
        Err(err) => {
            let unknown_key = Keyring::key_id_of(&stored.sealed)
                .is_some_and(|id| !ctx.state.keyring.ring().contains(id));
            if unknown_key
                && ctx
                    .state
                    .keyring
                    .adopt_pending(ctx.state.store.as_ref())
                    .await?
            {
                return open(&ctx.state.keyring.ring(), ctx.group, stored, read);
            }
            Err(err)
        }
    }
}

/// Opens a stored configuration to work on.
async fn open_config(ctx: &Context<'_>, stored: &StoredIntegration) -> anyhow::Result<Config> {
    open_stored(ctx, stored, |plain| Config::from_json(stored.kind, plain)).await
}

/// Opens a stored configuration as `ctx`'s responses show it.
async fn open_rendered(ctx: &Context<'_>, stored: &StoredIntegration) -> anyhow::Result<Rendered> {
    open_stored(ctx, stored, |plain| {
        Rendered::from_stored(stored.kind, plain, ctx.version, stored.id)
    })
    .await
}

/// `GET /groups/{groupId}/integrations`: every configured integration, paginated.
///
/// Atlas: <https://www.mongodb.com/docs/atlas/reference/api-resources-spec/v2/#tag/Third-Party-Integrations/operation/listGroupIntegrations>
pub async fn list_integrations(ctx: &Context<'_>) -> Result<Reply> {
    let stored = ctx.state.store.list_integrations(ctx.group).await?;
    render_list(ctx, &stored, None).await
}

/// The list object for a project's stored integrations. `written` is the configuration a
/// POST or PUT has just stored, with its sealed form: that row is rendered from it rather
/// than opened again.
async fn render_list(
    ctx: &Context<'_>,
    stored: &[StoredIntegration],
    written: Option<(&Config, &[u8])>,
) -> Result<Reply> {
    let mut rendered = Vec::with_capacity(stored.len());
    for s in stored.iter().filter(|s| s.kind.available_in(ctx.version)) {
        if let Some((config, _)) = written.filter(|&(_, sealed)| sealed == s.sealed.as_slice()) {
            rendered.push(config.rendered(ctx.version, s.id));
            continue;
        }
        match open_rendered(ctx, s).await {
            Ok(shown) => rendered.push(shown),
            // One unreadable row must not hide the others: it is left out and logged.
            Err(err) => tracing::error!(error = %err, "integration left out of the list"),
        }
    }
    Ok(Reply::List(page(ctx, rendered)))
}

/// Builds the paginated list object of contract §6.
fn page(ctx: &Context<'_>, all: Vec<Rendered>) -> ListPage {
    let Params {
        page_num,
        items_per_page,
        include_count,
        ..
    } = ctx.params;
    let total = all.len() as u64;
    let skip = page_num.saturating_sub(1).saturating_mul(items_per_page);
    let results: Vec<Rendered> = all
        .into_iter()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(usize::try_from(items_per_page).unwrap_or(usize::MAX))
        .collect();
    let base = ctx.link_base.build();
    let href = |n: u64| {
        json!({
            "href": format!("{base}?pageNum={n}&itemsPerPage={items_per_page}"),
            "rel": if n == page_num { "self" } else if n < page_num { "previous" } else { "next" },
        })
    };
    let mut links = vec![href(page_num)];
    if page_num > 1 {
        links.push(href(page_num - 1));
    }
    if page_num.saturating_mul(items_per_page) < total {
        links.push(href(page_num + 1));
    }
    ListPage {
        links,
        results,
        total_count: include_count.then_some(total),
    }
}

/// `GET /groups/{groupId}/integrations/{type}`: one integration.
///
/// Atlas: <https://www.mongodb.com/docs/atlas/reference/api-resources-spec/v2/#tag/Third-Party-Integrations/operation/getGroupIntegration>
pub async fn get_integration(ctx: &Context<'_>, kind: IntegrationType) -> Result<Reply> {
    let stored = ctx
        .state
        .store
        .get_integration_hinted(ctx.group, kind, ctx.hint)
        .await?
        .ok_or_else(|| not_configured(kind))?;
    let shown = open_rendered(ctx, &stored)
        .await
        .map_err(ApiError::internal)?;
    Ok(Reply::Object(shown))
}

/// `POST /groups/{groupId}/integrations/{type}`: creates; 409 when already configured.
/// Answers the list of all the project's integrations.
///
/// Atlas: <https://www.mongodb.com/docs/atlas/reference/api-resources-spec/v2/#tag/Third-Party-Integrations/operation/createGroupIntegration>
pub async fn create_integration(
    ctx: &Context<'_>,
    kind: IntegrationType,
    body: &Map<String, Value>,
) -> Result<Reply> {
    let config = integration::validate(kind, ctx.version, body, None).map_err(field_error)?;
    let stored = StoredIntegration {
        id: ObjectId::generate(),
        kind,
        sealed: seal(&ctx.state.keyring.ring(), ctx.group, &config),
    };
    let listed = match ctx
        .state
        .store
        .create_integration_listed(ctx.group, &stored)
        .await
    {
        Ok(listed) => listed,
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                ErrorCode::IntegrationAlreadyConfigured,
                [kind.as_str()],
            ))
        }
        Err(other) => return Err(other.into()),
    };
    render_list(ctx, &listed, Some((&config, &stored.sealed))).await
}

/// `PUT /groups/{groupId}/integrations/{type}`: replaces the whole configuration, or creates
/// it. Secrets sent back in their masked form keep the stored value. Answers the list.
///
/// Atlas: <https://www.mongodb.com/docs/atlas/reference/api-resources-spec/v2/#tag/Third-Party-Integrations/operation/updateGroupIntegration>
pub async fn update_integration(
    ctx: &Context<'_>,
    kind: IntegrationType,
    body: &Map<String, Value>,
) -> Result<Reply> {
    // The stored row is read only when the outcome can depend on it (masked secrets sent
    // back, a create-only field left out); a body that sets everything replaces it unread.
    // An unreadable stored row is not replaced from masks: the client would otherwise store
    // the masks in place of the real values. A full body or DELETE then POST repairs it.
    let existing = if integration::depends_on_stored(kind, body) {
        let stored = ctx
            .state
            .store
            .get_integration_hinted(ctx.group, kind, ctx.hint);
        match stored.await? {
            Some(stored) => Some(
                open_config(ctx, &stored)
                    .await
                    .map_err(ApiError::internal)?,
            ),
            None => None,
        }
    } else {
        None
    };
    let config =
        integration::validate(kind, ctx.version, body, existing.as_ref()).map_err(field_error)?;
    let stored = StoredIntegration {
        id: ObjectId::generate(),
        kind,
        sealed: seal(&ctx.state.keyring.ring(), ctx.group, &config),
    };
    let listed = ctx
        .state
        .store
        .replace_integration_listed(ctx.group, &stored)
        .await?;
    render_list(ctx, &listed, Some((&config, &stored.sealed))).await
}

/// `DELETE /groups/{groupId}/integrations/{type}`: 204, or 404 when not configured.
///
/// Atlas: <https://www.mongodb.com/docs/atlas/reference/api-resources-spec/v2/#tag/Third-Party-Integrations/operation/deleteGroupIntegration>
pub async fn delete_integration(ctx: &Context<'_>, kind: IntegrationType) -> Result<Reply> {
    if ctx.state.store.delete_integration(ctx.group, kind).await? {
        Ok(Reply::NoContent)
    } else {
        Err(not_configured(kind))
    }
}

fn not_configured(kind: IntegrationType) -> ApiError {
    ApiError::new(ErrorCode::IntegrationNotConfigured, [kind.as_str()])
}

fn field_error(err: FieldError) -> ApiError {
    match err {
        FieldError::InvalidAttribute(name) => ApiError::new(ErrorCode::InvalidAttribute, [name]),
        FieldError::InvalidJsonAttribute(name) => {
            ApiError::new(ErrorCode::InvalidJsonAttribute, [name])
        }
        FieldError::MissingAttribute(name) => ApiError::new(ErrorCode::MissingAttribute, [name]),
        FieldError::InvalidEnumValue(value) => ApiError::new(ErrorCode::InvalidEnumValue, [value]),
        FieldError::InvalidSettings { kind, message } => ApiError::new(
            ErrorCode::InvalidIntegrationSettings,
            [kind.as_str().to_owned(), message],
        ),
        FieldError::FlowdockFlowName => ApiError::plain(ErrorCode::InvalidFlowdockFlowName),
    }
}

fn too_large() -> ApiError {
    ApiError::new(ErrorCode::RequestBodyTooLarge, [MAX_BODY_BYTES.to_string()])
}

/// Reads a POST/PUT body: at most [`MAX_BODY_BYTES`] (413 beyond), a JSON object nested at
/// most [`MAX_JSON_DEPTH`] deep (`MALFORMED_JSON` otherwise, also for an empty body).
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(_) => return Err(ApiError::plain(ErrorCode::MalformedJson)),
    };
    parse_object(&bytes)
}

/// Parses a body as a JSON object within the depth limit.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>> {
    let malformed = || ApiError::plain(ErrorCode::MalformedJson);
    let value: Value = serde_json::from_slice(bytes).map_err(|_| malformed())?;
    if depth(&value) > MAX_JSON_DEPTH {
        return Err(malformed());
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(malformed()),
    }
}

/// Nesting depth; serde_json itself refuses more than 128 levels, so recursion is bounded.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_aad_is_integration_group_type() {
        let group = ObjectId::generate();
        for kind in IntegrationType::ALL {
            assert_eq!(
                config_aad(group, kind).to_vec(),
                format!("integration:{group}:{kind}").into_bytes()
            );
        }
    }

    #[test]
    fn bodies_nested_deeper_than_64_are_malformed() {
        let ok = format!(
            "{}{}",
            "{\"a\":".repeat(64),
            "1".to_owned() + &"}".repeat(64)
        );
        assert!(parse_object(ok.as_bytes()).is_ok());
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(65),
            "1".to_owned() + &"}".repeat(65)
        );
        assert_eq!(
            parse_object(deep.as_bytes()).unwrap_err().code,
            ErrorCode::MalformedJson
        );
        let very_deep = "[".repeat(100_000);
        assert_eq!(
            parse_object(very_deep.as_bytes()).unwrap_err().code,
            ErrorCode::MalformedJson
        );
    }

    #[test]
    fn non_objects_empty_and_invalid_utf8_are_malformed() {
        for body in [
            &b""[..],
            b"[]",
            b"\"x\"",
            b"null",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1",
            b"{} {}",
        ] {
            assert_eq!(
                parse_object(body).unwrap_err().code,
                ErrorCode::MalformedJson
            );
        }
    }
}
