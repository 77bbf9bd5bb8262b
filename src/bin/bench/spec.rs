//! What the benchmark stores and sends: the five integration types seeded in every project,
//! the five others that W3 creates and deletes, valid request bodies for each, and a tiny
//! random number generator for the load generator's choices.

use atlas_integrations::domain::integration::IntegrationType;

/// The five types every seeded project has (W1, W2, W4 and W3's GET and PUT use them).
pub const SEEDED: [IntegrationType; 5] = [
    IntegrationType::PagerDuty,
    IntegrationType::Slack,
    IntegrationType::Datadog,
    IntegrationType::OpsGenie,
    IntegrationType::Webhook,
];

/// The five types no project is seeded with: W3 POSTs and DELETEs them.
pub const CHURN: [IntegrationType; 5] = [
    IntegrationType::VictorOps,
    IntegrationType::NewRelic,
    IntegrationType::MicrosoftTeams,
    IntegrationType::Prometheus,
    IntegrationType::Flowdock,
];

/// A valid v1.0 body for `kind`, with random secrets (`salt` varies them).
pub fn body(kind: IntegrationType, salt: u64) -> String {
    let hex = format!(
        "{salt:016x}{:016x}",
        salt.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15
    );
    let name = kind.as_str();
    match kind {
        IntegrationType::PagerDuty => {
            format!(r#"{{"type":"{name}","serviceKey":"{hex}","region":"US"}}"#)
        }
        IntegrationType::Slack => format!(
            r#"{{"type":"{name}","apiToken":"xoxb-{hex}","teamName":"bench","channelName":"alerts"}}"#
        ),
        IntegrationType::Datadog => {
            format!(r#"{{"type":"{name}","apiKey":"{hex}","region":"EU"}}"#)
        }
        IntegrationType::OpsGenie => {
            format!(r#"{{"type":"{name}","apiKey":"{hex}","region":"US"}}"#)
        }
        IntegrationType::Webhook => format!(
            r#"{{"type":"{name}","url":"https://hooks.example.com/atlas/{hex}","secret":"s{hex}"}}"#
        ),
        IntegrationType::VictorOps => {
            format!(r#"{{"type":"{name}","apiKey":"{hex}","routingKey":"bench"}}"#)
        }
        IntegrationType::NewRelic => format!(
            r#"{{"type":"{name}","licenseKey":"{hex}","accountId":"1234567","writeToken":"w{hex}","readToken":"r{hex}"}}"#
        ),
        IntegrationType::MicrosoftTeams => format!(
            r#"{{"type":"{name}","microsoftTeamsWebhookUrl":"https://example.webhook.office.com/{hex}"}}"#
        ),
        IntegrationType::Prometheus => format!(
            r#"{{"type":"{name}","username":"bench","password":"{hex}","serviceDiscovery":"http","enabled":true}}"#
        ),
        IntegrationType::Flowdock => format!(
            r#"{{"type":"{name}","flowName":"bench","apiToken":"{hex}","orgName":"bench"}}"#
        ),
    }
}

/// The v1.0 path of a project's integrations, or of one type's.
pub fn path(group: &str, kind: Option<IntegrationType>) -> String {
    match kind {
        Some(kind) => format!("/api/atlas/v1.0/groups/{group}/integrations/{kind}"),
        None => format!("/api/atlas/v1.0/groups/{group}/integrations"),
    }
}

/// xorshift64*: fast, good enough to pick projects and operations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlas_integrations::domain::integration::{validate, ApiVersion};

    #[test]
    fn every_body_is_valid_for_its_type() {
        for kind in SEEDED.into_iter().chain(CHURN) {
            let text = body(kind, 42);
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).expect("JSON");
            validate(kind, ApiVersion::V1, &map, None)
                .unwrap_or_else(|e| panic!("{kind}: {e:?}: {text}"));
        }
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(7);
        assert!((0..10_000).all(|_| rng.below(3) < 3));
    }
}
