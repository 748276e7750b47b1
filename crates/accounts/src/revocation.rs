//! Revocation: when an extension's SIP credentials change (Re-Generate, a new password or
//! auth ID), everything the old ones reached lets go, in the caller's transaction:
//!
//! - the credential generation moves, so every binding made with the old credentials is
//!   revoked (in the store at once, in a running server at its next reload), except the
//!   bindings from the grace window's sources, which stay until the phone logs in with
//!   the new password or the window ends;
//! - the phone's provisioning login and admin password are rotated (its file is
//!   rewritten by the caller after the commit); the old login keeps working during the
//!   window only from the addresses where it fetched the phone's file before (never
//!   merely from where the old SIP password registered: whoever registered with a
//!   stolen password must not fetch the file that carries the new one);
//! - with `keep_grace` false (a suspected compromise) there is no window at all;
//! - queued mails of the extension, including those a sender claimed and never finished,
//!   are withdrawn.
//!
//! A removed extension loses all of this by the store's cascades, its mails by
//! [`store::outbox::supersede_mail`].

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use policy::Secret;
use sip::digest::{self, Algorithm};
use store::Db;
use store::account::{self as q, ExtensionRow};
use store::grace::GraceRow;

use crate::provisioning::REALM as PROVISIONING_REALM;
use crate::registry::{Ha1Owner, Registry, ext_aad};
use crate::{Error, Result};

/// What one revocation did.
#[derive(Debug, Default)]
pub(crate) struct Revoked {
    /// Addresses the old credentials keep working from until the window ends.
    pub grace_sources: Vec<IpAddr>,
    pub grace_until: Option<i64>,
    /// Phones were registered when the credentials changed.
    pub registered: bool,
    /// Addresses the old provisioning login keeps working from (where it fetched the
    /// phone's file before the change) until the window ends.
    pub provisioning_sources: Vec<IpAddr>,
    /// Mails withdrawn (queued, or claimed by a sender that never finished).
    pub mails_withdrawn: u64,
}

impl Registry {
    /// Revokes what `old` (the row as it was) reached; `row` (already written, with the
    /// new credentials) gets its new credential generation. Runs in the caller's
    /// transaction, so the extension is always fully old or fully new. With
    /// `keep_grace` false no grace window is opened (and an open one ends): everything
    /// the old credentials reached is cut at once.
    pub(crate) async fn revoke_credentials(
        &self,
        conn: &mut dyn Db,
        old: &ExtensionRow,
        row: &mut ExtensionRow,
        now: i64,
        keep_grace: bool,
    ) -> Result<Revoked> {
        // The phones registered now (with the old credentials, or with those of a grace
        // window still open) are where the old credentials may go on working. Read
        // before the generation moves: after, no credentials back them.
        let bindings = store::bindings::bindings_of(conn, &row.number, now).await?;
        let generation = q::renew_credentials(conn, &row.number)
            .await?
            .ok_or_else(|| Error::not_found(format!("extension {}", row.number)))?;
        row.credential_generation = generation;
        let sources: BTreeSet<IpAddr> = bindings
            .iter()
            .filter_map(|b| b.source.parse::<SocketAddr>().ok().map(|s| s.ip()))
            .collect();
        let old_login = self.provisioning_login_ha1s(conn, old).await?;
        let grace_secs = self.settings.provisioning.grace_secs;
        let mut revoked = Revoked {
            registered: !bindings.is_empty(),
            ..Revoked::default()
        };
        if keep_grace && grace_secs > 0 && !sources.is_empty() {
            // A window still open keeps the credentials the phones actually have: none
            // of them has logged in with the newer ones yet (that would have ended it).
            let open = store::grace::get_grace(conn, &row.number)
                .await?
                .filter(|g| g.expires_at > now && g.auth_id == old.auth_id);
            // A window still open keeps its own end: a second change must not stretch
            // the life of the oldest password (the one most likely to have leaked).
            let reopened = open.is_some();
            let mut grace = match open {
                Some(g) => g,
                None => {
                    let (prov_user, prov_ha1_md5_enc, prov_ha1_sha256_enc) =
                        old_login.unwrap_or_default();
                    // The extension's HA1s until now become the window's old ones,
                    // sealed for the window (a value copied between rows never opens).
                    let (ha1_md5_enc, ha1_sha256_enc) = self.reseal_ha1s(
                        Ha1Owner::Extension(&old.number),
                        Ha1Owner::Grace(&row.number),
                        (&old.ha1_md5_enc, &old.ha1_sha256_enc),
                    )?;
                    GraceRow {
                        number: row.number.clone(),
                        auth_id: old.auth_id.clone(),
                        ha1_md5_enc,
                        ha1_sha256_enc,
                        sources: String::new(),
                        expires_at: 0,
                        generation: old.credential_generation,
                        prov_user,
                        prov_ha1_md5_enc,
                        prov_ha1_sha256_enc,
                    }
                }
            };
            let mut all: BTreeSet<IpAddr> = grace
                .sources
                .split(',')
                .filter_map(|s| s.parse().ok())
                .collect();
            all.extend(sources.iter().copied());
            grace.sources = all
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(",");
            if !reopened {
                grace.expires_at = now + grace_secs;
            }
            // Only the window's auth ID can use the old password: with a new auth ID
            // the old SIP login is dead at once (the provisioning login is by MAC).
            grace.auth_id = old.auth_id.clone();
            store::grace::put_grace(conn, &grace).await?;
            // The old provisioning login: only from where it fetched the file. (A
            // window still open keeps the addresses of the login it keeps.)
            if !reopened {
                store::provisioning::hand_fetch_sources_to_grace(conn, &row.number).await?;
            }
            revoked.provisioning_sources =
                store::provisioning::grace_fetch_sources(conn, &row.number)
                    .await?
                    .split(',')
                    .filter_map(|s| s.parse().ok())
                    .collect();
            // Every binding now is from a source of the window: they all stay (under
            // the old generation) until the phone logs in anew or the window ends.
            revoked.grace_sources = all.into_iter().collect();
            revoked.grace_until = Some(grace.expires_at);
        } else {
            // No phone registered (or no window configured): the old credentials are
            // dead, and so is every binding made with them.
            store::grace::end_graces(conn, std::slice::from_ref(&row.number), now).await?;
            let contacts: Vec<String> = bindings.into_iter().map(|b| b.contact).collect();
            store::bindings::delete_bindings(conn, &row.number, &contacts).await?;
        }
        self.rotate_phone_secrets(conn, &row.number).await?;
        revoked.mails_withdrawn = store::outbox::supersede_mail(conn, &row.number).await?;
        Ok(revoked)
    }

