//! Account rows (extensions, gateways, providers) and their queries. Rows carry values
//! already validated by the caller and secrets already sealed; this module only moves
//! them in and out of the database. Functions take any handle, so that callers can group
//! writes in one transaction.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Db, raw};
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionRow {
    pub number: String,
    /// `user` or `fax`.
    pub kind: String,
    pub name: String,
    pub email: Option<String>,
    pub auth_id: String,
    pub sip_id: Option<String>,
    pub password_enc: String,
    pub password_score: i64,
    pub pin_enc: String,
    /// HA1s for the configured realm, sealed like the secrets (`ext/1001/ha1_md5`).
    pub ha1_md5_enc: String,
    pub ha1_sha256_enc: String,
    pub mac: Option<String>,
    pub model: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Moves whenever the SIP credentials change (drawn from one counter for the whole
    /// data dir, so a re-added number never gets an old value back): a binding made
    /// under another generation is revoked. Set by the store, never by the caller:
    /// [`insert_extension`] draws a fresh one, [`renew_credentials`] draws the next.
    pub credential_generation: i64,
    /// `udp`, `tcp` or `tls`: the transport this extension's phones are provisioned
    /// with; None follows the installation's setting.
    pub phone_transport: Option<String>,
    /// Seconds a call rings before voicemail answers; 0: no voicemail.
    pub voicemail_after_secs: i64,
    /// Whether a new message is mailed to `email` (only when there is one).
    pub voicemail_mail: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRow {
    pub name: String,
    pub vendor: String,
    pub number: String,
    pub auth_id: String,
    pub password_enc: String,
    pub password_score: i64,
    /// HA1s, sealed (`gateway/gw1/ha1_md5`).
    pub ha1_md5_enc: String,
    pub ha1_sha256_enc: String,
    pub host: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRow {
    pub name: String,
    pub registrar: String,
    pub auth_id: String,
    pub password_enc: String,
    pub password_score: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const EXT_COLUMNS: &str = "number, kind, name, email, auth_id, sip_id, password_enc, password_score, \
     pin_enc, ha1_md5_enc, ha1_sha256_enc, mac, model, created_at, updated_at, credential_generation, phone_transport, \
     voicemail_after_secs, voicemail_mail";
const GW_COLUMNS: &str = "name, vendor, number, auth_id, password_enc, password_score, ha1_md5_enc, \
     ha1_sha256_enc, host, created_at, updated_at";
const PROV_COLUMNS: &str =
    "name, registrar, auth_id, password_enc, password_score, created_at, updated_at";

fn ext_from_row(r: &AnyRow) -> Result<ExtensionRow> {
    Ok(ExtensionRow {
        number: r.try_get("number")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        email: r.try_get("email")?,
        auth_id: r.try_get("auth_id")?,
        sip_id: r.try_get("sip_id")?,
        password_enc: r.try_get("password_enc")?,
        password_score: r.try_get("password_score")?,
        pin_enc: r.try_get("pin_enc")?,
        ha1_md5_enc: r.try_get("ha1_md5_enc")?,
        ha1_sha256_enc: r.try_get("ha1_sha256_enc")?,
        mac: r.try_get("mac")?,
        model: r.try_get("model")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        credential_generation: r.try_get("credential_generation")?,
        phone_transport: r.try_get("phone_transport")?,
        voicemail_after_secs: r.try_get("voicemail_after_secs")?,
        voicemail_mail: r.try_get::<i64, _>("voicemail_mail")? != 0,
    })
}

fn gw_from_row(r: &AnyRow) -> Result<GatewayRow> {
    Ok(GatewayRow {
        name: r.try_get("name")?,
        vendor: r.try_get("vendor")?,
        number: r.try_get("number")?,
        auth_id: r.try_get("auth_id")?,
        password_enc: r.try_get("password_enc")?,
        password_score: r.try_get("password_score")?,
        ha1_md5_enc: r.try_get("ha1_md5_enc")?,
        ha1_sha256_enc: r.try_get("ha1_sha256_enc")?,
        host: r.try_get("host")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn prov_from_row(r: &AnyRow) -> Result<ProviderRow> {
    Ok(ProviderRow {
        name: r.try_get("name")?,
        registrar: r.try_get("registrar")?,
        auth_id: r.try_get("auth_id")?,
        password_enc: r.try_get("password_enc")?,
        password_score: r.try_get("password_score")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

// ---- cross-table identity ----

/// Who uses an auth ID already, as a subject such as `ext:1001` or `gateway:gw1`.
pub async fn auth_id_owner(db: &mut dyn Db, auth_id: &str) -> Result<Option<String>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT 'ext:' || number AS who FROM extensions WHERE auth_id = $1 \
         UNION ALL SELECT 'gateway:' || name AS who FROM gateways WHERE auth_id = $1",
    )
    .bind(auth_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.try_get("who")).transpose()?)
}

/// Every account that uses `value` as its number, SIP ID or auth ID: extensions and
/// gateways share one namespace, since a phone's To user and a digest user name are
/// looked up in it. Pairs of (subject such as `ext:1001`, role `number`, `sip_id` or
/// `auth_id`).
pub async fn identity_owners(db: &mut dyn Db, value: &str) -> Result<Vec<(String, String)>> {
    let conn = raw(db);
    let rows = sqlx::query(
        "SELECT 'ext:' || number AS who, 'number' AS role FROM extensions WHERE number = $1 \
         UNION ALL SELECT 'ext:' || number AS who, 'sip_id' AS role FROM extensions WHERE sip_id = $1 \
         UNION ALL SELECT 'ext:' || number AS who, 'auth_id' AS role FROM extensions WHERE auth_id = $1 \
         UNION ALL SELECT 'gateway:' || name AS who, 'number' AS role FROM gateways WHERE number = $1 \
         UNION ALL SELECT 'gateway:' || name AS who, 'auth_id' AS role FROM gateways WHERE auth_id = $1",
    )
    .bind(value)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("who")?, r.try_get("role")?)))
        .collect()
}

/// Who uses a number already: an extension, or a gateway as its virtual extension.
pub async fn number_owner(db: &mut dyn Db, number: &str) -> Result<Option<String>> {
    let conn = raw(db);
    let row = sqlx::query(
        "SELECT 'ext:' || number AS who FROM extensions WHERE number = $1 \
         UNION ALL SELECT 'gateway:' || name AS who FROM gateways WHERE number = $1",
    )
    .bind(number)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.try_get("who")).transpose()?)
}

/// Extension columns that must be unique besides number and auth ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniqueField {
    SipId,
    Mac,
}

/// Which extension holds a SIP ID or MAC, as a subject such as `ext:1001`.
pub async fn extension_with(
    db: &mut dyn Db,
    field: UniqueField,
    value: &str,
) -> Result<Option<String>> {
    let conn = raw(db);
    let sql = match field {
        UniqueField::SipId => "SELECT 'ext:' || number AS who FROM extensions WHERE sip_id = $1",
        UniqueField::Mac => "SELECT 'ext:' || number AS who FROM extensions WHERE mac = $1",
    };
    let row = sqlx::query(sql)
        .bind(value)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get("who")).transpose()?)
}

