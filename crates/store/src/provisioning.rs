//! Each phone's provisioning state: its secrets (sealed), the generation of its files
//! and the generation on disk, and the queue of phones the server tells to re-fetch
//! their files (check-sync NOTIFY).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::Result;

/// A phone's provisioning secrets (sealed) and file state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningRow {
    pub number: String,
    /// The phone's own web UI admin password, set by its provisioning file.
    pub admin_password_enc: String,
    /// The password the phone fetches its file with (HTTP Digest, user = MAC).
    pub http_password_enc: String,
    pub generation: i64,
    pub written: i64,
}

fn prov_from_row(r: &AnyRow) -> Result<ProvisioningRow> {
    Ok(ProvisioningRow {
        number: r.try_get("number")?,
        admin_password_enc: r.try_get("admin_password_enc")?,
        http_password_enc: r.try_get("http_password_enc")?,
        generation: r.try_get("generation")?,
        written: r.try_get("written")?,
    })
}

const PROV_COLUMNS: &str = "number, admin_password_enc, http_password_enc, generation, written";

pub async fn get_provisioning(db: &mut dyn Db, number: &str) -> Result<Option<ProvisioningRow>> {
    let conn = raw(db);
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PROV_COLUMNS} FROM provisioning WHERE number = $1"
    )))
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(prov_from_row).transpose()
}

/// Rows whose files on disk are older than the database (a crash or a failed write).
pub async fn unwritten_provisioning(db: &mut dyn Db) -> Result<Vec<ProvisioningRow>> {
    let conn = raw(db);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PROV_COLUMNS} FROM provisioning WHERE written < generation ORDER BY number"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(prov_from_row).collect()
}

