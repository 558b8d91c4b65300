//! The action flags, validated: `--allow-actions` needs an identity (`--auth-token` or
//! `--trusted-user-header`), and `--action-allow-names` globs decide which task names may be run.

/// What the action routes are allowed to do.
#[derive(Debug, Clone, Default)]
pub struct ActionSettings {
    /// `--allow-actions`.
    pub enabled: bool,
    /// `--action-allow-names` globs (`*`, `?`); empty means none may be run.
    pub allow_names: Vec<String>,
    /// `--trusted-user-header` as given: the journal's `who`, required on every write.
    pub trusted_user_header: Option<String>,
    /// Brokers whose keys were given a non-default prefix or namespace (`--rq-prefix`,
    /// `--dramatiq-namespace`), with the flag: those writers use the libraries' default keys
    /// only, so actions on these brokers are refused (Sidekiq's writes under its namespace).
    pub custom_keys: Vec<(broker_adapters::Broker, String)>,
}

impl ActionSettings {
    /// Validates the flags; the error is the usage message (exit 2).
    pub fn new(
        enabled: bool,
        allow_names: &[String],
        trusted_user_header: Option<&str>,
        has_token: bool,
    ) -> Result<ActionSettings, String> {
        let header = trusted_user_header
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty());
        if let Some(h) = &header {
            if axum::http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() {
                return Err(format!("--trusted-user-header {h:?} is not a header name"));
            }
        }
        if enabled && !has_token && header.is_none() {
            return Err(
                "--allow-actions lets anyone who reaches taskscope write to the brokers: \
                 add --auth-token TOKEN (TASKSCOPE_AUTH_TOKEN), or --trusted-user-header NAME \
                 when an authenticating proxy sets that header (and strips it from clients)"
                    .into(),
            );
        }
        Ok(ActionSettings {
            enabled,
            allow_names: allow_names
                .iter()
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect(),
            trusted_user_header: header,
            custom_keys: Vec::new(),
        })
    }

    /// The same settings knowing which brokers have non-default keys.
    pub fn with_custom_keys(mut self, custom: Vec<(broker_adapters::Broker, String)>) -> Self {
        self.custom_keys = custom;
        self
    }

    /// The flag that gave `broker` non-default keys, if any.
    pub fn custom_keys_of(&self, broker: broker_adapters::Broker) -> Option<&str> {
        self.custom_keys
            .iter()
            .find(|(b, _)| *b == broker)
            .map(|(_, flag)| flag.as_str())
    }

    /// Whether `name` matches one of `--action-allow-names`.
    pub fn name_allowed(&self, name: &str) -> bool {
        self.allow_names.iter().any(|g| glob_matches(g, name))
    }
}

/// `*` matches any run of characters (including none), `?` exactly one; everything else
/// itself. Iterative with one backtrack point: linear-ish, never recursive.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_matches("*", "billing.add"));
        assert!(glob_matches("billing.*", "billing.add"));
        assert!(!glob_matches("billing.*", "reports.add"));
        assert!(glob_matches("rq_app.a?d", "rq_app.add"));
        assert!(!glob_matches("rq_app.add", "rq_app.add2"));
        assert!(glob_matches("*.add", "x.y.add"));
        assert!(glob_matches("a*b*c", "aXbYbc"));
        assert!(!glob_matches("", "a"));
    }

    #[test]
    fn actions_need_a_token_or_a_trusted_header() {
        let names = vec!["*".to_string()];
        let err = ActionSettings::new(true, &names, None, false).unwrap_err();
        assert!(err.contains("--auth-token") && err.contains("--trusted-user-header"));
        assert!(ActionSettings::new(true, &names, None, true).is_ok());
        let s = ActionSettings::new(true, &names, Some("X-Forwarded-User"), false).unwrap();
        assert_eq!(s.trusted_user_header.as_deref(), Some("X-Forwarded-User"));
        assert!(ActionSettings::new(false, &names, None, false).is_ok());
    }
}