    /// The phone's provisioning login as it is now (user = MAC, HA1s over the
    /// provisioning realm), if the extension has a phone. The HA1s come sealed for the
    /// extension's grace window (`grace/1001/prov_ha1_md5`): they log in like passwords.
    async fn provisioning_login_ha1s(
        &self,
        conn: &mut dyn Db,
        row: &ExtensionRow,
    ) -> Result<Option<(String, String, String)>> {
        let Some(mac) = row.mac.as_deref() else {
            return Ok(None);
        };
        let Some(prov) = store::provisioning::get_provisioning(conn, &row.number).await? else {
            return Ok(None);
        };
        let pw = self.open_secret(&ext_aad(&row.number, "phone_http"), &prov.http_password_enc)?;
        let owner = Ha1Owner::GraceProvisioning(&row.number);
        let sealed = |alg| {
            let ha1 = Secret::new(digest::ha1(alg, mac, PROVISIONING_REALM, pw.expose()));
            self.seal(&owner.aad(alg), ha1.expose())
        };
        Ok(Some((
            mac.to_owned(),
            sealed(Algorithm::Md5),
            sealed(Algorithm::Sha256),
        )))
    }

    /// New provisioning and admin passwords for the extension's phone (when it has a
    /// provisioning row); the caller bumps the file generation.
    async fn rotate_phone_secrets(&self, conn: &mut dyn Db, number: &str) -> Result<()> {
        let Some(mut prov) = store::provisioning::get_provisioning(conn, number).await? else {
            return Ok(());
        };
        let (admin, http): (Secret, Secret) = (self.new_phone_secret(), self.new_phone_secret());
        prov.admin_password_enc = self.seal(&ext_aad(number, "phone_admin"), admin.expose());
        prov.http_password_enc = self.seal(&ext_aad(number, "phone_http"), http.expose());
        store::provisioning::put_provisioning(conn, &prov).await?;
        // The new login has fetched from nowhere yet.
        store::provisioning::forget_fetch_sources(conn, number).await?;
        Ok(())
    }
}
