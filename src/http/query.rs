//! Request parameters common to every Atlas resource (contract §6) and v2 version negotiation
//! (contract §2).

use super::error::{ApiError, ErrorCode};

/// The common query parameters, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// `pageNum`, ≥ 1.
    pub page_num: u64,
    /// `itemsPerPage`, 1..=500.
    pub items_per_page: u64,
    /// `includeCount`.
    pub include_count: bool,
    /// `pretty`.
    pub pretty: bool,
    /// `envelope`.
    pub envelope: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            page_num: 1,
            items_per_page: 100,
            include_count: true,
            pretty: false,
            envelope: false,
        }
    }
}

/// The largest `itemsPerPage`.
pub const MAX_ITEMS_PER_PAGE: u64 = 500;

impl Params {
    /// The presentation flags only, read leniently, so that even an error about the query
    /// itself is shaped as the client asked.
    pub fn presentation(query: Option<&str>) -> Self {
        // The first occurrence counts, as in `parse`.
        let first = |wanted: &str| {
            pairs(query)
                .find(|(name, _)| name == wanted)
                .is_some_and(|(_, value)| value == "true")
        };
        Self {
            pretty: first("pretty"),
            envelope: first("envelope"),
            ..Self::default()
        }
    }

    /// Parses and validates the query; unknown parameters are ignored, and the first
    /// occurrence of a repeated one counts.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut params = Self::default();
        let mut seen = [false; 5];
        for (name, value) in pairs(query) {
            let (slot, name) = match name.as_ref() {
                "pageNum" => (0, "pageNum"),
                "itemsPerPage" => (1, "itemsPerPage"),
                "includeCount" => (2, "includeCount"),
                "pretty" => (3, "pretty"),
                "envelope" => (4, "envelope"),
                _ => continue,
            };
            if std::mem::replace(&mut seen[slot], true) {
                continue;
            }
            let bad = || ApiError::new(ErrorCode::InvalidQueryParameter, [name]);
            match slot {
                0 => params.page_num = integer(&value).filter(|n| *n >= 1).ok_or_else(bad)?,
                1 => {
                    params.items_per_page = integer(&value)
                        .filter(|n| (1..=MAX_ITEMS_PER_PAGE).contains(n))
                        .ok_or_else(bad)?;
                }
                2 => params.include_count = boolean(&value).ok_or_else(bad)?,
                3 => params.pretty = boolean(&value).ok_or_else(bad)?,
                _ => params.envelope = boolean(&value).ok_or_else(bad)?,
            }
        }
        Ok(params)
    }
}

fn pairs(query: Option<&str>) -> url::form_urlencoded::Parse<'_> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
}

fn integer(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn boolean(text: &str) -> Option<bool> {
    match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The only resource version of the integrations operations.
pub const V2_RESOURCE_VERSION: &str = "2023-01-01";
/// The media type of v2 success responses.
pub const V2_MEDIA_TYPE: &str = "application/vnd.atlas.2023-01-01+json";

/// Whether a v2 `Accept` header asks for a version this server serves: some media range
/// `application/vnd.atlas.YYYY-MM-DD+json` with a real date on or after 2023-01-01.
pub fn accepts_v2(accept: &[&[u8]]) -> bool {
    accept
        .iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            // `q=0` means "not acceptable" (RFC 9110 §12.4.2).
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            if refused {
                return false;
            }
            media
                .strip_prefix("application/vnd.atlas.")
                .and_then(|rest| rest.strip_suffix("+json"))
                .is_some_and(|date| valid_date(date) && date >= V2_RESOURCE_VERSION)
        })
}

fn valid_date(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (num(&text[..4]), num(&text[5..7]), num(&text[8..]))
    else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        assert_eq!(Params::parse(None).unwrap(), Params::default());
    }

    #[test]
    fn valid_values_are_read_and_unknown_names_ignored() {
        let p = Params::parse(Some(
            "pageNum=2&itemsPerPage=500&includeCount=false&pretty=true&envelope=true&foo=bar",
        ))
        .unwrap();
        assert_eq!(
            (
                p.page_num,
                p.items_per_page,
                p.include_count,
                p.pretty,
                p.envelope
            ),
            (2, 500, false, true, true)
        );
    }

    #[test]
    fn out_of_range_and_malformed_values_name_the_parameter() {
        for (query, name) in [
            ("itemsPerPage=0", "itemsPerPage"),
            ("itemsPerPage=501", "itemsPerPage"),
            ("itemsPerPage=-1", "itemsPerPage"),
            ("pageNum=0", "pageNum"),
            ("pageNum=99999999999999999999999", "pageNum"),
            ("pageNum=1.5", "pageNum"),
            ("pageNum=", "pageNum"),
            ("pageNum=+1", "pageNum"),
            ("includeCount=TRUE", "includeCount"),
            ("pretty=1", "pretty"),
            ("envelope=yes", "envelope"),
        ] {
            let err = Params::parse(Some(query)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidQueryParameter, "{query}");
            assert_eq!(err.parameters, vec![name.to_owned()], "{query}");
        }
    }

    #[test]
    fn v2_accept_needs_a_real_date_on_or_after_2023_01_01() {
        assert!(accepts_v2(&[b"application/vnd.atlas.2023-01-01+json"]));
        assert!(accepts_v2(&[
            b"application/vnd.atlas.2025-02-19+json; charset=utf-8"
        ]));
        assert!(accepts_v2(&[
            b"application/json, application/vnd.atlas.2024-08-05+json"
        ]));
        assert!(!accepts_v2(&[b"application/vnd.atlas.2022-12-31+json"]));
        assert!(!accepts_v2(&[b"application/vnd.atlas.2023-02-30+json"]));
        assert!(!accepts_v2(&[b"application/vnd.atlas.2023-1-01+json"]));
        assert!(!accepts_v2(&[b"application/json"]));
        assert!(!accepts_v2(&[b"*/*"]));
        assert!(!accepts_v2(&[]));
        assert!(!accepts_v2(&[b"\xff\xfe"]));
        assert!(!accepts_v2(&[b"application/vnd.atlas.2023-01-01+json;q=0"]));
        assert!(accepts_v2(&[
            b"application/vnd.atlas.2023-01-01+json;q=0.5"
        ]));
    }
}
