//! Where one consumed message goes, decided without I/O: from its parsed key (or why it
//! has none), the store's outcome for the key, the partition's catch-up bound and whether
//! a dead-letter topic is configured. The partition worker reads the message, asks the
//! store, and carries out what [`route`] says.

use dedup_core::store::Outcome;
use dedup_core::{EventError, StoredKey};

use crate::publisher::Target;

/// What the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its key is new.
    Unique,
    /// Its key was first seen at this very offset: the original consumed again.
    Redelivery,
    /// Its key was seen before at another offset (or the store gave no outcome for it).
    Duplicate,
    /// It has no usable key; `action` is what happens to it (`dead_letter` or
    /// `pass_through`), the metrics label.
    Malformed {
        reason: &'static str,
        action: &'static str,
    },
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Below the catch-up bound: it was decided and published before; the store has now
    /// learned its key and nothing is published.
    CatchUp,
    /// A copy: acknowledged, not published.
    Drop,
    /// Published to `target`. `forget_key_if_dead_lettered`: a unique event whose key the
    /// store must forget should it end in the dead-letter topic (a publish that fails for
    /// good), so that a later copy is published rather than dropped.
    Publish {
        target: Target,
        forget_key_if_dead_lettered: Option<StoredKey>,
    },
}

/// The decision for one message: what it is (counted) and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub route: Route,
}

/// Decides one message. `outcome` is the store's answer for `key` (`None` when the key did
/// not parse, or the store gave fewer outcomes than keys).
pub fn route(
    key: &Result<StoredKey, EventError>,
    outcome: Option<Outcome>,
    offset: i64,
    catch_up_until: Option<i64>,
    has_dead_letter: bool,
) -> Decision {
    let (verdict, target) = match key {
        Ok(_) => match outcome {
            Some(Outcome::Unique) => (Verdict::Unique, Some(Target::Output)),
            Some(Outcome::Redelivery) => (Verdict::Redelivery, Some(Target::Output)),
            Some(Outcome::Duplicate { .. }) | None => (Verdict::Duplicate, None),
        },
        Err(error) => {
            let reason = error.kind();
            if has_dead_letter {
                let verdict = Verdict::Malformed {
                    reason,
                    action: "dead_letter",
                };
                (verdict, Some(Target::DeadLetter { reason }))
            } else {
                let verdict = Verdict::Malformed {
                    reason,
                    action: "pass_through",
                };
                (verdict, Some(Target::Output))
            }
        }
    };
    let route = if catch_up_until.is_some_and(|until| offset < until) {
        Route::CatchUp
    } else {
        match target {
            None => Route::Drop,
            Some(target) => Route::Publish {
                target,
                // Only an output message can end in the dead-letter topic by failing.
                forget_key_if_dead_lettered: key
                    .as_ref()
                    .ok()
                    .copied()
                    .filter(|_| target == Target::Output && has_dead_letter),
            },
        }
    };
    Decision { verdict, route }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Result<StoredKey, EventError> {
        dedup_core::event::stored_key(Some(
            br#"{"uuid":"u1","event":"e","distinct_id":"d","token":"t","timestamp":"2026-01-01T00:00:00Z"}"#,
        ))
    }

    fn malformed() -> Result<StoredKey, EventError> {
        dedup_core::event::stored_key(Some(b"not json"))
    }

    #[test]
    fn a_unique_event_is_published_and_its_key_forgotten_only_if_it_can_be_dead_lettered() {
        let decision = route(&key(), Some(Outcome::Unique), 10, None, false);
        assert_eq!(decision.verdict, Verdict::Unique);
        assert_eq!(
            decision.route,
            Route::Publish {
                target: Target::Output,
                forget_key_if_dead_lettered: None
            }
        );
        let decision = route(&key(), Some(Outcome::Unique), 10, None, true);
        assert_eq!(
            decision.route,
            Route::Publish {
                target: Target::Output,
                forget_key_if_dead_lettered: Some(key().expect("a valid event")),
            }
        );
    }

    #[test]
    fn a_redelivered_original_is_published_again() {
        let decision = route(&key(), Some(Outcome::Redelivery), 10, None, false);
        assert_eq!(decision.verdict, Verdict::Redelivery);
        assert!(matches!(
            decision.route,
            Route::Publish {
                target: Target::Output,
                ..
            }
        ));
    }

    #[test]
    fn a_copy_is_dropped_and_so_is_a_key_the_store_gave_no_outcome_for() {
        let copy = route(
            &key(),
            Some(Outcome::Duplicate { first_offset: 3 }),
            10,
            None,
            true,
        );
        assert_eq!(copy.verdict, Verdict::Duplicate);
        assert_eq!(copy.route, Route::Drop);
        let missing = route(&key(), None, 10, None, true);
        assert_eq!(missing.route, Route::Drop);
    }

    #[test]
    fn a_malformed_message_goes_to_the_dead_letter_topic_or_passes_through() {
        let reason = malformed().err().map(|e| e.kind()).unwrap_or_default();
        let with_dlq = route(&malformed(), None, 10, None, true);
        assert_eq!(
            with_dlq.verdict,
            Verdict::Malformed {
                reason,
                action: "dead_letter"
            }
        );
        assert_eq!(
            with_dlq.route,
            Route::Publish {
                target: Target::DeadLetter { reason },
                forget_key_if_dead_lettered: None
            }
        );
        let without = route(&malformed(), None, 10, None, false);
        assert_eq!(
            without.verdict,
            Verdict::Malformed {
                reason,
                action: "pass_through"
            }
        );
        assert_eq!(
            without.route,
            Route::Publish {
                target: Target::Output,
                forget_key_if_dead_lettered: None
            }
        );
    }

    #[test]
    fn below_the_catch_up_bound_nothing_is_published_whatever_the_message_is() {
        for (key, outcome) in [
            (key(), Some(Outcome::Unique)),
            (key(), Some(Outcome::Redelivery)),
            (key(), Some(Outcome::Duplicate { first_offset: 1 })),
            (malformed(), None),
        ] {
            let below = route(&key, outcome, 9, Some(10), true);
            assert_eq!(below.route, Route::CatchUp);
            let at = route(&key, outcome, 10, Some(10), true);
            assert_ne!(at.route, Route::CatchUp, "the bound itself is not catch-up");
        }
        // The verdict is still counted during catch-up.
        assert_eq!(
            route(&key(), Some(Outcome::Unique), 9, Some(10), true).verdict,
            Verdict::Unique
        );
    }
}
