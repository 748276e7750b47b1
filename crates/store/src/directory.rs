//! The credential directory the running registrar authenticates against (auth IDs and
//! sealed HA1s, never passwords), and the version it polls to learn that it changed.

use sqlx::Row;

use crate::db::{Db, raw};
use crate::error::{Error, Result};

/// An account that can authenticate to the registrar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryRow {
    /// `ext` or `gateway`.
    pub kind: &'static str,
    /// The row's key, which sealed values are bound to: the extension number, or the
    /// gateway's name.
    pub record: String,
    /// The extension number (or the gateway's virtual extension number).
    pub number: String,
    pub auth_id: String,
    pub sip_id: Option<String>,
    /// The HA1s as sealed by the vault (`ext/1001/ha1_md5`, `gateway/gw1/ha1_md5`, ...):
    /// the caller opens them.
    pub ha1_md5_enc: String,
    pub ha1_sha256_enc: String,
    /// The password's zxcvbn score (0..=4), stored when it was set.
    pub password_score: u8,
    /// An extension's credential generation (see
    /// [`crate::account::ExtensionRow::credential_generation`]); 0 for gateways.
    pub credential_generation: i64,
}

/// Moves whenever an account, a route, a DID, an outbound setting or a grace window is
/// written (SQLite triggers; the meta key keeps its first name, `registry_version`): the
/// server reloads its directory and trunks when it moves.
pub async fn accounts_version(db: &mut dyn Db) -> Result<i64> {
    let conn = raw(db);
    crate::meta::meta_counter(conn, "registry_version").await
}

/// The extensions that can register whose number sorts after `after` (`""` first), at
/// most `limit`, packed by the database into one value (see
/// `list_extensions_for_audit` for why). Read a page at a time, so that a start never
/// holds every row's packed text at once. The cursor is the database's `max(number)`, in the collation of its `>`.
pub async fn extension_directory(
    db: &mut dyn Db,
    after: &str,
    limit: i64,
) -> Result<crate::Page<DirectoryRow>> {
    let conn = raw(db);
    let sql = match crate::db::backend(conn) {
        crate::db::Backend::Sqlite => {
            "SELECT group_concat('ext' || char(31) || number || char(31) || number || char(31) || auth_id || char(31) || \
                coalesce(sip_id, '') || char(31) || ha1_md5_enc || char(31) || ha1_sha256_enc || char(31) || password_score || char(31) || \
                credential_generation, char(30)) AS e, max(number) AS last \
                FROM (SELECT number, auth_id, sip_id, ha1_md5_enc, ha1_sha256_enc, password_score, credential_generation \
                FROM extensions WHERE number > $1 ORDER BY number LIMIT $2)"
        }
        crate::db::Backend::Postgres => {
            "SELECT string_agg('ext' || chr(31) || number || chr(31) || number || chr(31) || auth_id || chr(31) || \
                coalesce(sip_id, '') || chr(31) || ha1_md5_enc || chr(31) || ha1_sha256_enc || chr(31) || password_score || chr(31) || \
                credential_generation, chr(30)) AS e, max(number) AS last \
                FROM (SELECT number, auth_id, sip_id, ha1_md5_enc, ha1_sha256_enc, password_score, credential_generation \
                FROM extensions WHERE number > $1 ORDER BY number LIMIT $2) AS page"
        }
    };
    let row = sqlx::query(sql)
        .bind(after)
        .bind(limit)
        .fetch_one(&mut *conn)
        .await?;
    let mut rows = Vec::new();
    unpack(row.try_get("e")?, &mut rows)?;
    Ok(crate::Page {
        rows,
        last: row.try_get("last")?,
    })
}

/// The gateways that can register (a handful: read whole).
pub async fn gateway_directory(db: &mut dyn Db) -> Result<Vec<DirectoryRow>> {
    let conn = raw(db);
    let sql = match crate::db::backend(conn) {
        crate::db::Backend::Sqlite => {
            "SELECT group_concat('gateway' || char(31) || name || char(31) || number || char(31) || auth_id || char(31) || \
                '' || char(31) || ha1_md5_enc || char(31) || ha1_sha256_enc || char(31) || password_score || char(31) || '0', char(30)) AS g \
                FROM gateways"
        }
        crate::db::Backend::Postgres => {
            "SELECT string_agg('gateway' || chr(31) || name || chr(31) || number || chr(31) || auth_id || chr(31) || \
                '' || chr(31) || ha1_md5_enc || chr(31) || ha1_sha256_enc || chr(31) || password_score || chr(31) || '0', chr(30)) AS g \
                FROM gateways"
        }
    };
    let row = sqlx::query(sql).fetch_one(&mut *conn).await?;
    let mut rows = Vec::new();
    unpack(row.try_get("g")?, &mut rows)?;
    Ok(rows)
}

/// Splits packed directory records (fields joined by U+001F, records by U+001E).
fn unpack(packed: Option<String>, out: &mut Vec<DirectoryRow>) -> Result<()> {
    for record in packed
        .as_deref()
        .unwrap_or("")
        .split('\u{1e}')
        .filter(|r| !r.is_empty())
    {
        let f: Vec<&str> = record.split('\u{1f}').collect();
        let [
            kind,
            record,
            number,
            auth_id,
            sip_id,
            md5,
            sha,
            score,
            generation,
        ] = f[..]
        else {
            return Err(Error::Corrupt {
                path: "extensions".into(),
                detail: "a directory row has unexpected fields".into(),
            });
        };
        out.push(DirectoryRow {
            kind: if kind == "gateway" { "gateway" } else { "ext" },
            record: record.to_owned(),
            number: number.to_owned(),
            auth_id: auth_id.to_owned(),
            sip_id: (!sip_id.is_empty()).then(|| sip_id.to_owned()),
            ha1_md5_enc: md5.to_owned(),
            ha1_sha256_enc: sha.to_owned(),
            password_score: score.parse().unwrap_or(0),
            credential_generation: generation.parse().map_err(|_| Error::Corrupt {
                path: "extensions".into(),
                detail: "a credential generation is not a number".into(),
            })?,
        });
    }
    Ok(())
}
