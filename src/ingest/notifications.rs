//! Keyspace notifications: turning them on without removing a user's flags, and deciding to
//! poll instead when Redis refuses (managed Redis) or `--no-config-set` forbids asking.

use fred::prelude::*;
use tracing::{info, warn};

/// What `notify-keyspace-events` letter `A` stands for.
const ALL_CLASSES: &str = "g$lshzxetd";

/// How taskscope will learn about key changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// Notifications cover what the adapters need (`changed`: taskscope just turned them on).
    Notifications { changed: bool },
    /// Notifications are not available: poll, for this reason.
    Polling { reason: String },
}

/// The flags to set so that `current` also covers `classes` with keyspace (`K`) channels, or
/// `None` when `current` already does. Never removes a flag.
pub fn merged_flags(current: &str, classes: &str) -> Option<String> {
    let has = |c: char| current.contains(c) || (current.contains('A') && ALL_CLASSES.contains(c));
    let mut missing: String = classes.chars().filter(|c| !has(*c)).collect();
    if !current.contains('K') {
        missing.insert(0, 'K');
    }
    let mut dedup = String::new();
    for c in missing.chars() {
        if !dedup.contains(c) {
            dedup.push(c);
        }
    }
    (!dedup.is_empty()).then(|| format!("{current}{dedup}"))
}

/// The flags to set so that `current` no longer has `class`, or `None` when it has not.
pub fn without_class(current: &str, class: char) -> Option<String> {
    current
        .contains(class)
        .then(|| current.chars().filter(|c| *c != class).collect())
}

/// Turns one notification class off again (one taskscope turned on and needs no more).
pub async fn drop_class(client: &Client, class: char) {
    let current: Result<Vec<String>, _> = client.config_get("notify-keyspace-events").await;
    let Some(wanted) = current
        .ok()
        .and_then(|pair| pair.get(1).cloned())
        .and_then(|current| without_class(&current, class))
    else {
        return;
    };
    match client
        .config_set("notify-keyspace-events", wanted.as_str())
        .await
    {
        Ok(()) => info!(to = %wanted, %class, "Turned a keyspace notification class off again."),
        Err(e) => warn!(error = %e, %class, "Could not turn a notification class off."),
    }
}

/// Makes sure keyspace notifications for `classes` are on, if allowed to ask. Also returns the
/// flags found before (when they could be read).
pub async fn ensure(
    client: &Client,
    classes: &str,
    may_config_set: bool,
) -> (Feed, Option<String>) {
    let current: Result<Vec<String>, _> = client.config_get("notify-keyspace-events").await;
    let current = match current {
        Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
        Err(e) => {
            let feed = Feed::Polling {
                reason: format!("CONFIG GET notify-keyspace-events was refused ({e})"),
            };
            return (feed, None);
        }
    };
    let feed = ensure_from(client, &current, classes, may_config_set).await;
    (feed, Some(current))
}

async fn ensure_from(client: &Client, current: &str, classes: &str, may_config_set: bool) -> Feed {
    let Some(wanted) = merged_flags(current, classes) else {
        info!(flags = %current, "Keyspace notifications already cover what the adapters need.");
        return Feed::Notifications { changed: false };
    };
    if !may_config_set {
        return Feed::Polling {
            reason: format!(
                "notify-keyspace-events is {current:?} and --no-config-set forbids changing it (set it to {wanted:?} to avoid polling)"
            ),
        };
    }
    match client
        .config_set("notify-keyspace-events", wanted.as_str())
        .await
    {
        Ok(()) => {
            info!(from = %current, to = %wanted, "Turned on keyspace notifications.");
            Feed::Notifications { changed: true }
        }
        Err(e) => {
            warn!(error = %e, "CONFIG SET notify-keyspace-events was refused.");
            Feed::Polling {
                reason: format!(
                    "CONFIG SET notify-keyspace-events {wanted:?} was refused ({e}); set it on the server to avoid polling"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_user_flags_and_adds_only_missing_ones() {
        assert_eq!(merged_flags("", "lhs").as_deref(), Some("Klhs"));
        assert_eq!(merged_flags("Ex", "lhs").as_deref(), Some("ExKlhs"));
        assert_eq!(merged_flags("KEA", "lhs"), None);
        assert_eq!(merged_flags("Kl", "lhs").as_deref(), Some("Klhs"));
        assert_eq!(merged_flags("AK", "lhst"), None);
    }

    #[test]
    fn dropping_a_class_keeps_the_rest() {
        assert_eq!(without_class("nKElhsg", 'n').as_deref(), Some("KElhsg"));
        assert_eq!(without_class("KElhsg", 'n'), None);
    }
}