/// Inserts or replaces a phone's provisioning row.
pub async fn put_provisioning(db: &mut dyn Db, p: &ProvisioningRow) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO provisioning (number, admin_password_enc, http_password_enc, generation, written) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (number) DO UPDATE SET \
         admin_password_enc = excluded.admin_password_enc, http_password_enc = excluded.http_password_enc, \
         generation = excluded.generation, written = excluded.written",
    )
    .bind(&p.number)
    .bind(&p.admin_password_enc)
    .bind(&p.http_password_enc)
    .bind(p.generation)
    .bind(p.written)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records that the files of `number` at `generation` are on disk (unless a newer
/// generation was stored meanwhile).
pub async fn mark_written(db: &mut dyn Db, number: &str, generation: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query("UPDATE provisioning SET written = $2 WHERE number = $1 AND written < $2")
        .bind(number)
        .bind(generation)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Addresses remembered per phone login (the newest fetches win).
pub const FETCH_SOURCES_MAX: usize = 4;

/// `list` (`ip@epoch`, comma-separated, newest first) with a fetch from `ip` at `now` put
/// first, the address's older entry dropped, bounded to [`FETCH_SOURCES_MAX`].
pub fn with_fetch(list: &str, ip: &str, now: i64) -> String {
    let mut out = vec![format!("{ip}@{now}")];
    out.extend(
        list.split(',')
            .filter(|e| !e.is_empty() && e.split('@').next() != Some(ip))
            .take(FETCH_SOURCES_MAX - 1)
            .map(str::to_owned),
    );
    out.join(",")
}

/// The addresses of an `ip@epoch` list, comma-separated (as grace sources are kept).
pub fn fetch_addresses(list: &str) -> String {
    list.split(',')
        .filter_map(|e| e.split('@').next())
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Records that the phone of `number` fetched its file with its current login from
/// `ip` at `now`.
pub async fn record_fetch(db: &mut dyn Db, number: &str, ip: &str, now: i64) -> Result<()> {
    let conn = raw(db);
    let list: Option<String> =
        sqlx::query_scalar("SELECT fetch_sources FROM provisioning WHERE number = $1")
            .bind(number)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(list) = list else {
        return Ok(());
    };
    sqlx::query("UPDATE provisioning SET fetch_sources = $2 WHERE number = $1")
        .bind(number)
        .bind(with_fetch(&list, ip, now))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Hands the addresses the phone's current login fetched from to its grace window (they
/// alone may use that login once it is the previous one) and starts the new login's
/// list empty. Call after the window's row is written.
pub async fn hand_fetch_sources_to_grace(db: &mut dyn Db, number: &str) -> Result<()> {
    let conn = raw(db);
    let list: Option<String> =
        sqlx::query_scalar("SELECT fetch_sources FROM provisioning WHERE number = $1")
            .bind(number)
            .fetch_optional(&mut *conn)
            .await?;
    sqlx::query("UPDATE credential_grace SET prov_sources = $2 WHERE number = $1")
        .bind(number)
        .bind(fetch_addresses(list.as_deref().unwrap_or("")))
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE provisioning SET fetch_sources = '' WHERE number = $1")
        .bind(number)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Starts the phone's login's fetch list empty (its login was rotated).
pub async fn forget_fetch_sources(db: &mut dyn Db, number: &str) -> Result<()> {
    let conn = raw(db);
    sqlx::query("UPDATE provisioning SET fetch_sources = '' WHERE number = $1")
        .bind(number)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The addresses the grace window of `number` accepts the previous provisioning login
/// from (comma-separated; empty when there is no window).
pub async fn grace_fetch_sources(db: &mut dyn Db, number: &str) -> Result<String> {
    let conn = raw(db);
    let list: Option<String> =
        sqlx::query_scalar("SELECT prov_sources FROM credential_grace WHERE number = $1")
            .bind(number)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(list.unwrap_or_default())
}

/// Asks the running server to tell the phones of `number` to re-fetch their files.
pub async fn request_resync(db: &mut dyn Db, number: &str, now: i64) -> Result<()> {
    let conn = raw(db);
    sqlx::query(
        "INSERT INTO resync (number, created_at) VALUES ($1, $2) \
         ON CONFLICT (number) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(number)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What one node took of the pending re-fetch requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resyncs {
    /// Extensions with a live binding this node holds (or an unowned one): this node
    /// tells their phones.
    pub numbers: Vec<String>,
    /// Requests for extensions with no live binding on any node: no phone to tell,
    /// taken so that they do not pile up.
    pub dropped: u64,
}

/// Takes the pending re-fetch requests that are `node`'s to send, in one statement: an
/// extension with a live binding this node holds (a phone's flow, the NAT mapping or
/// the TCP connection, belongs to one node; only that node reaches it), or one with no
/// live binding anywhere (dropped and counted). A request whose extension's phones are
/// all on other nodes stays for them.
pub async fn take_resyncs(db: &mut dyn Db, node: &str, now: i64) -> Result<Resyncs> {
    let conn = raw(db);
    let rows = sqlx::query(
        "DELETE FROM resync WHERE \
         EXISTS (SELECT 1 FROM bindings b WHERE b.number = resync.number \
         AND b.expires_at > $2 AND (b.node = $1 OR b.node = '')) \
         OR NOT EXISTS (SELECT 1 FROM bindings b WHERE b.number = resync.number \
         AND b.expires_at > $2) \
         RETURNING number, CAST(CASE WHEN EXISTS (SELECT 1 FROM bindings b \
         WHERE b.number = resync.number AND b.expires_at > $2) THEN 1 ELSE 0 END AS BIGINT) \
         AS bound",
    )
    .bind(node)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut taken = Resyncs::default();
    for r in &rows {
        let number: String = r.try_get("number")?;
        if r.try_get::<i64, _>("bound")? == 1 {
            taken.numbers.push(number);
        } else {
            taken.dropped += 1;
        }
    }
    taken.numbers.sort_unstable();
    Ok(taken)
}

/// What the provisioning server knows about a login user (a MAC): the extension whose
/// phone has it, its sealed provisioning password, and the previous login its open
/// grace window keeps. Every field is empty when no phone has this MAC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhoneByMac {
    pub number: Option<String>,
    pub model: Option<String>,
    pub http_password_enc: Option<String>,
    /// Sealed (`grace/1001/prov_ha1_md5`): the caller opens them.
    pub grace_prov_ha1_md5_enc: Option<String>,
    pub grace_prov_ha1_sha256_enc: Option<String>,
    /// IP addresses where the previous login fetched the file, comma-separated (the
    /// only ones it is accepted from).
    pub grace_sources: Option<String>,
    pub grace_expires_at: Option<i64>,
}

/// Looks up the phone with this MAC. One query that returns exactly one row whether
/// or not the MAC is known (outer joins from the MAC itself), so that a prober cannot
/// tell known MACs from the time the answer takes.
pub async fn phone_by_mac(db: &mut dyn Db, mac: &str, now: i64) -> Result<PhoneByMac> {
    let conn = raw(db);
    let r = sqlx::query(
        "SELECT e.number AS number, e.model AS model, p.http_password_enc AS http_password_enc, \
         g.prov_ha1_md5_enc AS g_md5, g.prov_ha1_sha256_enc AS g_sha256, g.prov_sources AS g_sources, \
         g.expires_at AS g_expires \
         FROM (SELECT $1 AS mac) k \
         LEFT JOIN extensions e ON e.mac = k.mac \
         LEFT JOIN provisioning p ON p.number = e.number \
         LEFT JOIN credential_grace g ON g.number = e.number AND g.prov_user = k.mac AND g.expires_at > $2",
    )
    .bind(mac)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(PhoneByMac {
        number: r.try_get("number")?,
        model: r.try_get("model")?,
        http_password_enc: r.try_get("http_password_enc")?,
        grace_prov_ha1_md5_enc: r.try_get("g_md5")?,
        grace_prov_ha1_sha256_enc: r.try_get("g_sha256")?,
        grace_sources: r.try_get("g_sources")?,
        grace_expires_at: r.try_get("g_expires")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_list_keeps_the_newest_few_addresses_once_each() {
        let mut l = String::new();
        for (i, ip) in [
            "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.4", "10.0.0.5",
        ]
        .iter()
        .enumerate()
        {
            l = with_fetch(&l, ip, 100 + i as i64);
        }
        assert_eq!(l, "10.0.0.5@105,10.0.0.4@104,10.0.0.3@103,10.0.0.1@102");
        assert_eq!(fetch_addresses(&l), "10.0.0.5,10.0.0.4,10.0.0.3,10.0.0.1");
        assert_eq!(fetch_addresses(""), "");
        // An address that is a prefix of another is not taken for it.
        assert_eq!(
            with_fetch("10.0.0.10@1", "10.0.0.1", 2),
            "10.0.0.1@2,10.0.0.10@1"
        );
    }
}
