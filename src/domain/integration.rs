//! Integration types and their field rules, declared once per type in [`TypeSchema`].
//!
//! One declaration drives everything a type needs: which fields exist in which API version,
//! their JSON types, enums and defaults, the validation order of contract §3, which fields are
//! secret and how each secret is masked in responses (§4). Adding a type means one enum
//! variant, one schema entry and one test row; the compiler points at the `match`es.
//!
//! A stored configuration ([`Config`]) holds only the type's own fields, in clear, with defaults
//! applied; the storage layer encrypts it as a whole. Its `Debug` masks every secret.

use std::fmt;
use std::sync::OnceLock;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::ids::ObjectId;
use super::mask::{mask_key, mask_url, FULL_MASK};

/// The Atlas Administration API version a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// `/api/atlas/v1.0`
    V1,
    /// `/api/atlas/v2` (resource version 2023-01-01)
    V2,
}

/// The third-party services a project can be integrated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IntegrationType {
    /// PagerDuty
    PagerDuty,
    /// Slack
    Slack,
    /// Datadog
    Datadog,
    /// New Relic
    NewRelic,
    /// Opsgenie
    OpsGenie,
    /// VictorOps (Splunk On-Call)
    VictorOps,
    /// Flowdock (v1.0 only)
    Flowdock,
    /// Generic webhook
    Webhook,
    /// Microsoft Teams
    MicrosoftTeams,
    /// Prometheus
    Prometheus,
}

impl IntegrationType {
    /// Every type, in the order Atlas documents them.
    pub const ALL: [Self; 10] = [
        Self::PagerDuty,
        Self::Slack,
        Self::Datadog,
        Self::NewRelic,
        Self::OpsGenie,
        Self::VictorOps,
        Self::Flowdock,
        Self::Webhook,
        Self::MicrosoftTeams,
        Self::Prometheus,
    ];

    /// The Atlas wire name (`PAGER_DUTY`, ...).
    pub fn as_str(self) -> &'static str {
        self.schema().name
    }

    /// The type's number in SQLite's integration key (`project number × 16 + code`): its
    /// position in [`Self::ALL`]. Stored, so never renumbered; new types go at the end.
    pub fn code(self) -> i64 {
        match self {
            Self::PagerDuty => 0,
            Self::Slack => 1,
            Self::Datadog => 2,
            Self::NewRelic => 3,
            Self::OpsGenie => 4,
            Self::VictorOps => 5,
            Self::Flowdock => 6,
            Self::Webhook => 7,
            Self::MicrosoftTeams => 8,
            Self::Prometheus => 9,
        }
    }

    /// Parses an exact wire name (case-sensitive, as Atlas).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Whether the type exists in that API version (FLOWDOCK is v1.0 only).
    pub fn available_in(self, version: ApiVersion) -> bool {
        !(self == Self::Flowdock && version == ApiVersion::V2)
    }

    /// The type's field declaration.
    pub fn schema(self) -> &'static TypeSchema {
        match self {
            Self::PagerDuty => &PAGER_DUTY,
            Self::Slack => &SLACK,
            Self::Datadog => &DATADOG,
            Self::NewRelic => &NEW_RELIC,
            Self::OpsGenie => &OPS_GENIE,
            Self::VictorOps => &VICTOR_OPS,
            Self::Flowdock => &FLOWDOCK,
            Self::Webhook => &WEBHOOK,
            Self::MicrosoftTeams => &MICROSOFT_TEAMS,
            Self::Prometheus => &PROMETHEUS,
        }
    }
}

impl fmt::Display for IntegrationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field's JSON type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// A string from a fixed list.
    Enum(&'static [&'static str]),
}

/// When a field must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// In every version.
    Required,
    /// Required through v1.0, optional through v2.
    RequiredInV1,
    /// Required through v2, optional through v1.0.
    RequiredInV2,
    /// Required when the integration is created; omitted on replace keeps the stored value.
    RequiredOnCreate,
    /// Optional; the default, if any, is stored when it is absent.
    Optional(Option<Default>),
}

/// A stored default for an absent optional field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// A string value.
    Str(&'static str),
    /// A boolean value.
    Bool(bool),
}

/// Whether a field is secret, and how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    /// Not a secret.
    Public,
    /// A secret Atlas returns in clear (New Relic, Flowdock, VictorOps' routing key); still
    /// encrypted at rest and masked in logs.
    ClearInResponses,
    /// Last-four masking.
    MaskKey,
    /// Scheme, host and port kept.
    MaskUrl,
    /// Fixed `******`.
    MaskFull,
    /// Never returned.
    Hidden,
}

impl Secrecy {
    /// Whether the value is a secret (encrypted at rest, masked in logs).
    pub fn is_secret(self) -> bool {
        self != Self::Public
    }

    /// What a response shows of `value`.
    fn shown(self, value: &str) -> Option<String> {
        match self {
            Self::Public | Self::ClearInResponses => Some(value.to_owned()),
            Self::MaskKey => Some(mask_key(value)),
            Self::MaskUrl => Some(mask_url(value)),
            Self::MaskFull => Some(FULL_MASK.to_owned()),
            Self::Hidden => None,
        }
    }

    /// Whether `text` may be what a response showed of some stored value, so that a PUT
    /// sending it back keeps the stored value (see [`validate`]). Exact for every form
    /// [`Self::shown`] produces: last-four masks are empty or start with `*`, URL masks end
    /// with `****`, a secret shown in clear can be any text, a hidden one is never shown.
    fn may_be_shown_form(self, text: &str) -> bool {
        match self {
            Self::Public | Self::Hidden => false,
            Self::ClearInResponses => true,
            Self::MaskKey => text.is_empty() || text.starts_with('*'),
            Self::MaskUrl => text.ends_with("****"),
            Self::MaskFull => text == FULL_MASK,
        }
    }
}