// ---- extensions ----

/// Draws the next credential generation (one counter for the whole data dir).
async fn next_credential_generation(conn: &mut sqlx::AnyConnection) -> Result<i64> {
    let row = sqlx::query(
        "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) \
         WHERE key = 'credential_generation' RETURNING value",
    )
    .fetch_one(&mut *conn)
    .await?;
    let text: String = row.try_get("value")?;
    text.parse().map_err(|_| Error::Corrupt {
        path: "meta".into(),
        detail: "credential_generation is not a number".into(),
    })
}

/// Inserts an extension with a fresh credential generation (the row's value is
/// ignored); returns that generation.
pub async fn insert_extension(db: &mut dyn Db, e: &ExtensionRow) -> Result<i64> {
    let conn = raw(db);
    let generation = next_credential_generation(conn).await?;
    let sql = format!(
        "INSERT INTO extensions ({EXT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&e.number)
        .bind(&e.kind)
        .bind(&e.name)
        .bind(&e.email)
        .bind(&e.auth_id)
        .bind(&e.sip_id)
        .bind(&e.password_enc)
        .bind(e.password_score)
        .bind(&e.pin_enc)
        .bind(&e.ha1_md5_enc)
        .bind(&e.ha1_sha256_enc)
        .bind(&e.mac)
        .bind(&e.model)
        .bind(e.created_at)
        .bind(e.updated_at)
        .bind(generation)
        .bind(&e.phone_transport)
        .bind(e.voicemail_after_secs)
        .bind(i64::from(e.voicemail_mail))
        .execute(&mut *conn)
        .await
        .map_err(|err| {
            Error::on_conflict(err, || {
                format!("extension {} (or its auth ID, SIP ID or MAC)", e.number)
            })
        })?;
    Ok(generation)
}

/// The extension's SIP credentials changed: draws its next credential generation, which
/// revokes every binding made under the old one (except those its grace window keeps).
/// Returns the new generation, or None when there is no such extension.
pub async fn renew_credentials(db: &mut dyn Db, number: &str) -> Result<Option<i64>> {
    let conn = raw(db);
    let generation = next_credential_generation(conn).await?;
    let done = sqlx::query("UPDATE extensions SET credential_generation = $2 WHERE number = $1")
        .bind(number)
        .bind(generation)
        .execute(&mut *conn)
        .await?;
    Ok((done.rows_affected() == 1).then_some(generation))
}

/// Replaces every column of the extension with this number (but its credential
/// generation, see [`renew_credentials`]); returns false when absent.
pub async fn update_extension(db: &mut dyn Db, e: &ExtensionRow) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query(
        "UPDATE extensions SET kind = $2, name = $3, email = $4, auth_id = $5, sip_id = $6, \
         password_enc = $7, password_score = $8, pin_enc = $9, ha1_md5_enc = $10, ha1_sha256_enc = $11, \
         mac = $12, model = $13, updated_at = $14, phone_transport = $15, \
         voicemail_after_secs = $16, voicemail_mail = $17 WHERE number = $1",
    )
    .bind(&e.number)
    .bind(&e.kind)
    .bind(&e.name)
    .bind(&e.email)
    .bind(&e.auth_id)
    .bind(&e.sip_id)
    .bind(&e.password_enc)
    .bind(e.password_score)
    .bind(&e.pin_enc)
    .bind(&e.ha1_md5_enc)
    .bind(&e.ha1_sha256_enc)
    .bind(&e.mac)
    .bind(&e.model)
    .bind(e.updated_at)
    .bind(&e.phone_transport)
    .bind(e.voicemail_after_secs)
    .bind(i64::from(e.voicemail_mail))
    .execute(&mut *conn)
    .await
    .map_err(|err| {
        Error::on_conflict(err, || {
            format!("the auth ID, SIP ID or MAC of extension {}", e.number)
        })
    })?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_extension(db: &mut dyn Db, number: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM extensions WHERE number = $1")
        .bind(number)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_extension(db: &mut dyn Db, number: &str) -> Result<Option<ExtensionRow>> {
    let conn = raw(db);
    let sql = format!("SELECT {EXT_COLUMNS} FROM extensions WHERE number = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(number)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(ext_from_row).transpose()
}

/// All extensions, in number order (shorter numbers first, so 888 comes before 1001).
pub async fn list_extensions(db: &mut dyn Db) -> Result<Vec<ExtensionRow>> {
    let conn = raw(db);
    let sql = format!("SELECT {EXT_COLUMNS} FROM extensions ORDER BY LENGTH(number), number");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(ext_from_row).collect()
}

/// What the audit reads of an extension: identity and sealed secrets, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionAuditRow {
    pub number: String,
    pub name: String,
    pub email: Option<String>,
    pub auth_id: String,
    pub sip_id: Option<String>,
    pub password_enc: String,
    pub password_score: i64,
    pub pin_enc: String,
}

impl From<&ExtensionRow> for ExtensionAuditRow {
    fn from(r: &ExtensionRow) -> Self {
        Self {
            number: r.number.clone(),
            name: r.name.clone(),
            email: r.email.clone(),
            auth_id: r.auth_id.clone(),
            sip_id: r.sip_id.clone(),
            password_enc: r.password_enc.clone(),
            password_score: r.password_score,
            pin_enc: r.pin_enc.clone(),
        }
    }
}

/// The extensions whose number sorts after `after` (`""` for the first page), at most
/// `limit` of them: the audit reads accounts a page at a time, so that its memory is a
/// page's, not every account's at once (at 10,000 extensions, all of them with their
/// sealed secrets and copies were tens of MiB that the allocator then kept).
///
/// SQLite packs the page's rows into one text value (fields joined by U+001F, rows by
/// U+001E) which is split here: moving rows one by one through sqlx costs a value copy
/// per column and a channel wake-up per row, which dominated the audit's time. The
/// separators cannot occur in stored values (validated fields refuse control characters;
/// sealed secrets are hex). PostgreSQL's equivalent is `string_agg`. The cursor is the
/// database's own `max(number)`, so it follows the same collation as the `>` that reads
/// the next page.
pub async fn list_extensions_for_audit(
    db: &mut dyn Db,
    after: &str,
    limit: i64,
) -> Result<crate::Page<ExtensionAuditRow>> {
    let conn = raw(db);
    let sql = match crate::db::backend(conn) {
        crate::db::Backend::Sqlite => {
            "SELECT group_concat(number || char(31) || name || char(31) || coalesce(email, '') || char(31) || \
             auth_id || char(31) || coalesce(sip_id, '') || char(31) || password_enc || char(31) || \
             password_score || char(31) || pin_enc, char(30)) AS packed, max(number) AS last \
             FROM (SELECT number, name, email, auth_id, sip_id, password_enc, password_score, pin_enc \
             FROM extensions WHERE number > $1 ORDER BY number LIMIT $2)"
        }
        crate::db::Backend::Postgres => {
            "SELECT string_agg(number || chr(31) || name || chr(31) || coalesce(email, '') || chr(31) || \
             auth_id || chr(31) || coalesce(sip_id, '') || chr(31) || password_enc || chr(31) || \
             password_score || chr(31) || pin_enc, chr(30)) AS packed, max(number) AS last \
             FROM (SELECT number, name, email, auth_id, sip_id, password_enc, password_score, pin_enc \
             FROM extensions WHERE number > $1 ORDER BY number LIMIT $2) AS page"
        }
    };
    let row = sqlx::query(sql)
        .bind(after)
        .bind(limit)
        .fetch_one(&mut *conn)
        .await?;
    let packed: Option<String> = row.try_get("packed")?;
    let last: Option<String> = row.try_get("last")?;
    let Some(packed) = packed else {
        return Ok(crate::Page {
            rows: Vec::new(),
            last,
        });
    };
    let rows = packed
        .split('\u{1e}')
        .map(unpack_audit_row)
        .collect::<Result<_>>()?;
    Ok(crate::Page { rows, last })
}

fn unpack_audit_row(record: &str) -> Result<ExtensionAuditRow> {
    let bad = || Error::Corrupt {
        path: "extensions".into(),
        detail: "an extension row has unexpected fields".into(),
    };
    let mut f = record.split('\u{1f}');
    let mut next = || f.next().ok_or_else(bad);
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(ExtensionAuditRow {
        number: next()?.to_owned(),
        name: next()?.to_owned(),
        email: non_empty(next()?),
        auth_id: next()?.to_owned(),
        sip_id: non_empty(next()?),
        password_enc: next()?.to_owned(),
        password_score: next()?.parse().map_err(|_| bad())?,
        pin_enc: next()?.to_owned(),
    })
}

pub async fn count_extensions(db: &mut dyn Db) -> Result<i64> {
    let conn = raw(db);
    let row = sqlx::query("SELECT COUNT(*) AS n FROM extensions")
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("n")?)
}

// ---- gateways ----

pub async fn insert_gateway(db: &mut dyn Db, g: &GatewayRow) -> Result<()> {
    let conn = raw(db);
    let sql =
        format!("INSERT INTO gateways ({GW_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&g.name)
        .bind(&g.vendor)
        .bind(&g.number)
        .bind(&g.auth_id)
        .bind(&g.password_enc)
        .bind(g.password_score)
        .bind(&g.ha1_md5_enc)
        .bind(&g.ha1_sha256_enc)
        .bind(&g.host)
        .bind(g.created_at)
        .bind(g.updated_at)
        .execute(&mut *conn)
        .await
        .map_err(|err| {
            Error::on_conflict(err, || {
                format!("gateway {} (or its number or auth ID)", g.name)
            })
        })?;
    Ok(())
}

pub async fn update_gateway(db: &mut dyn Db, g: &GatewayRow) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query(
        "UPDATE gateways SET vendor = $2, number = $3, auth_id = $4, password_enc = $5, \
         password_score = $6, ha1_md5_enc = $7, ha1_sha256_enc = $8, host = $9, updated_at = $10 WHERE name = $1",
    )
    .bind(&g.name)
    .bind(&g.vendor)
    .bind(&g.number)
    .bind(&g.auth_id)
    .bind(&g.password_enc)
    .bind(g.password_score)
    .bind(&g.ha1_md5_enc)
    .bind(&g.ha1_sha256_enc)
    .bind(&g.host)
    .bind(g.updated_at)
    .execute(&mut *conn)
    .await
    .map_err(|err| Error::on_conflict(err, || format!("the number or auth ID of gateway {}", g.name)))?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_gateway(db: &mut dyn Db, name: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM gateways WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_gateway(db: &mut dyn Db, name: &str) -> Result<Option<GatewayRow>> {
    let conn = raw(db);
    let sql = format!("SELECT {GW_COLUMNS} FROM gateways WHERE name = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(gw_from_row).transpose()
}

pub async fn list_gateways(db: &mut dyn Db) -> Result<Vec<GatewayRow>> {
    let conn = raw(db);
    let sql = format!("SELECT {GW_COLUMNS} FROM gateways ORDER BY name");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(gw_from_row).collect()
}

// ---- providers ----

pub async fn insert_provider(db: &mut dyn Db, p: &ProviderRow) -> Result<()> {
    let conn = raw(db);
    let sql = format!("INSERT INTO providers ({PROV_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&p.name)
        .bind(&p.registrar)
        .bind(&p.auth_id)
        .bind(&p.password_enc)
        .bind(p.password_score)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&mut *conn)
        .await
        .map_err(|err| Error::on_conflict(err, || format!("provider {}", p.name)))?;
    Ok(())
}

pub async fn update_provider(db: &mut dyn Db, p: &ProviderRow) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query(
        "UPDATE providers SET registrar = $2, auth_id = $3, password_enc = $4, password_score = $5, \
         updated_at = $6 WHERE name = $1",
    )
    .bind(&p.name)
    .bind(&p.registrar)
    .bind(&p.auth_id)
    .bind(&p.password_enc)
    .bind(p.password_score)
    .bind(p.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_provider(db: &mut dyn Db, name: &str) -> Result<bool> {
    let conn = raw(db);
    let done = sqlx::query("DELETE FROM providers WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_provider(db: &mut dyn Db, name: &str) -> Result<Option<ProviderRow>> {
    let conn = raw(db);
    let sql = format!("SELECT {PROV_COLUMNS} FROM providers WHERE name = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(prov_from_row).transpose()
}

pub async fn list_providers(db: &mut dyn Db) -> Result<Vec<ProviderRow>> {
    let conn = raw(db);
    let sql = format!("SELECT {PROV_COLUMNS} FROM providers ORDER BY name");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(prov_from_row).collect()
}
