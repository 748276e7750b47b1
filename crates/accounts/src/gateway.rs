//! PSTN gateway operations. A gateway registers to sipward like an extension (with its
//! auth ID on a virtual extension number), so it has HA1s too.

use policy::fields::{self, AccountName, AuthId, ExtensionNumber, Host};
use policy::{password, vendor};
use serde::Serialize;
use store::account::{self as q, GatewayRow};

use crate::registry::{Ha1Owner, Identity, Registry, gateway_aad};
use crate::{Error, Result};

const FIELD_NAME: &str = "gateway name";

#[derive(Clone, Debug, Default)]
pub struct NewGateway {
    pub vendor: String,
    pub number: String,
    pub auth_id: String,
    pub password: String,
    pub host: String,
}

#[derive(Clone, Debug, Default)]
pub struct GatewayChange {
    pub vendor: Option<String>,
    pub number: Option<String>,
    pub auth_id: Option<String>,
    pub password: Option<String>,
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayView {
    pub name: String,
    pub vendor: String,
    pub number: String,
    pub auth_id: String,
    pub host: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&GatewayRow> for GatewayView {
    fn from(r: &GatewayRow) -> Self {
        Self {
            name: r.name.clone(),
            vendor: r.vendor.clone(),
            number: r.number.clone(),
            auth_id: r.auth_id.clone(),
            host: r.host.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl Registry {
    pub async fn add_gateway(
        &self,
        name: &str,
        new: NewGateway,
    ) -> Result<(GatewayView, Vec<policy::Finding>)> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let vendor = vendor::find(new.vendor.trim())?;
        let number = ExtensionNumber::parse(new.number.trim())?;
        let auth_id = AuthId::parse(new.auth_id.trim())?;
        let pw = fields::parse_password("gateway password", &new.password)?;
        let host = Host::parse(new.host.trim())?;
        let subject = format!("gateway:{name}");
        let mut tx = self.store.begin().await?;
        if q::get_gateway(&mut tx, name.as_str()).await?.is_some() {
            return Err(Error::InUse {
                what: format!("gateway name {name}"),
                owner: subject,
            });
        }
        self.ensure_identity_free(&mut tx, Identity::Number, number.as_str(), None)
            .await?;
        self.ensure_identity_free(&mut tx, Identity::AuthId, auth_id.as_str(), None)
            .await?;
        let (ha1_md5_enc, ha1_sha256_enc) =
            self.sealed_ha1s(Ha1Owner::Gateway(name.as_str()), auth_id.as_str(), &pw);
        let now = self.now();
        let row = GatewayRow {
            password_enc: self.seal(&gateway_aad(name.as_str()), pw.expose()),
            password_score: i64::from(password::strength_score(pw.expose())),
            name: name.into_string(),
            vendor: vendor.id.clone(),
            number: number.into_string(),
            auth_id: auth_id.into_string(),
            ha1_md5_enc,
            ha1_sha256_enc,
            host: host.into_string(),
            created_at: now,
            updated_at: now,
        };
        q::insert_gateway(&mut tx, &row).await?;
        tx.commit().await?;
        let findings = self.audit_gateway_row(&row)?;
        Ok((GatewayView::from(&row), findings))
    }

    pub async fn update_gateway(
        &self,
        name: &str,
        change: GatewayChange,
    ) -> Result<(GatewayView, Vec<policy::Finding>)> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let subject = format!("gateway:{name}");
        let mut tx = self.store.begin().await?;
        let mut row = q::get_gateway(&mut tx, name.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("gateway {name}")))?;
        let old_number = row.number.clone();
        let mut pw = self.open_secret(&gateway_aad(&row.name), &row.password_enc)?;
        let mut rehash = false;
        if let Some(v) = change.vendor.as_deref() {
            row.vendor = vendor::find(v.trim())?.id.clone();
        }
        if let Some(n) = change.number.as_deref() {
            let n = ExtensionNumber::parse(n.trim())?;
            self.ensure_identity_free(&mut tx, Identity::Number, n.as_str(), Some(&subject))
                .await?;
            row.number = n.into_string();
        }
        if let Some(a) = change.auth_id.as_deref() {
            let a = AuthId::parse(a.trim())?;
            self.ensure_identity_free(&mut tx, Identity::AuthId, a.as_str(), Some(&subject))
                .await?;
            rehash |= a.as_str() != row.auth_id;
            row.auth_id = a.into_string();
        }
        if let Some(p) = change.password.as_deref() {
            pw = fields::parse_password("gateway password", p)?;
            row.password_enc = self.seal(&gateway_aad(&row.name), pw.expose());
            row.password_score = i64::from(password::strength_score(pw.expose()));
            rehash = true;
        }
        if let Some(h) = change.host.as_deref() {
            row.host = Host::parse(h.trim())?.into_string();
        }
        if rehash {
            (row.ha1_md5_enc, row.ha1_sha256_enc) =
                self.sealed_ha1s(Ha1Owner::Gateway(&row.name), &row.auth_id, &pw);
        }
        row.updated_at = self.now();
        // Its registrations were made with the old number or credentials: revoked.
        if row.number != old_number || rehash {
            store::bindings::delete_gateway_bindings(&mut tx, &old_number).await?;
        }
        q::update_gateway(&mut tx, &row).await?;
        tx.commit().await?;
        let findings = self.audit_gateway_row(&row)?;
        Ok((GatewayView::from(&row), findings))
    }

    pub async fn remove_gateway(&self, name: &str) -> Result<()> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let mut conn = self.store.conn().await?;
        self.ensure_unrouted(&mut conn, policy::trunk::TrunkKind::Gateway, name.as_str())
            .await?;
        if !q::delete_gateway(&mut conn, name.as_str()).await? {
            return Err(Error::not_found(format!("gateway {name}")));
        }
        Ok(())
    }

    pub async fn get_gateway(&self, name: &str) -> Result<GatewayView> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let mut conn = self.store.conn().await?;
        let row = q::get_gateway(&mut conn, name.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("gateway {name}")))?;
        Ok(GatewayView::from(&row))
    }

    pub async fn list_gateways(&self) -> Result<Vec<GatewayView>> {
        let mut conn = self.store.conn().await?;
        Ok(q::list_gateways(&mut conn)
            .await?
            .iter()
            .map(GatewayView::from)
            .collect())
    }
}