/// A type-specific rule checked after types, presence and enums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// None beyond non-empty and the length limit.
    None,
    /// `[0-9a-fA-F]+`.
    Hex,
    /// No spaces (Flowdock flow names).
    NoSpaces,
    /// An absolute `http` or `https` URL.
    HttpUrl,
    /// An absolute `https` URL.
    HttpsUrl,
    /// At most this many characters.
    MaxChars(usize),
}

/// How an absent or special value is shown in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The stored value, or nothing when absent.
    AsStored,
    /// The stored value, or `""` when absent (Slack `channelName`).
    EmptyWhenAbsent,
    /// A boolean v2 always returns, and v1.0 only when `true` (Datadog's metric switches).
    TrueOnlyInV1,
}

/// One field of an integration type.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The wire name.
    pub name: &'static str,
    /// The JSON type.
    pub kind: Kind,
    /// When it is required.
    pub presence: Presence,
    /// Secret or not, and its masking.
    pub secrecy: Secrecy,
    /// The type rule.
    pub rule: Rule,
    /// How responses show it.
    pub output: Output,
}

/// The declaration of one integration type.
#[derive(Debug)]
pub struct TypeSchema {
    /// The Atlas wire name.
    pub name: &'static str,
    /// The fields, in the contract's order (which is also the validation order).
    pub fields: &'static [Field],
    /// Read-only fields a client may send back (ignored), with the value responses show.
    pub read_only: &'static [(&'static str, &'static str)],
}

impl TypeSchema {
    /// The field of that name, if the type has it.
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn field(name: &'static str, kind: Kind, presence: Presence) -> Field {
    Field {
        name,
        kind,
        presence,
        secrecy: Secrecy::Public,
        rule: Rule::None,
        output: Output::AsStored,
    }
}

const fn secret(name: &'static str, presence: Presence, secrecy: Secrecy, rule: Rule) -> Field {
    Field {
        name,
        kind: Kind::Str,
        presence,
        secrecy,
        rule,
        output: Output::AsStored,
    }
}

const REGION_US_EU: Kind = Kind::Enum(&["US", "EU"]);
const DEFAULT_US: Presence = Presence::Optional(Some(Default::Str("US")));
const DEFAULT_FALSE: Presence = Presence::Optional(Some(Default::Bool(false)));
const OPTIONAL: Presence = Presence::Optional(None);

const fn datadog_switch(name: &'static str) -> Field {
    Field {
        output: Output::TrueOnlyInV1,
        ..field(name, Kind::Bool, DEFAULT_FALSE)
    }
}

static PAGER_DUTY: TypeSchema = TypeSchema {
    name: "PAGER_DUTY",
    fields: &[
        secret(
            "serviceKey",
            Presence::Required,
            Secrecy::MaskKey,
            Rule::None,
        ),
        field("region", REGION_US_EU, DEFAULT_US),
    ],
    read_only: &[],
};

static SLACK: TypeSchema = TypeSchema {
    name: "SLACK",
    fields: &[
        secret("apiToken", Presence::Required, Secrecy::MaskKey, Rule::None),
        field("teamName", Kind::Str, Presence::RequiredInV1),
        Field {
            rule: Rule::MaxChars(80),
            output: Output::EmptyWhenAbsent,
            ..field("channelName", Kind::Str, Presence::RequiredInV2)
        },
    ],
    read_only: &[],
};

static DATADOG: TypeSchema = TypeSchema {
    name: "DATADOG",
    fields: &[
        secret("apiKey", Presence::Required, Secrecy::MaskKey, Rule::Hex),
        field(
            "region",
            Kind::Enum(&["US", "US3", "US5", "EU", "AP1", "AP2", "US1_FED"]),
            DEFAULT_US,
        ),
        datadog_switch("sendCollectionLatencyMetrics"),
        datadog_switch("sendDatabaseMetrics"),
        datadog_switch("sendQueryStatsMetrics"),
        datadog_switch("sendUserProvidedResourceTags"),
    ],
    read_only: &[],
};

static NEW_RELIC: TypeSchema = TypeSchema {
    name: "NEW_RELIC",
    fields: &[
        secret(
            "licenseKey",
            Presence::Required,
            Secrecy::ClearInResponses,
            Rule::None,
        ),
        secret(
            "accountId",
            Presence::Required,
            Secrecy::ClearInResponses,
            Rule::None,
        ),
        secret(
            "writeToken",
            Presence::Required,
            Secrecy::ClearInResponses,
            Rule::None,
        ),
        secret(
            "readToken",
            Presence::Required,
            Secrecy::ClearInResponses,
            Rule::None,
        ),
    ],
    read_only: &[],
};

static OPS_GENIE: TypeSchema = TypeSchema {
    name: "OPS_GENIE",
    fields: &[
        secret("apiKey", Presence::Required, Secrecy::MaskKey, Rule::None),
        field("region", REGION_US_EU, DEFAULT_US),
    ],
    read_only: &[],
};

static VICTOR_OPS: TypeSchema = TypeSchema {
    name: "VICTOR_OPS",
    fields: &[
        secret("apiKey", Presence::Required, Secrecy::MaskKey, Rule::None),
        secret(
            "routingKey",
            OPTIONAL,
            Secrecy::ClearInResponses,
            Rule::None,
        ),
    ],
    read_only: &[],
};

static FLOWDOCK: TypeSchema = TypeSchema {
    name: "FLOWDOCK",
    fields: &[
        Field {
            rule: Rule::NoSpaces,
            ..field("flowName", Kind::Str, Presence::Required)
        },
        secret(
            "apiToken",
            Presence::Required,
            Secrecy::ClearInResponses,
            Rule::None,
        ),
        field("orgName", Kind::Str, Presence::Required),
    ],
    read_only: &[],
};

static WEBHOOK: TypeSchema = TypeSchema {
    name: "WEBHOOK",
    fields: &[
        secret("url", Presence::Required, Secrecy::MaskUrl, Rule::HttpUrl),
        secret("secret", OPTIONAL, Secrecy::MaskFull, Rule::None),
    ],
    read_only: &[],
};

static MICROSOFT_TEAMS: TypeSchema = TypeSchema {
    name: "MICROSOFT_TEAMS",
    fields: &[secret(
        "microsoftTeamsWebhookUrl",
        Presence::Required,
        Secrecy::MaskUrl,
        Rule::HttpsUrl,
    )],
    read_only: &[],
};

static PROMETHEUS: TypeSchema = TypeSchema {
    name: "PROMETHEUS",
    fields: &[
        field("username", Kind::Str, Presence::Required),
        secret(
            "password",
            Presence::RequiredOnCreate,
            Secrecy::Hidden,
            Rule::None,
        ),
        field(
            "serviceDiscovery",
            Kind::Enum(&["http", "file"]),
            Presence::Required,
        ),
        field("enabled", Kind::Bool, Presence::Required),
        field(
            "sendUserProvidedResourceTagsEnabled",
            Kind::Bool,
            DEFAULT_FALSE,
        ),
    ],
    read_only: &[("scheme", "https")],
};

/// The longest string any field accepts, in bytes.
pub const MAX_STRING_BYTES: usize = 4096;

/// A stored configuration: the type's own fields in clear, defaults applied. `Debug` masks
/// every secret field.
#[derive(Clone, PartialEq)]
pub struct Config {
    kind: IntegrationType,
    fields: Map<String, Value>,
}

impl Config {
    /// Rebuilds a configuration from its stored JSON (as produced by [`Config::to_json`]).
    pub fn from_json(kind: IntegrationType, bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let fields = serde_json::from_slice(bytes)?;
        Ok(Self { kind, fields })
    }

