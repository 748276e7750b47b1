//! Transfers and redirects in the running server: whether a REFER's `Refer-To`, or a
//! 3xx's Contact, may send a phone to call its target (RFC 3515, RFC 3261 §8.1.3.4).
//!
//! The phone told to call is not the one deciding: a target outside is allowed only when
//! the *referrer's* class of service may call it (the class of the number that would
//! leave, after the route's rewrite), and the call that follows is then the referrer's
//! (a grant: transferee + target + referrer, consumed by the transferee's INVITE).
//! Targets inside (another extension) are always allowed, like dialling them; emergency
//! numbers too. The rules are `policy::transfer`; this applies them to the live state.

use std::sync::Arc;

use policy::dialplan::{CallClass, Dialled};
use policy::transfer::{Transfer, transfer};
use sip::header::addr::{NameAddr, SipUri};

use crate::admission::Outbound;
use crate::directory::DirectoryCache;
use crate::trunk::{Routed, Trunks};

/// What to do with a transfer or redirect target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Another extension, or an emergency number: let it through.
    Inside,
    /// Outside, and the referrer may call it: let it through; the transferee's call to
    /// `target` is the referrer's.
    Granted { target: String },
    /// Refused: the referrer may not call it, is suspended, is no extension, or the
    /// target is no number.
    Refused,
}

/// Judges transfer targets against the live directory, trunks and classes of service.
#[derive(Debug)]
pub struct Transfers {
    outbound: Arc<Outbound>,
    trunks: Arc<Trunks>,
    directory: Arc<DirectoryCache>,
}

/// The number a `Refer-To` or `Contact` value names: the user part of a SIP URI, or
/// the number of a `tel:` URI. None for anything else.
pub fn target_number(value: &str) -> Option<String> {
    let uri = NameAddr::parse(value).map_or(value.trim(), |a| a.uri);
    let lower = uri.get(..4).map(str::to_ascii_lowercase);
    if lower.as_deref() == Some("tel:") {
        let number = uri.get(4..)?.split([';', '?']).next()?;
        // Visual separators (RFC 3966) are not part of the number.
        let number: String = number
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .collect();
        return (!number.is_empty()).then_some(number);
    }
    SipUri::parse(uri)?.user.map(str::to_owned)
}

impl Transfers {
    pub fn new(
        outbound: Arc<Outbound>,
        trunks: Arc<Trunks>,
        directory: Arc<DirectoryCache>,
    ) -> Self {
        Self {
            outbound,
            trunks,
            directory,
        }
    }

    /// The class a call from `referrer` to `number` would have: as the dial plan reads
    /// the number that would leave (after the route's rewrite); as dialled when no route
    /// matches (nothing would leave, and nothing is granted).
    fn class_of(&self, referrer: &str, number: &str) -> (CallClass, bool) {
        let dir = self.directory.get();
        let plan = self.outbound.plan();
        let is_extension = |u: &str| dir.extension_for_user(u).is_some();
        match plan.dialled(number, is_extension) {
            Dialled::Emergency => (CallClass::Emergency, true),
            Dialled::Internal => (CallClass::Internal, true),
            Dialled::Invalid => (CallClass::Invalid, false),
            Dialled::Outside => match self.trunks.route(number, referrer, |_| None) {
                Routed::To(_, leaving) => (
                    plan.leaving(&leaving)
                        .map_or(CallClass::Invalid, |l| l.destination.into()),
                    true,
                ),
                Routed::NoAddress | Routed::NoRoute => (plan.classify(number, is_extension), false),
            },
        }
    }

