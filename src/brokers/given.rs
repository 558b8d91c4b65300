//! [`Given`]: a broker setting's value, and whether the user gave it. The one rule for every
//! broker: a value the user gave (flag, environment or TOML) wins over what `--brokers auto`
//! detects; a default gives way to it.

/// A setting's value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given<T> {
    value: T,
    given: bool,
}

impl<T: Clone> Given<T> {
    /// The user's value when there is one, else `default`.
    pub fn or_default(given: Option<T>, default: T) -> Given<T> {
        match given {
            Some(value) => Given { value, given: true },
            None => Given {
                value: default,
                given: false,
            },
        }
    }

    /// A value that counts as given when `given` says so.
    pub fn new(value: T, given: bool) -> Given<T> {
        Given { value, given }
    }

    /// The given value, else the default.
    pub fn value(&self) -> &T {
        &self.value
    }

    pub fn is_given(&self) -> bool {
        self.given
    }

    /// The value to use: the given one; else the detected one; else the default.
    pub fn or_detected(&self, detected: Option<T>) -> T {
        match detected {
            Some(found) if !self.given => found,
            _ => self.value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_value_wins_over_detection_and_a_default_gives_way() {
        let given = Given::or_default(Some("shop"), "dramatiq");
        assert_eq!(given.or_detected(Some("found")), "shop");
        let default = Given::or_default(None, "dramatiq");
        assert_eq!(default.or_detected(Some("found")), "found");
        assert_eq!(default.or_detected(None), "dramatiq");
        assert!(given.is_given() && !default.is_given());
    }
}