    /// The stored JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.fields).unwrap_or_default()
    }

    /// The integration type.
    pub fn kind(&self) -> IntegrationType {
        self.kind
    }

    /// A field's stored string value.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// A field's stored boolean value.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.fields.get(name).and_then(Value::as_bool)
    }

    /// The response object for `version`: secrets masked or left out, defaults shown, `type`
    /// added, and `id` in v2.
    pub fn render(&self, version: ApiVersion, id: ObjectId) -> Map<String, Value> {
        self.rendered(version, id).into_map()
    }

    /// [`Config::render`]'s object as the responses write it: the stored form rendered by
    /// [`Rendered::from_stored`], so that a configuration in hand and one read back are
    /// shown by the same code.
    pub fn rendered(&self, version: ApiVersion, id: ObjectId) -> Rendered {
        Rendered::from_stored(self.kind, &self.to_json(), version, id)
            .expect("a configuration's own JSON is an object")
    }
}

/// A configuration as a response shows it: the compact JSON object, its members by name, the
/// order in which a `serde_json::Map` holds and writes them (the responses' order since the
/// first release). Written straight from the stored JSON ([`Rendered::from_stored`]) rather
/// than through a map: parsing the stored configuration into a map, building the response's
/// values and writing them was most of the ≈ 9,000 instructions a GET spent after
/// decryption, nearly all of it allocating and freeing. `Debug` shows the member names only.
#[derive(Clone, PartialEq)]
pub struct Rendered(Vec<u8>);

/// One member of a response object, in the order [`members`] gives.
#[derive(Debug, Clone, Copy)]
enum Member {
    /// The schema's field at this position.
    Field(usize),
    /// The schema's read-only field at this position.
    ReadOnly(usize),
    /// `type`.
    Type,
    /// `id` (v2 only).
    Id,
}

