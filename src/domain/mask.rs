//! Atlas's redaction rules for secrets in responses (contract §4). Applied when a response is
//! built, never on the way into storage.

/// Last-four masking: `'*' × (len − 4)` then the last 4 characters; 4 characters or fewer are
/// all `*`. Lengths count characters, not bytes.
pub fn mask_key(value: &str) -> String {
    if value.is_ascii() {
        // One byte per character: the stars, then the last four bytes.
        let stars = value.len().saturating_sub(4);
        let mut out = String::with_capacity(value.len().max(4));
        out.extend(std::iter::repeat_n('*', stars));
        match value.len() > 4 {
            true => out.push_str(&value[stars..]),
            false => out.extend(std::iter::repeat_n('*', value.len())),
        }
        return out;
    }
    let count = value.chars().count();
    if count <= 4 {
        return "*".repeat(count);
    }
    let mut out = "*".repeat(count - 4);
    out.extend(value.chars().skip(count - 4));
    out
}

/// Partial URL masking: scheme, host and port kept, everything after replaced by `/****`.
/// User info is dropped. Text that is not an absolute URL is masked whole as `****`.
pub fn mask_url(value: &str) -> String {
    mask_plain_url(value).unwrap_or_else(|| mask_parsed_url(value))
}

/// [`mask_url`] through the URL parser, for every form.
fn mask_parsed_url(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(parsed) if parsed.has_host() => shown_url(
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port(),
        ),
        _ => "****".to_owned(),
    }
}

/// What a masked URL shows.
fn shown_url(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{scheme}://{host}:{port}/****"),
        None => format!("{scheme}://{host}/****"),
    }
}

/// [`mask_url`] without parsing, for the common form `http[s]://host[:port]/...` whose host
/// the URL standard leaves as it is: lowercase ASCII letters, digits, `-` and `.` in
/// non-empty labels, the last starting with a letter (else it may be an IPv4 address), no
/// `xn--` label (punycode is checked). `None` for anything else, which the full parser
/// handles (`url::Url::parse` was most of a webhook's rendering). A unit test compares both
/// over many forms.
fn mask_plain_url(value: &str) -> Option<String> {
    let (scheme, rest, default_port) = if let Some(rest) = value.strip_prefix("https://") {
        ("https", rest, 443)
    } else if let Some(rest) = value.strip_prefix("http://") {
        ("http", rest, 80)
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let labels_plain = host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with("xn--")
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    let last_is_name = host
        .rsplit('.')
        .next()
        .and_then(|label| label.bytes().next())
        .is_some_and(|b| b.is_ascii_lowercase());
    if !labels_plain || !last_is_name {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(digits) if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            // Above 65,535 the parser refuses the URL: left to it.
            let number: u16 = digits.parse().ok()?;
            (number != default_port).then_some(number)
        }
        Some(_) => return None,
    };
    Some(shown_url(scheme, host, port))
}

/// Full masking: a fixed string, whatever the secret's length.
pub const FULL_MASK: &str = "******";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_last_four_characters() {
        assert_eq!(mask_key("1234567890"), "******7890");
        assert_eq!(mask_key("12345"), "*2345");
    }

    #[test]
    fn short_keys_are_all_stars_of_the_same_length() {
        assert_eq!(mask_key("1234"), "****");
        assert_eq!(mask_key("ab"), "**");
        assert_eq!(mask_key(""), "");
    }

    #[test]
    fn multibyte_keys_are_masked_by_character() {
        assert_eq!(mask_key("ééééé"), "*éééé");
        assert_eq!(mask_key("abcé"), "****");
        assert_eq!(mask_key("abcdéfgh"), "****éfgh");
    }

    #[test]
    fn ascii_keys_of_every_length_mask_as_by_character() {
        let by_character = |value: &str| {
            let count = value.chars().count();
            let kept = value.chars().skip(count.saturating_sub(4));
            "*".repeat(count.saturating_sub(4)) + &kept.collect::<String>()
        };
        for len in 0..40 {
            let value: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let masked = mask_key(&value);
            let expected = if len <= 4 {
                "*".repeat(len)
            } else {
                by_character(&value)
            };
            assert_eq!(masked, expected, "{value}");
        }
    }

    #[test]
    fn urls_keep_scheme_host_and_port_only() {
        assert_eq!(
            mask_url("https://hooks.example.com/services/T000/B000/XXXX?x=1"),
            "https://hooks.example.com/****"
        );
        assert_eq!(
            mask_url("http://user:pw@example.com:8443/a#frag"),
            "http://example.com:8443/****"
        );
        assert_eq!(mask_url("https://[::1]:9000/x"), "https://[::1]:9000/****");
        assert_eq!(mask_url("https://example.com"), "https://example.com/****");
        assert_eq!(mask_url("not a url"), "****");
    }

    /// The shortcut answers exactly what the URL parser does, wherever it answers at all.
    #[test]
    fn plain_urls_are_masked_as_the_parser_masks_them() {
        let schemes = [
            "https://", "http://", "HTTPS://", "ftp://", "https:/", "https:",
        ];
        let hosts = [
            "example.com",
            "hooks.slack.com",
            "a",
            "a-b.c-d",
            "-a.b",
            "a-.b",
            "EXAMPLE.com",
            "example.com.",
            ".example.com",
            "a..b",
            "1.2.3.4",
            "1.2.3",
            "0x7f.1",
            "a.0x7f",
            "a.1b",
            "a.b1",
            "xn--nxasmq6b.com",
            "xn--a.com",
            "ex_ample.com",
            "exa mple.com",
            "ex%41mple.com",
            "user:pw@example.com",
            "user@example.com",
            "[::1]",
            "[2001:db8::1]",
            "ébc.com",
            "",
            "a.b.c.d.e.f",
            "localhost",
            "LocalHost",
            "a\\b.com",
        ];
        let ports = [
            "", ":", ":443", ":80", ":0443", ":8443", ":65535", ":65536", ":99999", ":1x", ":-1",
            ":00000", ":0",
        ];
        let tails = [
            "",
            "/",
            "/services/T0/B0/XX",
            "?x=1",
            "#frag",
            "/a?b#c",
            "\\x",
        ];
        let mut compared = 0;
        for scheme in schemes {
            for host in hosts {
                for port in ports {
                    for tail in tails {
                        let value = format!("{scheme}{host}{port}{tail}");
                        if let Some(fast) = mask_plain_url(&value) {
                            assert_eq!(fast, mask_parsed_url(&value), "{value}");
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert!(compared > 500, "only {compared} values took the shortcut");
    }
}
