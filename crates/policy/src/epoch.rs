//! Security epochs: numbered hardening steps that every data dir goes through once, at
//! the upgrade that introduces them and when an older backup is restored with
//! `--reharden`. A backup made before an epoch holds what that epoch fixed (weak
//! credentials, say), so it is not restored as it is.

/// One epoch: its number and what it does, in the words shown to administrators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub number: u32,
    pub title: &'static str,
    pub steps: &'static [&'static str],
}

/// Every epoch, oldest first; numbers are 1, 2, ... without gaps.
pub const EPOCHS: &[Epoch] = &[Epoch {
    number: 1,
    title: "credentials equal to the extension number (the 3CX v9 build 13967 update)",
    steps: &[
        "every fax extension gets a new strong password and PIN",
        "SIP IDs equal to the extension number are blanked",
        "extensions whose password or voicemail PIN equals the number are re-generated (new files, welcome mails)",
        "gateways on factory-default logins or with the password equal to the auth ID are reported",
    ],
}];

/// The epoch this version of sipward hardens data dirs to.
pub const CURRENT: u32 = EPOCHS[EPOCHS.len() - 1].number;

/// The epochs a data dir at `from` still needs, oldest first.
pub fn pending(from: u32) -> impl Iterator<Item = &'static Epoch> {
    EPOCHS.iter().filter(move |e| e.number > from)
}

/// Why a backup at epoch `from` is not restored as it is, and what to do: one paragraph.
pub fn refusal(from: u32) -> String {
    let mut s = format!(
        "this backup was made before security epoch {CURRENT} (it is at epoch {from}) and may hold credentials that epoch fixed:"
    );
    for e in pending(from) {
        s.push_str(&format!("\n  epoch {}: {}", e.number, e.title));
        for step in e.steps {
            s.push_str(&format!("\n    - {step}"));
        }
    }
    s.push_str("\nrestore it with --reharden to apply these steps as it is restored, or make a new backup from a hardened data dir");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_numbered_without_gaps() {
        for (i, e) in EPOCHS.iter().enumerate() {
            assert_eq!(e.number as usize, i + 1);
            assert!(!e.steps.is_empty());
        }
        assert_eq!(CURRENT, EPOCHS.len() as u32);
    }

    #[test]
    fn pending_and_refusal_name_the_missing_epochs() {
        assert_eq!(pending(0).count(), EPOCHS.len());
        assert_eq!(pending(CURRENT).count(), 0);
        let text = refusal(0);
        assert!(text.contains("epoch 1:"), "{text}");
        assert!(text.contains("--reharden"), "{text}");
        assert!(text.contains("fax"), "{text}");
    }
}
