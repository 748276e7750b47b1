//! VoIP provider accounts: sipward registers to the provider, so the password is kept
//! sealed (it must be sent) and no HA1 is stored.

use policy::fields::{self, AccountName, AuthId, Host};
use policy::password;
use serde::Serialize;
use store::account::{self as q, ProviderRow};

use crate::registry::{Registry, provider_aad};
use crate::{Error, Result};

const FIELD_NAME: &str = "provider name";

#[derive(Clone, Debug, Default)]
pub struct NewProvider {
    pub registrar: String,
    pub auth_id: String,
    pub password: String,
}

#[derive(Clone, Debug, Default)]
pub struct ProviderChange {
    pub registrar: Option<String>,
    pub auth_id: Option<String>,
    pub password: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderView {
    pub name: String,
    pub registrar: String,
    pub auth_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&ProviderRow> for ProviderView {
    fn from(r: &ProviderRow) -> Self {
        Self {
            name: r.name.clone(),
            registrar: r.registrar.clone(),
            auth_id: r.auth_id.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl Registry {
    pub async fn add_provider(
        &self,
        name: &str,
        new: NewProvider,
    ) -> Result<(ProviderView, Vec<policy::Finding>)> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let registrar = Host::parse(new.registrar.trim())?;
        let auth_id = AuthId::parse(new.auth_id.trim())?;
        let pw = fields::parse_password("provider password", &new.password)?;
        let now = self.now();
        let row = ProviderRow {
            password_enc: self.seal(&provider_aad(name.as_str()), pw.expose()),
            password_score: i64::from(password::strength_score(pw.expose())),
            name: name.into_string(),
            registrar: registrar.into_string(),
            auth_id: auth_id.into_string(),
            created_at: now,
            updated_at: now,
        };
        let mut conn = self.store.conn().await?;
        q::insert_provider(&mut conn, &row)
            .await
            .map_err(|e| match e {
                store::Error::Conflict { .. } => Error::InUse {
                    what: format!("provider name {}", row.name),
                    owner: format!("provider:{}", row.name),
                },
                other => other.into(),
            })?;
        let findings = self.audit_provider_row(&row)?;
        Ok((ProviderView::from(&row), findings))
    }

    pub async fn update_provider(
        &self,
        name: &str,
        change: ProviderChange,
    ) -> Result<(ProviderView, Vec<policy::Finding>)> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let mut tx = self.store.begin().await?;
        let mut row = q::get_provider(&mut tx, name.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("provider {name}")))?;
        if let Some(r) = change.registrar.as_deref() {
            row.registrar = Host::parse(r.trim())?.into_string();
        }
        if let Some(a) = change.auth_id.as_deref() {
            row.auth_id = AuthId::parse(a.trim())?.into_string();
        }
        if let Some(p) = change.password.as_deref() {
            let pw = fields::parse_password("provider password", p)?;
            row.password_enc = self.seal(&provider_aad(&row.name), pw.expose());
            row.password_score = i64::from(password::strength_score(pw.expose()));
        }
        row.updated_at = self.now();
        q::update_provider(&mut tx, &row).await?;
        tx.commit().await?;
        let findings = self.audit_provider_row(&row)?;
        Ok((ProviderView::from(&row), findings))
    }

    pub async fn remove_provider(&self, name: &str) -> Result<()> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let mut conn = self.store.conn().await?;
        self.ensure_unrouted(&mut conn, policy::trunk::TrunkKind::Provider, name.as_str())
            .await?;
        if !q::delete_provider(&mut conn, name.as_str()).await? {
            return Err(Error::not_found(format!("provider {name}")));
        }
        Ok(())
    }

    pub async fn get_provider(&self, name: &str) -> Result<ProviderView> {
        let name = AccountName::parse(FIELD_NAME, name.trim())?;
        let mut conn = self.store.conn().await?;
        let row = q::get_provider(&mut conn, name.as_str())
            .await?
            .ok_or_else(|| Error::not_found(format!("provider {name}")))?;
        Ok(ProviderView::from(&row))
    }

    pub async fn list_providers(&self) -> Result<Vec<ProviderView>> {
        let mut conn = self.store.conn().await?;
        Ok(q::list_providers(&mut conn)
            .await?
            .iter()
            .map(ProviderView::from)
            .collect())
    }
}
