//! Transfers (REFER, 3xx redirects) and auto-answer between extensions: the two ways one
//! extension can make another place or take a call it did not choose. The rules are
//! pure; the runtime asks them before acting on a REFER, a redirect or an auto-answer
//! hint (issue 14: a low-class extension made a higher-class phone answer by itself,
//! then transferred it to a number abroad, which it dialled under its own class).

use crate::dialplan::{CallClass, ClassOfService, Destination, DialPlan};

/// What to do with a transfer or redirect target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// Another extension here.
    Inside,
    /// An emergency number: allowed as dialling it would be (it counts against the
    /// emergency limits).
    Emergency,
    /// Outside, and the referrer's class may call it: the call that results is the
    /// referrer's, and counts against the referrer's fraud limits.
    Outside(Destination),
    /// Refused.
    Refused(TransferRefusal),
}

/// Why a transfer target is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefusal {
    #[error("the referrer's class of service does not allow calls to the transfer target")]
    ClassOfService,
    #[error("the referrer's outbound calling is suspended")]
    Suspended,
    #[error("the transfer target is not a number sipward can route")]
    NotANumber,
}

/// Decides a REFER's (or a 3xx redirect's) target for the extension on whose behalf the
/// new call would be placed: the referrer, never the phone told to call. `target` is the
/// target's class as the dial plan gives it after routing
/// ([`DialPlan::classify_routed`]): outside numbers by the number that would leave.
pub fn transfer(referrer: ClassOfService, referrer_suspended: bool, target: CallClass) -> Transfer {
    let Some(destination) = target.destination() else {
        return match target {
            CallClass::Internal => Transfer::Inside,
            CallClass::Emergency => Transfer::Emergency,
            _ => Transfer::Refused(TransferRefusal::NotANumber),
        };
    };
    if referrer_suspended {
        Transfer::Refused(TransferRefusal::Suspended)
    } else if !referrer.reaches(destination) {
        Transfer::Refused(TransferRefusal::ClassOfService)
    } else {
        Transfer::Outside(destination)
    }
}

/// Whether auto-answer hints (`Call-Info: ...;answer-after=N`, the `Alert-Info`
/// auto-answer variants) may stay on a call from an extension of class `caller` to
/// another extension. Only with `intercom` on for that class (off for every class by
/// default); otherwise the runtime strips them.
pub fn auto_answer_passes(plan: &DialPlan, caller: ClassOfService) -> bool {
    plan.classes.get(caller).intercom
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClassOfService as S;

    #[test]
    fn a_referrer_transfers_outside_only_where_it_may_call() {
        let p = DialPlan::default();
        let target = |n: &str| p.classify(n, |x| x == "1002");
        // The attack: an internal-class extension refers a phone to a number abroad.
        assert_eq!(
            transfer(S::Internal, false, target("011442079460000")),
            Transfer::Refused(TransferRefusal::ClassOfService)
        );
        assert_eq!(
            transfer(S::National, false, target("011442079460000")),
            Transfer::Refused(TransferRefusal::ClassOfService)
        );
        assert_eq!(
            transfer(S::International, false, target("011442079460000")),
            Transfer::Outside(Destination::International)
        );
        assert_eq!(
            transfer(S::International, false, target("18765550123")),
            Transfer::Refused(TransferRefusal::ClassOfService),
            "Jamaica is high-cost"
        );
        assert_eq!(
            transfer(S::Unrestricted, false, target("18765550123")),
            Transfer::Outside(Destination::HighCost)
        );
        assert_eq!(
            transfer(S::National, false, target("12125551234")),
            Transfer::Outside(Destination::National)
        );
        assert_eq!(
            transfer(S::International, true, target("12125551234")),
            Transfer::Refused(TransferRefusal::Suspended)
        );
        // Inside, emergency and nonsense.
        assert_eq!(
            transfer(S::Internal, true, target("1002")),
            Transfer::Inside
        );
        assert_eq!(
            transfer(S::Internal, true, target("911")),
            Transfer::Emergency
        );
        assert_eq!(
            transfer(S::Unrestricted, false, target("sip-trunk")),
            Transfer::Refused(TransferRefusal::NotANumber)
        );
        assert_eq!(
            transfer(S::Unrestricted, false, target("5551234")),
            Transfer::Refused(TransferRefusal::NotANumber),
            "does not map without an area code"
        );
    }

    #[test]
    fn auto_answer_passes_only_with_intercom() {
        let mut p = DialPlan::default();
        for class in S::ALL {
            assert!(!auto_answer_passes(&p, class), "{class} is off by default");
        }
        p.classes.national.intercom = true;
        assert!(auto_answer_passes(&p, S::National));
        assert!(
            !auto_answer_passes(&p, S::International),
            "per class, not ordered"
        );
        assert!(!auto_answer_passes(&p, S::Local));
    }
}