/// The members a type's response objects may have, by name (`id` included; v1.0 leaves it
/// out). Member names are distinct (a unit test checks every schema).
fn members(kind: IntegrationType) -> &'static [(&'static str, Member)] {
    static MEMBERS: [OnceLock<Vec<(&'static str, Member)>>; IntegrationType::ALL.len()] =
        [const { OnceLock::new() }; IntegrationType::ALL.len()];
    MEMBERS[kind.code() as usize].get_or_init(|| {
        let schema = kind.schema();
        let mut all: Vec<(&'static str, Member)> = schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, field)| (field.name, Member::Field(i)))
            .chain(
                schema
                    .read_only
                    .iter()
                    .enumerate()
                    .map(|(i, &(name, _))| (name, Member::ReadOnly(i))),
            )
            .chain([("type", Member::Type), ("id", Member::Id)])
            .collect();
        all.sort_unstable_by_key(|&(name, _)| name);
        all
    })
}

/// The most fields a type declares (a unit test checks every schema against it).
const MAX_FIELDS: usize = 16;

/// The stored JSON's members, as raw JSON, at their field's position in the schema; members
/// the schema does not declare are skipped.
struct Slots<'de> {
    fields: &'static [Field],
    values: [Option<&'de RawValue>; MAX_FIELDS],
}

impl<'de> serde::de::Visitor<'de> for &mut Slots<'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stored configuration object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(position) = map.next_key_seed(FieldPosition(self.fields))? {
            match position {
                Some(i) => self.values[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads a member name as the position of the schema's field of that name, if any.
struct FieldPosition(&'static [Field]);

impl<'de> serde::de::DeserializeSeed<'de> for FieldPosition {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for FieldPosition {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|field| field.name == name))
    }
}

impl Rendered {
    /// The response object for `version` of a stored configuration (`plain`, the JSON
    /// [`Config::to_json`] wrote): secrets masked or left out, defaults shown, `type` added,
    /// and `id` in v2. Values shown as stored are copied as the stored JSON has them.
    pub fn from_stored(
        kind: IntegrationType,
        plain: &[u8],
        version: ApiVersion,
        id: ObjectId,
    ) -> Result<Self, serde_json::Error> {
        use serde::Deserializer as _;
        let schema = kind.schema();
        let mut slots = Slots {
            fields: schema.fields,
            values: [None; MAX_FIELDS],
        };
        let mut parser = serde_json::Deserializer::from_slice(plain);
        parser.deserialize_map(&mut slots)?;
        parser.end()?;
        let mut out = Vec::with_capacity(plain.len() + 64);
        out.push(b'{');
        for &(name, member) in members(kind) {
            let start = out.len();
            if start > 1 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            let shown = match member {
                Member::Field(i) => {
                    let field = &schema.fields[i];
                    write_field(&mut out, field, slots.values[i], version)?
                }
                Member::ReadOnly(i) => write_str(&mut out, schema.read_only[i].1),
                Member::Type => write_str(&mut out, schema.name),
                Member::Id if version == ApiVersion::V2 => {
                    out.push(b'"');
                    out.extend_from_slice(&id.hex());
                    out.push(b'"');
                    true
                }
                Member::Id => false,
            };
            if !shown {
                out.truncate(start);
            }
        }
        out.push(b'}');
        Ok(Self(out))
    }

    /// The compact JSON object.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The compact JSON object, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The same members as a map.
    pub fn into_map(self) -> Map<String, Value> {
        serde_json::from_slice(&self.0).expect("a rendered object is a JSON object")
    }
}

/// Writes what a response shows of a field whose stored value is `stored` (raw JSON); false
/// when it shows nothing.
fn write_field(
    out: &mut Vec<u8>,
    field: &Field,
    stored: Option<&RawValue>,
    version: ApiVersion,
) -> Result<bool, serde_json::Error> {
    let raw = stored.map(RawValue::get);
    match (field.output, raw) {
        (Output::TrueOnlyInV1, value) => {
            let on = value == Some("true");
            if version == ApiVersion::V1 && !on {
                return Ok(false);
            }
            out.extend_from_slice(if on { b"true" } else { b"false" });
        }
        (_, Some(raw)) if raw.starts_with('"') => match field.secrecy {
            // Shown as stored: the stored JSON's own string.
            Secrecy::Public | Secrecy::ClearInResponses => out.extend_from_slice(raw.as_bytes()),
            secrecy => {
                let text: std::borrow::Cow<'_, str> = match serde_json::from_str::<&str>(raw) {
                    Ok(text) => text.into(),
                    Err(_) => serde_json::from_str::<String>(raw)?.into(),
                };
                match secrecy.shown(&text) {
                    Some(shown) => {
                        write_str(out, &shown);
                    }
                    None => return Ok(false),
                }
            }
        },
        (_, Some(raw)) => out.extend_from_slice(raw.as_bytes()),
        (Output::EmptyWhenAbsent, None) => out.extend_from_slice(b"\"\""),
        (Output::AsStored, None) => return Ok(false),
    }
    Ok(true)
}

/// Writes `text` as a JSON string; always true (shown).
fn write_str(out: &mut Vec<u8>, text: &str) -> bool {
    serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    true
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Map<String, Value> = serde_json::from_slice(&self.0).unwrap_or_default();
        f.debug_list().entries(names.keys()).finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schema = self.kind.schema();
        let mut map = f.debug_map();
        for (name, value) in &self.fields {
            let secret = schema.field(name).is_some_and(|fd| fd.secrecy.is_secret());
            if secret {
                map.entry(name, &"<redacted>");
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

/// Why a request body was refused, in the contract's order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// `INVALID_ATTRIBUTE`: a field the type does not have, or `type` differing from the path.
    InvalidAttribute(String),
    /// `INVALID_JSON_ATTRIBUTE`: a field of the wrong JSON type.
    InvalidJsonAttribute(&'static str),
    /// `MISSING_ATTRIBUTE`: a required field is absent.
    MissingAttribute(&'static str),
    /// `INVALID_ENUM_VALUE`: a value outside the field's enum (the value is not secret).
    InvalidEnumValue(String),
    /// `INVALID_INTEGRATION_SETTINGS`: a type rule is broken.
    InvalidSettings {
        /// The integration type.
        kind: IntegrationType,
        /// What is wrong, naming the field but never its value.
        message: String,
    },
    /// `INVALID_FLOWDOCK_FLOW_NAME`.
    FlowdockFlowName,
}

fn present<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn is_required(presence: Presence, version: ApiVersion, replacing: bool) -> bool {
    match presence {
        Presence::Required => true,
        Presence::RequiredInV1 => version == ApiVersion::V1,
        Presence::RequiredInV2 => version == ApiVersion::V2,
        Presence::RequiredOnCreate => !replacing,
        Presence::Optional(_) => false,
    }
}

/// Whether [`validate`] of `body` for a PUT can depend on the stored configuration it
/// replaces: a `RequiredOnCreate` field is left out (it keeps the stored value, or is missing
/// when nothing is stored), or a secret is sent in a form a response may have shown (a mask
/// keeps the stored secret). When it cannot, `validate(kind, version, body, stored)` is the
/// same for every `stored`, `None` included, and a PUT need not read the stored row first.
pub fn depends_on_stored(kind: IntegrationType, body: &Map<String, Value>) -> bool {
    kind.schema()
        .fields
        .iter()
        .any(|field| match present(body, field.name) {
            None => field.presence == Presence::RequiredOnCreate,
            Some(Value::String(text)) => field.secrecy.may_be_shown_form(text),
            Some(_) => false,
        })
}

/// Validates a request body for `kind` and builds the configuration to store.
///
/// `existing` is the stored configuration a PUT replaces: a secret sent back exactly in its
/// masked form keeps the stored value, and a `RequiredOnCreate` field may be omitted. The
/// checks run phase by phase (contract §3): `type` mismatch, unknown fields, JSON types,
/// missing fields, enums, then type rules; within a phase, in the schema's field order.
pub fn validate(
    kind: IntegrationType,
    version: ApiVersion,
    body: &Map<String, Value>,
    existing: Option<&Config>,
) -> Result<Config, FieldError> {
    let schema = kind.schema();
    if let Some(sent) = present(body, "type") {
        if sent.as_str() != Some(schema.name) {
            return Err(FieldError::InvalidAttribute("type".to_owned()));
        }
    }
    for (name, value) in body {
        let known = name == "type"
            || name == "id"
            || schema.read_only.iter().any(|(ro, _)| ro == name)
            || schema.field(name).is_some();
        if !known && !value.is_null() {
            return Err(FieldError::InvalidAttribute(name.clone()));
        }
    }
    for field in schema.fields {
        let Some(value) = present(body, field.name) else {
            continue;
        };
        let ok = match field.kind {
            Kind::Str | Kind::Enum(_) => value.is_string(),
            Kind::Bool => value.is_boolean(),
        };
        if !ok {
            return Err(FieldError::InvalidJsonAttribute(field.name));
        }
    }
    let existing = existing.filter(|e| e.kind == kind);
    for field in schema.fields {
        let absent = present(body, field.name).is_none();
        if absent && is_required(field.presence, version, existing.is_some()) {
            return Err(FieldError::MissingAttribute(field.name));
        }
    }
    for field in schema.fields {
        if let (Kind::Enum(allowed), Some(Value::String(value))) =
            (field.kind, present(body, field.name))
        {
            if !allowed.contains(&value.as_str()) {
                return Err(FieldError::InvalidEnumValue(value.clone()));
            }
        }
    }
    let mut fields = Map::new();
    for field in schema.fields {
        let stored = existing.and_then(|e| e.fields.get(field.name));
        let value = match present(body, field.name) {
            Some(Value::String(text)) => {
                if let Some(Value::String(kept)) = stored {
                    if field.secrecy.is_secret()
                        && field.secrecy.shown(kept).as_deref() == Some(text)
                    {
                        fields.insert(field.name.to_owned(), Value::String(kept.clone()));
                        continue;
                    }
                }
                if text.is_empty() && !is_required(field.presence, version, false) {
                    None
                } else {
                    check_rule(kind, field, text)?;
                    Some(Value::String(text.clone()))
                }
            }
            Some(other) => Some(other.clone()),
            None => None,
        };
        let value = match (value, field.presence) {
            (Some(v), _) => Some(v),
            (None, Presence::RequiredOnCreate) => stored.cloned(),
            (None, Presence::Optional(Some(Default::Str(s)))) => Some(Value::String(s.to_owned())),
            (None, Presence::Optional(Some(Default::Bool(b)))) => Some(Value::Bool(b)),
            (None, _) => None,
        };
        if let Some(value) = value {
            fields.insert(field.name.to_owned(), value);
        }
    }
    Ok(Config { kind, fields })
}

fn check_rule(kind: IntegrationType, field: &Field, text: &str) -> Result<(), FieldError> {
    let name = field.name;
    let broken = |message: String| Err(FieldError::InvalidSettings { kind, message });
    if text.is_empty() {
        return broken(format!("{name} must not be empty"));
    }
    if text.len() > MAX_STRING_BYTES {
        return broken(format!("{name} must be at most {MAX_STRING_BYTES} bytes"));
    }
    match field.rule {
        Rule::None => Ok(()),
        Rule::Hex if !text.bytes().all(|b| b.is_ascii_hexdigit()) => {
            broken(format!("{name} must be a hexadecimal string"))
        }
        Rule::Hex => Ok(()),
        Rule::NoSpaces if text.chars().any(char::is_whitespace) => {
            Err(FieldError::FlowdockFlowName)
        }
        Rule::NoSpaces => Ok(()),
        Rule::HttpUrl if !is_absolute_url(text, &["http", "https"]) => {
            broken(format!("{name} must be an absolute http or https URL"))
        }
        Rule::HttpsUrl if !is_absolute_url(text, &["https"]) => {
            broken(format!("{name} must be an absolute https URL"))
        }
        Rule::HttpUrl | Rule::HttpsUrl => Ok(()),
        Rule::MaxChars(max) if text.chars().count() > max => {
            broken(format!("{name} must be at most {max} characters"))
        }
        Rule::MaxChars(_) => Ok(()),
    }
}

fn is_absolute_url(text: &str, schemes: &[&str]) -> bool {
    // The parser normalises the scheme's case, so `HTTPS://x` counts as https.
    match url::Url::parse(text) {
        Ok(parsed) => {
            schemes.contains(&parsed.scheme())
                && parsed.host_str().is_some_and(|h| !h.is_empty())
                && !text.chars().any(char::is_whitespace)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid body per type, every secret distinctive.
    fn sample(kind: IntegrationType) -> Value {
        match kind {
            IntegrationType::PagerDuty => json!({"serviceKey": "SECRETpagerduty1"}),
            IntegrationType::Slack => {
                json!({"apiToken": "SECRETslack1", "teamName": "t", "channelName": "c"})
            }
            IntegrationType::Datadog => json!({"apiKey": "5ec2e7da7ad09"}),
            IntegrationType::NewRelic => {
                json!({"licenseKey": "SECRETnr1", "accountId": "SECRETnr2", "writeToken": "SECRETnr3", "readToken": "SECRETnr4"})
            }
            IntegrationType::OpsGenie => json!({"apiKey": "SECRETopsgenie1"}),
            IntegrationType::VictorOps => {
                json!({"apiKey": "SECRETvictorops1", "routingKey": "SECRETroute1"})
            }
            IntegrationType::Flowdock => {
                json!({"flowName": "f", "apiToken": "SECRETflowdock1", "orgName": "o"})
            }
            IntegrationType::Webhook => {
                json!({"url": "https://h.example.com/SECRETpath1", "secret": "SECRETwebhook1"})
            }
            IntegrationType::MicrosoftTeams => {
                json!({"microsoftTeamsWebhookUrl": "https://t.example.com/SECRETteams1"})
            }
            IntegrationType::Prometheus => {
                json!({"username": "u", "password": "SECRETprom1", "serviceDiscovery": "http", "enabled": true})
            }
        }
    }

    fn body(kind: IntegrationType) -> Map<String, Value> {
        match sample(kind) {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn secrets(kind: IntegrationType) -> Vec<String> {
        body(kind)
            .into_iter()
            .filter(|(name, _)| {
                kind.schema()
                    .field(name)
                    .is_some_and(|f| f.secrecy.is_secret())
            })
            .map(|(_, v)| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn type_codes_are_distinct_below_16_and_those_of_the_sqlite_migration() {
        let migration = include_str!("../../migrations/sqlite/0002_integration_key.sql");
        let mut codes: Vec<i64> = IntegrationType::ALL.iter().map(|k| k.code()).collect();
        for kind in IntegrationType::ALL {
            assert!((0..15).contains(&kind.code()), "{kind}");
            let line = format!("when '{}' then {}", kind.as_str(), kind.code());
            assert!(migration.contains(&line), "{line}");
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), IntegrationType::ALL.len());
    }

    #[test]
    fn every_type_has_a_unique_wire_name_that_parses_back() {
        for kind in IntegrationType::ALL {
            assert_eq!(IntegrationType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(IntegrationType::parse("datadog"), None);
        assert_eq!(IntegrationType::parse("HIP_CHAT"), None);
    }

    #[test]
    fn every_sample_validates_and_survives_the_stored_json_round_trip() {
        for kind in IntegrationType::ALL {
            let config = validate(kind, ApiVersion::V1, &body(kind), None).unwrap();
            let back = Config::from_json(kind, &config.to_json()).unwrap();
            assert_eq!(back, config, "{kind}");
        }
    }

    #[test]
    fn no_masked_secret_survives_rendering_and_debug_prints_none() {
        for kind in IntegrationType::ALL {
            let config = validate(kind, ApiVersion::V1, &body(kind), None).unwrap();
            let rendered =
                Value::Object(config.render(ApiVersion::V1, ObjectId::generate())).to_string();
            let debug = format!("{config:?}");
            for secret in secrets(kind) {
                assert!(!debug.contains(&secret), "{kind}: Debug shows {secret}");
                let clear = kind.schema().fields.iter().any(|f| {
                    f.secrecy == Secrecy::ClearInResponses
                        && body(kind).get(f.name).and_then(Value::as_str) == Some(&secret)
                });
                assert_eq!(
                    rendered.contains(&secret),
                    clear,
                    "{kind}: {secret} in {rendered}"
                );
            }
        }
    }

    #[test]
    fn the_issue_s_secret_fields_are_all_declared_secret() {
        let declared = |kind: IntegrationType, name: &str| {
            kind.schema().field(name).unwrap().secrecy.is_secret()
        };
        for (kind, name) in [
            (IntegrationType::PagerDuty, "serviceKey"),
            (IntegrationType::Slack, "apiToken"),
            (IntegrationType::Datadog, "apiKey"),
            (IntegrationType::NewRelic, "licenseKey"),
            (IntegrationType::NewRelic, "accountId"),
            (IntegrationType::NewRelic, "writeToken"),
            (IntegrationType::NewRelic, "readToken"),
            (IntegrationType::OpsGenie, "apiKey"),
            (IntegrationType::VictorOps, "apiKey"),
            (IntegrationType::VictorOps, "routingKey"),
            (IntegrationType::Flowdock, "apiToken"),
            (IntegrationType::Webhook, "url"),
            (IntegrationType::Webhook, "secret"),
            (IntegrationType::MicrosoftTeams, "microsoftTeamsWebhookUrl"),
            (IntegrationType::Prometheus, "password"),
        ] {
            assert!(declared(kind, name), "{kind}.{name}");
        }
    }

    #[test]
    fn phases_run_in_the_contract_order() {
        let kind = IntegrationType::Datadog;
        let check = |v: Value| match v {
            Value::Object(map) => validate(kind, ApiVersion::V1, &map, None).unwrap_err(),
            _ => unreachable!(),
        };
        assert_eq!(
            check(json!({"type": "SLACK", "bogus": 1})),
            FieldError::InvalidAttribute("type".into())
        );
        assert_eq!(
            check(json!({"bogus": 1, "region": 5})),
            FieldError::InvalidAttribute("bogus".into())
        );
        assert_eq!(
            check(json!({"region": 5})),
            FieldError::InvalidJsonAttribute("region")
        );
        assert_eq!(
            check(json!({"region": "XX"})),
            FieldError::MissingAttribute("apiKey")
        );
        assert_eq!(
            check(json!({"apiKey": "zz", "region": "XX"})),
            FieldError::InvalidEnumValue("XX".into())
        );
        assert_eq!(
            check(json!({"apiKey": "zz"})),
            FieldError::InvalidSettings {
                kind,
                message: "apiKey must be a hexadecimal string".into()
            }
        );
        assert_eq!(
            check(json!({"apiKey": ""})),
            FieldError::InvalidSettings {
                kind,
                message: "apiKey must not be empty".into()
            }
        );
        assert_eq!(
            check(json!({"apiKey": "a".repeat(4097)})),
            FieldError::InvalidSettings {
                kind,
                message: "apiKey must be at most 4096 bytes".into()
            }
        );
    }

    #[test]
    fn a_masked_secret_sent_back_keeps_the_stored_value() {
        let kind = IntegrationType::Webhook;
        let stored = validate(kind, ApiVersion::V2, &body(kind), None).unwrap();
        let shown = stored.render(ApiVersion::V2, ObjectId::generate());
        let again = validate(kind, ApiVersion::V2, &shown, Some(&stored)).unwrap();
        assert_eq!(again, stored);
        let mut changed = shown.clone();
        changed.insert("secret".into(), json!("another"));
        let replaced = validate(kind, ApiVersion::V2, &changed, Some(&stored)).unwrap();
        assert_eq!(replaced.str("secret"), Some("another"));
    }

    #[test]
    fn every_shown_form_of_a_secret_is_recognised() {
        let values = [
            "",
            "a",
            "abcd",
            "abcde",
            "ééééé",
            "****",
            "https://h.example.com/path?q=1",
            "http://user:pw@h.example.com:8080/x",
            "not a url",
        ];
        let kinds = [
            Secrecy::Public,
            Secrecy::ClearInResponses,
            Secrecy::MaskKey,
            Secrecy::MaskUrl,
            Secrecy::MaskFull,
            Secrecy::Hidden,
        ];
        for secrecy in kinds {
            for value in values {
                if let Some(shown) = secrecy.shown(value) {
                    if secrecy.is_secret() {
                        assert!(secrecy.may_be_shown_form(&shown), "{secrecy:?} {shown}");
                    }
                }
            }
        }
        assert!(!Secrecy::MaskKey.may_be_shown_form("abcd"));
        assert!(!Secrecy::MaskUrl.may_be_shown_form("https://h.example.com/x"));
        assert!(!Secrecy::MaskFull.may_be_shown_form("*****"));
    }

    /// Bodies around each type's sample: every field left out, sent back as a response showed
    /// it, or replaced by assorted values.
    fn variants(kind: IntegrationType, stored: &Config) -> Vec<Map<String, Value>> {
        let shown = stored.render(ApiVersion::V2, ObjectId::generate());
        let mut out = vec![body(kind), shown.clone()];
        for field in kind.schema().fields {
            let mut without = body(kind);
            without.remove(field.name);
            out.push(without);
            let replacements = [
                shown.get(field.name).cloned().unwrap_or(Value::Null),
                json!(""),
                json!("*"),
                json!("****"),
                json!("******"),
                json!("x*y"),
                json!("https://h.example.com/****"),
                json!("https://h.example.com/new"),
                json!("plain"),
                json!(true),
            ];
            for value in replacements {
                let mut changed = body(kind);
                changed.insert(field.name.to_owned(), value);
                out.push(changed);
            }
        }
        out
    }

    #[test]
    fn a_body_that_does_not_depend_on_the_stored_row_validates_alike_without_it() {
        let mut independent = 0;
        for kind in IntegrationType::ALL {
            for version in [ApiVersion::V1, ApiVersion::V2] {
                let Ok(stored) = validate(kind, version, &body(kind), None) else {
                    continue;
                };
                for body in variants(kind, &stored) {
                    if depends_on_stored(kind, &body) {
                        continue;
                    }
                    independent += 1;
                    assert_eq!(
                        validate(kind, version, &body, Some(&stored)),
                        validate(kind, version, &body, None),
                        "{kind} {version:?} {body:?}"
                    );
                }
            }
        }
        assert!(independent > 100, "only {independent} bodies checked");
    }

    /// The response object as a map, built the plain way: the rule [`Rendered::from_stored`]
    /// must write byte for byte.
    fn reference_render(
        kind: IntegrationType,
        stored: &Map<String, Value>,
        version: ApiVersion,
        id: ObjectId,
    ) -> Map<String, Value> {
        let schema = kind.schema();
        let mut out = Map::new();
        for field in schema.fields {
            let shown = match (field.output, stored.get(field.name)) {
                (Output::TrueOnlyInV1, value) => {
                    let on = value.and_then(Value::as_bool).unwrap_or(false);
                    (version == ApiVersion::V2 || on).then_some(Value::Bool(on))
                }
                (_, Some(Value::String(text))) => field.secrecy.shown(text).map(Value::String),
                (_, Some(other)) => Some(other.clone()),
                (Output::EmptyWhenAbsent, None) => Some(Value::String(String::new())),
                (Output::AsStored, None) => None,
            };
            if let Some(value) = shown {
                out.insert(field.name.to_owned(), value);
            }
        }
        for &(name, value) in schema.read_only {
            out.insert(name.to_owned(), json!(value));
        }
        out.insert("type".to_owned(), json!(schema.name));
        if version == ApiVersion::V2 {
            out.insert("id".to_owned(), json!(id.to_string()));
        }
        out
    }

    #[test]
    fn stored_configurations_render_byte_for_byte_as_maps_of_their_shown_members() {
        let odd = [
            json!("with \"quotes\", \\ and \u{1}"),
            json!("ünïcödé €"),
            json!("https://user:pw@h.example.com:8443/p?q=\"1\""),
            json!(""),
            json!("abc"),
            json!(true),
            json!(false),
        ];
        let mut checked = 0;
        for kind in IntegrationType::ALL {
            assert!(kind.schema().fields.len() <= MAX_FIELDS, "{kind}");
            let names: Vec<&str> = members(kind).iter().map(|&(name, _)| name).collect();
            let mut distinct = names.clone();
            distinct.dedup();
            assert_eq!(distinct, names, "{kind}: member names sorted and distinct");
            let config = validate(kind, ApiVersion::V2, &body(kind), None).unwrap();
            let mut storeds = vec![config.fields.clone(), Map::new()];
            for field in kind.schema().fields {
                let mut without = config.fields.clone();
                without.remove(field.name);
                storeds.push(without);
                for value in &odd {
                    let mut changed = config.fields.clone();
                    changed.insert(field.name.to_owned(), value.clone());
                    storeds.push(changed);
                }
            }
            let mut unknown = config.fields.clone();
            unknown.insert("notAField".into(), json!({"nested": [1, 2, "x"]}));
            storeds.push(unknown);
            for stored in &storeds {
                let plain = serde_json::to_vec(stored).unwrap();
                for version in [ApiVersion::V1, ApiVersion::V2] {
                    let id = ObjectId::generate();
                    let rendered = Rendered::from_stored(kind, &plain, version, id).unwrap();
                    let expected = reference_render(kind, stored, version, id);
                    assert_eq!(
                        String::from_utf8(rendered.as_bytes().to_vec()).unwrap(),
                        serde_json::to_string(&expected).unwrap(),
                        "{kind} {version:?} {stored:?}"
                    );
                    let debug = format!("{rendered:?}");
                    for value in expected.values() {
                        if let Some(text) = value.as_str().filter(|t| t.len() > 8) {
                            assert!(!debug.contains(text), "{kind}: Debug shows {text}");
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 500, "only {checked} renderings checked");
    }

    #[test]
    fn stored_json_that_is_not_an_object_or_has_trailing_bytes_is_refused() {
        let kind = IntegrationType::Slack;
        for plain in [
            &b""[..],
            b"[]",
            b"\"x\"",
            b"{\"apiToken\":1",
            b"{} {}",
            b"{\"apiToken\":\"\xff\"}",
        ] {
            assert!(
                Rendered::from_stored(kind, plain, ApiVersion::V2, ObjectId::generate()).is_err(),
                "{plain:?}"
            );
        }
    }

    #[test]
    fn masked_secrets_and_omitted_create_only_fields_depend_on_the_stored_row() {
        for kind in IntegrationType::ALL {
            let stored = validate(kind, ApiVersion::V2, &body(kind), None).unwrap();
            let shown = stored.render(ApiVersion::V2, ObjectId::generate());
            // Every type shows a secret masked or in clear, or hides a create-only one.
            assert!(depends_on_stored(kind, &shown), "{kind}");
            // The samples hold no mask; a secret shown in clear may always be one sent back.
            let clear =
                kind.schema().fields.iter().any(|f| {
                    f.secrecy == Secrecy::ClearInResponses && body(kind).contains_key(f.name)
                });
            assert_eq!(depends_on_stored(kind, &body(kind)), clear, "{kind}");
        }
        let mut without = body(IntegrationType::Prometheus);
        without.remove("password");
        assert!(depends_on_stored(IntegrationType::Prometheus, &without));
    }

    #[test]
    fn prometheus_password_may_be_omitted_only_when_replacing() {
        let kind = IntegrationType::Prometheus;
        let mut without = body(kind);
        without.remove("password");
        assert_eq!(
            validate(kind, ApiVersion::V2, &without, None).unwrap_err(),
            FieldError::MissingAttribute("password")
        );
        let stored = validate(kind, ApiVersion::V2, &body(kind), None).unwrap();
        let kept = validate(kind, ApiVersion::V2, &without, Some(&stored)).unwrap();
        assert_eq!(kept.str("password"), Some("SECRETprom1"));
    }

    #[test]
    fn slack_requirements_differ_between_versions() {
        let kind = IntegrationType::Slack;
        let v1_without_team = json!({"apiToken": "x", "channelName": "c"});
        let v2_without_channel = json!({"apiToken": "x", "teamName": "t"});
        let map = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        assert_eq!(
            validate(kind, ApiVersion::V1, &map(v1_without_team.clone()), None).unwrap_err(),
            FieldError::MissingAttribute("teamName")
        );
        assert!(validate(kind, ApiVersion::V2, &map(v1_without_team), None).is_ok());
        assert_eq!(
            validate(kind, ApiVersion::V2, &map(v2_without_channel.clone()), None).unwrap_err(),
            FieldError::MissingAttribute("channelName")
        );
        let v1 = validate(kind, ApiVersion::V1, &map(v2_without_channel), None).unwrap();
        assert_eq!(
            v1.render(ApiVersion::V1, ObjectId::generate())["channelName"],
            ""
        );
    }
}