    /// Judges the target `value` (a `Refer-To` or `Contact`) that `referrer` (an
    /// extension number, or None for a trunk) would send `transferee` (an extension
    /// number, if it is one) to; a granted target is recorded for the transferee.
    pub fn judge(
        &self,
        referrer: Option<&str>,
        transferee: Option<&str>,
        value: &str,
        now: i64,
    ) -> Verdict {
        let Some(number) = target_number(value) else {
            return Verdict::Refused;
        };
        let Some(referrer) = referrer else {
            // A trunk may point at an extension (it could dial it), nothing else.
            let (class, _) = self.class_of("", &number);
            return if class == CallClass::Internal {
                Verdict::Inside
            } else {
                Verdict::Refused
            };
        };
        let (class, routed) = self.class_of(referrer, &number);
        let Some((cos, suspended)) = self.outbound.line(referrer) else {
            return Verdict::Refused;
        };
        match transfer(cos, suspended, class) {
            Transfer::Inside | Transfer::Emergency => Verdict::Inside,
            Transfer::Outside(_) if routed => {
                if let Some(t) = transferee {
                    self.outbound.grant(t, &number, referrer, now);
                }
                Verdict::Granted { target: number }
            }
            Transfer::Outside(_) | Transfer::Refused(_) => Verdict::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Directory;
    use accounts::credentials::Credential;
    use policy::Secret;
    use policy::dialplan::DialPlan;
    use store::outbound::{CallingRow, OutboundRow};

    fn row(number: &str) -> Credential {
        Credential {
            kind: "ext",
            number: number.into(),
            auth_id: format!("a{number}"),
            sip_id: None,
            ha1s: accounts::credentials::Ha1s::opened(Secret::new(""), Secret::new("")),
            password_score: 4,
            credential_generation: 1,
        }
    }

    fn transfers() -> (Transfers, Arc<Outbound>) {
        let outbound = Arc::new(Outbound::new(DialPlan::default()));
        let calling = |n: &str, class: &str| CallingRow {
            kind: "user".into(),
            outbound: OutboundRow {
                number: n.into(),
                class_of_service: Some(class.into()),
                ..OutboundRow::default()
            },
        };
        outbound.replace(&[
            calling("1001", "internal"),
            calling("1002", "international"),
        ]);
        let directory = Arc::new(DirectoryCache::default());
        directory.replace(Directory::from_rows(
            vec![row("1001"), row("1002"), row("1003")],
            "sipward",
            0,
        ));
        let trunks = Arc::new(crate::trunk::tests::trunks());
        (
            Transfers::new(outbound.clone(), trunks, directory),
            outbound,
        )
    }

    #[test]
    fn targets_are_numbers_from_sip_and_tel_uris() {
        assert_eq!(
            target_number("<sip:011442079460000@127.0.0.1:5060;user=phone>").as_deref(),
            Some("011442079460000")
        );
        assert_eq!(target_number("sip:1003@pbx").as_deref(), Some("1003"));
        assert_eq!(
            target_number("<tel:+44-20-7946-0000>").as_deref(),
            Some("+442079460000")
        );
        assert_eq!(target_number("<http://example.com>"), None);
        assert_eq!(target_number("<sip:pbx.example.com>"), None);
    }

    #[test]
    fn only_the_referrers_class_lets_a_target_outside_through() {
        let (t, outbound) = transfers();
        // An internal-class extension cannot send anyone abroad.
        assert_eq!(
            t.judge(Some("1001"), Some("1002"), "<sip:011442079460000@pbx>", 100),
            Verdict::Refused
        );
        assert_eq!(
            t.judge(Some("1001"), Some("1002"), "<tel:+442079460000>", 100),
            Verdict::Refused
        );
        // ...but to another extension, or an emergency number, yes.
        assert_eq!(
            t.judge(Some("1001"), Some("1002"), "<sip:1003@pbx>", 100),
            Verdict::Inside
        );
        assert_eq!(
            t.judge(Some("1001"), Some("1002"), "<sip:911@pbx>", 100),
            Verdict::Inside
        );
        // An international one may, and the call is then its own.
        assert_eq!(
            t.judge(Some("1002"), Some("1001"), "<sip:011442079460000@pbx>", 100),
            Verdict::Granted {
                target: "011442079460000".into()
            }
        );
        assert_eq!(
            outbound
                .take_grant("1001", "011442079460000", 101)
                .as_deref(),
            Some("1002")
        );
        // A trunk may point only at extensions; nonsense is refused.
        assert_eq!(
            t.judge(None, Some("1001"), "<sip:1003@pbx>", 100),
            Verdict::Inside
        );
        assert_eq!(
            t.judge(None, Some("1001"), "<sip:12125550123@pbx>", 100),
            Verdict::Refused
        );
        assert_eq!(
            t.judge(Some("1002"), None, "<http://x>", 100),
            Verdict::Refused
        );
        assert_eq!(
            t.judge(Some("9999"), None, "<sip:12125550123@pbx>", 100),
            Verdict::Refused,
            "no such extension"
        );
    }
}
