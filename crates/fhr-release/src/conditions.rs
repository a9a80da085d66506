//! Status conditions as data: set one (keeping `lastTransitionTime` while its status stays), in a
//! stable order so that an unchanged status compares equal and is never rewritten.

use fhr_types::FluxHelmReleaseStatus;
use fhr_types::meta::condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `True`, `False` or `Unknown`, as conditions spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    /// `True`
    True,
    /// `False`
    False,
    /// `Unknown`
    Unknown,
}

impl Truth {
    /// As a condition spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }
}

/// Sets (or removes, with `None`) a condition, keeping `lastTransitionTime` while its status stays.
pub fn set_condition(
    status: &mut FluxHelmReleaseStatus,
    type_: &str,
    value: Option<(Truth, &str, &str)>,
    generation: Option<i64>,
) {
    let previous = status.conditions.iter().position(|c| c.type_ == type_);
    let Some((truth, reason, message)) = value else {
        if let Some(i) = previous {
            status.conditions.remove(i);
        }
        return;
    };
    let truth = truth.as_str();
    let last_transition_time = previous
        .map(|i| &status.conditions[i])
        .filter(|c| c.status == truth)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    let new = Condition {
        type_: type_.to_owned(),
        status: truth.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => status.conditions[i] = new,
        None => status.conditions.push(new),
    }
    // A stable order keeps equal statuses equal, so unchanged statuses are never rewritten.
    status.conditions.sort_by_key(|c| condition_rank(&c.type_));
}

fn condition_rank(type_: &str) -> usize {
    [
        condition::READY,
        condition::RELEASED,
        condition::CHART_FETCHED,
        condition::RECONCILING,
        condition::STALLED,
    ]
    .iter()
    .position(|t| *t == type_)
    .unwrap_or(usize::MAX)
}

/// The Ready condition's value, for metrics.
pub fn ready_of(status: &FluxHelmReleaseStatus) -> &'static str {
    match status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| c.status.as_str())
    {
        Some("True") => "True",
        Some("False") => "False",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_stays_while_the_status_stays() {
        let mut status = FluxHelmReleaseStatus::default();
        set_condition(
            &mut status,
            condition::READY,
            Some((Truth::False, "A", "a")),
            Some(1),
        );
        let first = status.conditions[0].last_transition_time.clone();
        set_condition(
            &mut status,
            condition::READY,
            Some((Truth::False, "B", "b")),
            Some(2),
        );
        assert_eq!(status.conditions[0].last_transition_time, first);
        assert_eq!(status.conditions[0].reason, "B");
        set_condition(
            &mut status,
            condition::READY,
            Some((Truth::True, "C", "c")),
            Some(2),
        );
        assert_eq!(status.conditions[0].status, "True");
        set_condition(&mut status, condition::READY, None, Some(2));
        assert!(status.conditions.is_empty());
    }

    #[test]
    fn conditions_keep_a_stable_order() {
        let mut status = FluxHelmReleaseStatus::default();
        set_condition(
            &mut status,
            condition::STALLED,
            Some((Truth::True, "S", "s")),
            None,
        );
        set_condition(
            &mut status,
            condition::READY,
            Some((Truth::False, "R", "r")),
            None,
        );
        let types: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [condition::READY, condition::STALLED]);
        assert_eq!(ready_of(&status), "False");
    }
}
