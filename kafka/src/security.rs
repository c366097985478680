//! How a client proves itself to a real cluster: TLS and SASL (PLAIN, SCRAM). Read once per
//! process from the environment and applied by every factory in [`crate::clients`], so every
//! client of every service and of the CLI connects the same way:
//!
//! * `SWITCHYARD_KAFKA_PROPERTIES`: a file of librdkafka settings, `key=value` a line (`#`
//!   comments), limited to connection security: keys starting `security.`, `sasl.` or
//!   `ssl.` (e.g. `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`,
//!   `ssl.ca.location=/etc/ssl/kafka-ca.pem`). The project's own choices (acks, idempotence,
//!   commits) cannot be overridden there.
//! * `SWITCHYARD_KAFKA_SECURITY_PROTOCOL`, `SWITCHYARD_KAFKA_SASL_MECHANISM`,
//!   `SWITCHYARD_KAFKA_SASL_USERNAME`, `SWITCHYARD_KAFKA_SASL_PASSWORD`,
//!   `SWITCHYARD_KAFKA_SSL_CA_LOCATION`: one setting each, over the file's.
//!
//! Settings that cannot be read are never dropped in favour of a plaintext connection: every
//! client the process creates fails with the reason (see [`apply`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rdkafka::config::ClientConfig;

/// The variable naming the properties file.
pub const PROPERTIES_VAR: &str = "SWITCHYARD_KAFKA_PROPERTIES";

/// Each single-setting variable and the librdkafka key it sets.
pub const VARIABLES: [(&str, &str); 5] = [
    ("SWITCHYARD_KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    ("SWITCHYARD_KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("SWITCHYARD_KAFKA_SASL_USERNAME", "sasl.username"),
    ("SWITCHYARD_KAFKA_SASL_PASSWORD", "sasl.password"),
    ("SWITCHYARD_KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
];

const ALLOWED_PREFIXES: [&str; 3] = ["security.", "sasl.", "ssl."];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error("{PROPERTIES_VAR}: cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{PROPERTIES_VAR}: {path} line {line}: expected key=value, got {text:?}")]
    Malformed {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{PROPERTIES_VAR}: {path} line {line}: {key} is not a connection security setting (only security.*, sasl.* and ssl.* may be set there)")]
    NotSecurity {
        path: String,
        line: usize,
        key: String,
    },
}

/// The security settings, as key → value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security(BTreeMap<String, String>);

impl Security {
    /// From a properties file's text (`path` names it in errors) and the variables.
    pub fn parse(
        path: Option<(&str, &str)>,
        variables: impl Fn(&str) -> Option<String>,
    ) -> Result<Security, SecurityError> {
        let mut settings = BTreeMap::new();
        if let Some((path, text)) = path {
            for (index, raw) in text.lines().enumerate() {
                let line = raw.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((key, value)) = line.split_once('=') else {
                    return Err(SecurityError::Malformed {
                        path: path.into(),
                        line: index + 1,
                        text: line.into(),
                    });
                };
                let key = key.trim();
                if !ALLOWED_PREFIXES.iter().any(|p| key.starts_with(p)) {
                    return Err(SecurityError::NotSecurity {
                        path: path.into(),
                        line: index + 1,
                        key: key.into(),
                    });
                }
                settings.insert(key.to_string(), value.trim().to_string());
            }
        }
        for (variable, key) in VARIABLES {
            if let Some(value) = variables(variable).filter(|v| !v.is_empty()) {
                settings.insert(key.to_string(), value);
            }
        }
        Ok(Security(settings))
    }

    /// From this process's environment.
    pub fn from_env() -> Result<Security, SecurityError> {
        let file = std::env::var(PROPERTIES_VAR).ok().filter(|p| !p.is_empty());
        let text = match &file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|e| SecurityError::Unreadable {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        Security::parse(file.as_deref().zip(text.as_deref()), |name| {
            std::env::var(name).ok()
        })
    }

    /// The settings' keys (never their values: a password is among them).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// This process's settings, read on first use.
pub fn settings() -> &'static Result<Security, SecurityError> {
    static SETTINGS: OnceLock<Result<Security, SecurityError>> = OnceLock::new();
    SETTINGS.get_or_init(Security::from_env)
}

/// Apply this process's security settings to a client's configuration. When they cannot be
/// read, `security.protocol` is set to the reason, which librdkafka refuses: creating the
/// client then fails with that reason rather than connecting without the settings asked for.
pub fn apply(config: &mut ClientConfig) {
    match settings() {
        Ok(security) => {
            for (key, value) in &security.0 {
                config.set(key, value);
            }
        }
        Err(e) => {
            config.set("security.protocol", format!("invalid ({e})"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sets_security_and_variables_override_it() {
        let file = "# a cluster\nsecurity.protocol = SASL_SSL\nsasl.mechanism=PLAIN\n\nssl.ca.location=/ca.pem\n";
        let security = Security::parse(Some(("k.properties", file)), |name| {
            (name == "SWITCHYARD_KAFKA_SASL_MECHANISM").then(|| "SCRAM-SHA-256".into())
        })
        .expect("valid");
        assert_eq!(
            security.0,
            BTreeMap::from([
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-256".into()),
                ("ssl.ca.location".into(), "/ca.pem".into()),
            ])
        );
    }

    #[test]
    fn the_file_may_not_change_the_projects_own_settings() {
        let err = Security::parse(Some(("k", "acks=0\n")), |_| None).expect_err("refused");
        assert_eq!(
            err,
            SecurityError::NotSecurity {
                path: "k".into(),
                line: 1,
                key: "acks".into()
            }
        );
        let err = Security::parse(Some(("k", "\nsasl.username\n")), |_| None).expect_err("bad");
        assert!(
            matches!(err, SecurityError::Malformed { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn unreadable_settings_make_client_creation_fail_with_the_reason() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        config.set(
            "security.protocol",
            format!(
                "invalid ({})",
                SecurityError::Unreadable {
                    path: "/nope".into(),
                    reason: "No such file".into()
                }
            ),
        );
        let err = config
            .create::<rdkafka::producer::BaseProducer>()
            .err()
            .expect("refused");
        assert!(err.to_string().contains("/nope"), "{err}");
    }
}
