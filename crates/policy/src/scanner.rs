//! User-Agents of SIP scanners and attack tools. A request carrying one is from a tool,
//! not a phone: its source is banned at once and gets no answer.

/// (text matched case-insensitively inside the User-Agent, the tool, where it is documented)
pub const SCANNER_USER_AGENTS: &[(&str, &str, &str)] = &[
    (
        "friendly-scanner",
        "SIPVicious 0.2/0.3 (svmap, svwar, svcrack)",
        "sipvicious/libs/svhelper.py: default useragent",
    ),
    (
        "sipvicious",
        "SIPVicious",
        "the tool's name, sent by later versions and forks",
    ),
    (
        "sipcli",
        "sipcli",
        "command-line SIP attack client; reported in SIP honeypot logs",
    ),
    (
        "vaxsipuseragent",
        "VaxSIPUserAgent",
        "VaxVoIP SDK user agent used by brute-forcers; reported in SIP honeypot logs",
    ),
    (
        "pplsip",
        "pplsip",
        "scanner user agent reported in SIP honeypot logs",
    ),
    (
        "sundayddr",
        "SundayDDR",
        "worm scanning for SIP servers; reported in SIP honeypot logs",
    ),
    ("iwar", "iWar", "war-dialer with SIP support"),
    ("sip-scan", "sip-scan", "SIP scanner"),
    ("sivus", "SiVuS", "SiVuS SIP vulnerability scanner"),
];

/// The tool a User-Agent names, if it is a known scanner. Runs on every request that
/// carries a User-Agent, so it compares in place without allocating.
pub fn scanner(user_agent: &str) -> Option<&'static str> {
    let hay = user_agent.as_bytes();
    SCANNER_USER_AGENTS
        .iter()
        .find(|(needle, _, _)| {
            hay.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
        })
        .map(|(_, tool, _)| *tool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanners_are_recognised() {
        assert_eq!(
            scanner("friendly-scanner"),
            Some("SIPVicious 0.2/0.3 (svmap, svwar, svcrack)")
        );
        assert_eq!(scanner("SIPVicious 0.3.4"), Some("SIPVicious"));
        assert_eq!(scanner("VaxSIPUserAgent/3.1"), Some("VaxSIPUserAgent"));
        for (needle, _, source) in SCANNER_USER_AGENTS {
            assert!(scanner(&needle.to_uppercase()).is_some(), "{needle}");
            assert!(!source.is_empty());
        }
    }

    #[test]
    fn phones_are_not() {
        for ua in [
            "Yealink SIP-T46U 108.86.0.20",
            "PolycomVVX-VVX_450-UA/6.4",
            "baresip v1.0.0 (x86_64/linux)",
            "Grandstream HT801 1.0.39.4",
            "sipsak 0.9.8",
            "Linphone/5.2",
            "SIPp",
        ] {
            assert_eq!(scanner(ua), None, "{ua}");
        }
    }
}
