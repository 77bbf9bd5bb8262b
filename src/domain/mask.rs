//! Atlas's redaction rules for secrets in responses (contract §4). Applied when a response is
//! built, never on the way into storage.

/// Last-four masking: `'*' × (len − 4)` then the last 4 characters; 4 characters or fewer are
/// all `*`. Lengths count characters, not bytes.
pub fn mask_key(value: &str) -> String {
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
    match url::Url::parse(value) {
        Ok(parsed) if parsed.has_host() => {
            let host = parsed.host_str().unwrap_or_default();
            match parsed.port() {
                Some(port) => format!("{}://{host}:{port}/****", parsed.scheme()),
                None => format!("{}://{host}/****", parsed.scheme()),
            }
        }
        _ => "****".to_owned(),
    }
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
}
