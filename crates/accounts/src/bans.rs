//! Ban and allow records, as the CLI (and later the console) manage them.

use std::net::IpAddr;

use ipnet::IpNet;
use policy::InvalidField;
use policy::ban::{Reason, Source};
use serde::Serialize;
use store::guard::{self as q, AllowRow, BanRow};

use crate::{Error, Registry, Result};

/// A ban that never expires on its own (year 9999).
pub const FOREVER: i64 = 253_402_300_799;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BanView {
    pub source: String,
    pub reason: String,
    pub detail: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub expires_at: i64,
    pub times: i64,
}

impl From<BanRow> for BanView {
    fn from(b: BanRow) -> Self {
        Self {
            source: b.source,
            reason: b.reason,
            detail: b.detail,
            first_seen: b.first_seen,
            last_seen: b.last_seen,
            expires_at: b.expires_at,
            times: b.times,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllowView {
    pub network: String,
    pub note: String,
    pub created_at: i64,
}

/// An address, or a network prefix in CIDR form (`2001:db8:1:2::/64`), as ban records
/// hold them.
fn parse_source(value: &str) -> Result<Source> {
    Source::parse(value).ok_or_else(|| {
        InvalidField {
            field: "address",
            reason: format!(
                "{:?} is not an IP address or CIDR prefix",
                value.chars().take(50).collect::<String>()
            ),
        }
        .into()
    })
}

/// A network in CIDR form; a bare address means that one host.
/// The widest IPv4 network the allow list takes (a /8).
pub const ALLOW_WIDEST_V4: u8 = 8;
/// The widest IPv6 network the allow list takes (a /32, one provider's allocation).
pub const ALLOW_WIDEST_V6: u8 = 32;

fn parse_network(value: &str) -> Result<IpNet> {
    let v = value.trim();
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            InvalidField {
                field: "network",
                reason: format!(
                    "{:?} is not an address or CIDR network",
                    v.chars().take(50).collect::<String>()
                ),
            }
            .into()
        })
}

fn note_text(field: &'static str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.chars().count() > 200 || v.chars().any(char::is_control) {
        return Err(InvalidField {
            field,
            reason: "it must be at most 200 characters without control characters".into(),
        }
        .into());
    }
    Ok(v.to_owned())
}

impl Registry {
    /// Bans `source` (an address or a prefix) by hand for `seconds` (or forever). A
    /// source the allow list covers whole is refused (allow-listed addresses inside a
    /// banned prefix stay allowed), and so is one that covers `asker`, the address of the
    /// administrator asking through the console (their own phones and provisioning would
    /// be cut off by their own hand).
    pub async fn ban(
        &self,
        source: &str,
        why: &str,
        seconds: Option<i64>,
        asker: Option<IpAddr>,
    ) -> Result<BanView> {
        let source = parse_source(source)?;
        let why = note_text("reason", why)?;
        if let Some(ip) = asker
            && source.network().contains(&ip)
        {
            return Err(InvalidField {
                field: "source",
                reason: format!(
                    "a ban of {source} covers your own address {ip}: ban it from another address, or with `sipward ban add`"
                ),
            }
            .into());
        }
        let mut conn = self.store().conn().await?;
        if let Some(a) = q::allow_list(&mut conn).await?.into_iter().find(|a| {
            a.network
                .parse::<IpNet>()
                .is_ok_and(|n| n.contains(&source.network()))
        }) {
            let what = if source.is_prefix() {
                "prefix"
            } else {
                "address"
            };
            return Err(Error::InUse {
                what: format!("{what} {source}"),
                owner: format!("the allow list ({})", a.network),
            });
        }
        let now = self.now();
        let previous = q::get_ban(&mut conn, &source.to_string()).await?;
        let row = BanRow {
            source: source.to_string(),
            reason: Reason::Manual.as_str().into(),
            detail: if why.is_empty() {
                "banned by an administrator".into()
            } else {
                why
            },
            first_seen: previous.as_ref().map_or(now, |p| p.first_seen),
            last_seen: now,
            expires_at: seconds.map_or(FOREVER, |s| now.saturating_add(s)),
            times: previous.map_or(1, |p| p.times + 1),
        };
        q::put_ban(&mut conn, &row).await?;
        Ok(row.into())
    }

