//! The plan lifecycle (API.md §5.4) as a property: random transition attempts against
//! `check_transition` agree with a reference model written from the contract's prose.
#![allow(clippy::unwrap_used)]

use flowai_runtime::check_transition;
use proptest::prelude::*;

const STATES: [&str; 7] = [
    "draft",
    "approved",
    "executing",
    "executed",
    "failed",
    // An event label only, never a stored status; and a status nobody defined.
    "pending_approval",
    "archived",
];

/// `draft → approved → executing → executed | failed`, forward only.
fn model_next(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("draft", "approved")
            | ("approved", "executing")
            | ("executing", "executed")
            | ("executing", "failed")
    )
}

fn model_error(from: &str, to: &str) -> String {
    if from == "executed" || from == "failed" {
        return format!("plan is in terminal state: {from}");
    }
    let expected = match to {
        "approved" => "draft",
        "executing" => "approved",
        "executed" | "failed" => "executing",
        _ => "none",
    };
    format!("invalid transition: expected {expected}, got {from}")
}

proptest! {
    #[test]
    fn transitions_match_the_model(
        start in 0..5usize,
        attempts in proptest::collection::vec(0..STATES.len(), 1..40),
    ) {
        let mut state = STATES[start];
        let mut path = vec![state];
        for index in attempts {
            let to = STATES[index];
            let actual = check_transition(state, to);
            if model_next(state, to) {
                prop_assert_eq!(actual, Ok(()), "{} -> {}", state, to);
                state = to;
                path.push(state);
            } else {
                prop_assert_eq!(actual, Err(model_error(state, to)), "{} -> {}", state, to);
            }
        }
        // Only forward moves: every accepted path is a prefix of one lifecycle.
        let order = |s: &str| STATES.iter().position(|x| *x == s).unwrap_or(usize::MAX);
        for pair in path.windows(2) {
            prop_assert!(order(pair[0]) < order(pair[1]));
        }
        prop_assert!(path.iter().filter(|s| matches!(**s, "executed" | "failed")).count() <= 1);
    }
}

#[test]
fn every_pair_of_states_is_covered() {
    // The table's four transitions and nothing else, over every pair.
    let mut accepted = Vec::new();
    for from in STATES {
        for to in STATES {
            match check_transition(from, to) {
                Ok(()) => accepted.push((from, to)),
                Err(message) => assert_eq!(message, model_error(from, to)),
            }
        }
    }
    assert_eq!(
        accepted,
        [
            ("draft", "approved"),
            ("approved", "executing"),
            ("executing", "executed"),
            ("executing", "failed"),
        ]
    );
}