    /// Lifts the ban of `source`; returns the source as it was stored (what the audit
    /// log names).
    pub async fn unban(&self, source: &str) -> Result<String> {
        let source = parse_source(source)?;
        let mut conn = self.store().conn().await?;
        if !q::delete_ban(&mut conn, &source.to_string()).await? {
            return Err(Error::not_found(format!("a ban of {source}")));
        }
        Ok(source.to_string())
    }

    /// Bans in force (or every recorded ban with `all`).
    pub async fn bans(&self, all: bool) -> Result<Vec<BanView>> {
        let mut conn = self.store().conn().await?;
        let now = (!all).then(|| self.now());
        Ok(q::bans(&mut conn, now)
            .await?
            .into_iter()
            .map(BanView::from)
            .collect())
    }

    /// Allow-lists `network`. A network wider than [`ALLOW_WIDEST_V4`] or
    /// [`ALLOW_WIDEST_V6`] is refused: an allow-listed source is never banned, is spared
    /// the distributed-guessing lockout and may log in to weak accounts, so `0.0.0.0/0`
    /// would turn the guard off for the whole internet.
    pub async fn allow(&self, network: &str, note: &str) -> Result<AllowView> {
        let net = parse_network(network)?;
        let widest = match net {
            IpNet::V4(_) => ALLOW_WIDEST_V4,
            IpNet::V6(_) => ALLOW_WIDEST_V6,
        };
        if net.prefix_len() < widest {
            return Err(InvalidField {
                field: "network",
                reason: format!(
                    "{net} is too wide to allow-list: an allow-listed source is never banned, so allow your offices and trunks, at most a /{widest}"
                ),
            }
            .into());
        }
        let row = AllowRow {
            network: net.to_string(),
            note: note_text("note", note)?,
            created_at: self.now(),
        };
        let mut conn = self.store().conn().await?;
        q::add_allow(&mut conn, &row).await?;
        Ok(AllowView {
            network: row.network,
            note: row.note,
            created_at: row.created_at,
        })
    }

    /// Removes `network` from the allow list; returns it as it was stored.
    pub async fn disallow(&self, network: &str) -> Result<String> {
        let net = parse_network(network)?;
        let mut conn = self.store().conn().await?;
        if !q::delete_allow(&mut conn, &net.to_string()).await? {
            return Err(Error::not_found(format!("allow-list entry {net}")));
        }
        Ok(net.to_string())
    }

    pub async fn allow_list(&self) -> Result<Vec<AllowView>> {
        let mut conn = self.store().conn().await?;
        Ok(q::allow_list(&mut conn)
            .await?
            .into_iter()
            .map(|a| AllowView {
                network: a.network,
                note: a.note,
                created_at: a.created_at,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks() {
        assert!(parse_source("192.0.2.1").is_ok());
        assert!(parse_source("2001:db8::1").is_ok());
        assert_eq!(
            parse_source("2001:db8:1:2:3::/64")
                .expect("prefix")
                .to_string(),
            "2001:db8:1:2::/64"
        );
        assert!(parse_source("192.0.2.0/33").is_err());
        assert_eq!(
            parse_network("192.0.2.7/24").expect("net").to_string(),
            "192.0.2.0/24",
            "host bits cleared"
        );
        assert_eq!(
            parse_network("192.0.2.7").expect("host").to_string(),
            "192.0.2.7/32"
        );
        for bad in ["", "x", "192.0.2.0/33", "300.1.1.1"] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
        assert!(note_text("note", "line\nbreak").is_err());
    }
}
