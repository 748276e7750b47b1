//! Outbound routes (dial pattern -> gateway or provider) and DIDs (inbound number ->
//! extension), and the trunk set the server loads: every gateway and provider with its
//! password opened (sipward must answer their challenges), routes in order, DIDs.

use std::net::SocketAddr;
use std::time::Duration;

use policy::InvalidField;
use policy::fields::{AccountName, ExtensionNumber};
use policy::route::{Pattern, Rewrite};
use policy::secret::Secret;
use policy::trunk::{TrunkKind, normalize_did};
use serde::Serialize;
use store::Db;
use store::account as q;
use store::trunks::{self as tq, DidRow, RouteRow};

use crate::registry::{Registry, gateway_aad, provider_aad};
use crate::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct NewRoute {
    pub pattern: String,
    /// `NAME`, `gateway:NAME` or `provider:NAME`.
    pub trunk: String,
    pub strip: u32,
    pub prepend: String,
    /// Lower is tried first; None: after every existing route.
    pub priority: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteView {
    pub name: String,
    pub pattern: String,
    pub trunk_kind: String,
    pub trunk: String,
    pub strip: i64,
    pub prepend: String,
    pub priority: i64,
}

impl From<&RouteRow> for RouteView {
    fn from(r: &RouteRow) -> Self {
        Self {
            name: r.name.clone(),
            pattern: r.pattern.clone(),
            trunk_kind: r.trunk_kind.clone(),
            trunk: r.trunk.clone(),
            strip: r.strip,
            prepend: r.prepend.clone(),
            priority: r.priority,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DidView {
    pub did: String,
    pub number: String,
}

/// A gateway as the server uses it.
#[derive(Clone, Debug)]
pub struct GatewayTrunk {
    pub name: String,
    pub number: String,
    pub auth_id: String,
    pub password: Secret,
    /// `host[:port]` as configured.
    pub host: String,
}

/// A provider account as the server uses it.
#[derive(Clone, Debug)]
pub struct ProviderTrunk {
    pub name: String,
    /// `host[:port]` of the provider's registrar (and proxy).
    pub registrar: String,
    pub auth_id: String,
    pub password: Secret,
}

/// A route as the server uses it.
#[derive(Clone, Debug)]
pub struct LoadedRoute {
    pub name: String,
    pub pattern: Pattern,
    pub rewrite: Rewrite,
    pub kind: TrunkKind,
    pub trunk: String,
}

/// Everything the server needs about trunks, loaded at start and on every change.
#[derive(Clone, Debug, Default)]
pub struct TrunkSet {
    pub gateways: Vec<GatewayTrunk>,
    pub providers: Vec<ProviderTrunk>,
    pub routes: Vec<LoadedRoute>,
    /// DID (digits) -> extension number.
    pub dids: std::collections::HashMap<String, String>,
}

/// `host[:port]` to one address (port 5060 when none is given; IPv4 preferred).
pub async fn resolve(host: &str) -> Option<SocketAddr> {
    if let Ok(a) = host.parse::<SocketAddr>() {
        return Some(a);
    }
    let has_port = if host.starts_with('[') {
        host.contains("]:")
    } else {
        host.matches(':').count() == 1
    };
    let query = if has_port {
        host.to_owned()
    } else {
        format!("{host}:5060")
    };
    let lookup = tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host(query));
    let addrs: Vec<SocketAddr> = lookup.await.ok()?.ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

const FIELD_ROUTE: &str = "route name";

impl Registry {
    /// Resolves `NAME`, `gateway:NAME` or `provider:NAME` to an existing trunk.
    async fn resolve_trunk(&self, conn: &mut dyn Db, text: &str) -> Result<(TrunkKind, String)> {
        let text = text.trim();
        let (want, name) = match text.split_once(':') {
            Some(("gateway", n)) => (Some(TrunkKind::Gateway), n),
            Some(("provider", n)) => (Some(TrunkKind::Provider), n),
            _ => (None, text),
        };
        let name = AccountName::parse("trunk", name)?.into_string();
        let gw = want != Some(TrunkKind::Provider) && q::get_gateway(conn, &name).await?.is_some();
        let pr = want != Some(TrunkKind::Gateway) && q::get_provider(conn, &name).await?.is_some();
        match (gw, pr) {
            (true, false) => Ok((TrunkKind::Gateway, name)),
            (false, true) => Ok((TrunkKind::Provider, name)),
            (true, true) => Err(InvalidField::new(
                "trunk",
                format!("both a gateway and a provider are named {name}: say gateway:{name} or provider:{name}"),
            )
            .into()),
            (false, false) => Err(Error::not_found(format!("trunk {name} (no gateway or provider has that name)"))),
        }
    }

    pub async fn add_route(&self, name: &str, new: NewRoute) -> Result<RouteView> {
        let name = AccountName::parse(FIELD_ROUTE, name.trim())?.into_string();
        let pattern =
            Pattern::parse(new.pattern.trim()).map_err(|r| InvalidField::new("pattern", r))?;
        Rewrite::parse(new.strip, new.prepend.trim())
            .map_err(|r| InvalidField::new("rewrite", r))?;
        let mut tx = self.store.begin().await?;
        if tq::get_route(&mut tx, &name).await?.is_some() {
            return Err(Error::InUse {
                what: format!("route name {name}"),
                owner: format!("route:{name}"),
            });
        }
        let (kind, trunk) = self.resolve_trunk(&mut tx, &new.trunk).await?;
        let priority = match new.priority {
            Some(p) => p,
            None => tq::routes(&mut tx)
                .await?
                .last()
                .map_or(10, |r| r.priority.saturating_add(10)),
        };
        let row = RouteRow {
            name,
            pattern: pattern.as_str().to_owned(),
            trunk_kind: kind.as_str().to_owned(),
            trunk,
            strip: i64::from(new.strip),
            prepend: new.prepend.trim().to_owned(),
            priority,
            created_at: self.now(),
        };
        tq::insert_route(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(RouteView::from(&row))
    }

    /// Replaces a route's pattern, trunk and rewrite (the same checks as
    /// [`Registry::add_route`]) in one transaction; `priority: None` keeps its place.
    pub async fn update_route(&self, name: &str, new: NewRoute) -> Result<RouteView> {
        let name = AccountName::parse(FIELD_ROUTE, name.trim())?.into_string();
        let pattern =
            Pattern::parse(new.pattern.trim()).map_err(|r| InvalidField::new("pattern", r))?;
        Rewrite::parse(new.strip, new.prepend.trim())
            .map_err(|r| InvalidField::new("rewrite", r))?;
        let mut tx = self.store.begin().await?;
        let Some(old) = tq::get_route(&mut tx, &name).await? else {
            return Err(Error::not_found(format!("route {name}")));
        };
        let (kind, trunk) = self.resolve_trunk(&mut tx, &new.trunk).await?;
        let row = RouteRow {
            name,
            pattern: pattern.as_str().to_owned(),
            trunk_kind: kind.as_str().to_owned(),
            trunk,
            strip: i64::from(new.strip),
            prepend: new.prepend.trim().to_owned(),
            priority: new.priority.unwrap_or(old.priority),
            created_at: old.created_at,
        };
        tq::delete_route(&mut tx, &row.name).await?;
        tq::insert_route(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(RouteView::from(&row))
    }

    /// A route as stored (for an edit form).
    pub async fn get_route(&self, name: &str) -> Result<RouteView> {
        let name = AccountName::parse(FIELD_ROUTE, name.trim())?;
        let mut conn = self.store.conn().await?;
        tq::get_route(&mut conn, name.as_str())
            .await?
            .as_ref()
            .map(RouteView::from)
            .ok_or_else(|| Error::not_found(format!("route {name}")))
    }

    pub async fn remove_route(&self, name: &str) -> Result<()> {
        let name = AccountName::parse(FIELD_ROUTE, name.trim())?;
        let mut conn = self.store.conn().await?;
        if !tq::delete_route(&mut conn, name.as_str()).await? {
            return Err(Error::not_found(format!("route {name}")));
        }
        Ok(())
    }

    pub async fn list_routes(&self) -> Result<Vec<RouteView>> {
        let mut conn = self.store.conn().await?;
        Ok(tq::routes(&mut conn)
            .await?
            .iter()
            .map(RouteView::from)
            .collect())
    }

    pub async fn add_did(&self, did: &str, number: &str) -> Result<DidView> {
        let d = normalize_did(did).ok_or_else(|| {
            InvalidField::new("DID", "a DID is 1 to 24 digits, optionally after +")
        })?;
        let number = ExtensionNumber::parse(number.trim())?.into_string();
        let mut tx = self.store.begin().await?;
        if q::get_extension(&mut tx, &number).await?.is_none() {
            return Err(Error::not_found(format!("extension {number}")));
        }
        if let Some(existing) = tq::get_did(&mut tx, &d).await? {
            return Err(Error::InUse {
                what: format!("DID {d}"),
                owner: format!("ext:{}", existing.number),
            });
        }
        let row = DidRow {
            did: d,
            number,
            created_at: self.now(),
        };
        tq::insert_did(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(DidView {
            did: row.did,
            number: row.number,
        })
    }

    /// Points a DID at another extension (the same checks as [`Registry::add_did`]), in
    /// one transaction.
    pub async fn update_did(&self, did: &str, number: &str) -> Result<DidView> {
        let d = normalize_did(did).ok_or_else(|| {
            InvalidField::new("DID", "a DID is 1 to 24 digits, optionally after +")
        })?;
        let number = ExtensionNumber::parse(number.trim())?.into_string();
        let mut tx = self.store.begin().await?;
        let Some(old) = tq::get_did(&mut tx, &d).await? else {
            return Err(Error::not_found(format!("DID {d}")));
        };
        if q::get_extension(&mut tx, &number).await?.is_none() {
            return Err(Error::not_found(format!("extension {number}")));
        }
        let row = DidRow {
            did: d,
            number,
            created_at: old.created_at,
        };
        tq::delete_did(&mut tx, &row.did).await?;
        tq::insert_did(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(DidView {
            did: row.did,
            number: row.number,
        })
    }

    pub async fn remove_did(&self, did: &str) -> Result<()> {
        let d = normalize_did(did).ok_or_else(|| {
            InvalidField::new("DID", "a DID is 1 to 24 digits, optionally after +")
        })?;
        let mut conn = self.store.conn().await?;
        if !tq::delete_did(&mut conn, &d).await? {
            return Err(Error::not_found(format!("DID {d}")));
        }
        Ok(())
    }

    pub async fn list_dids(&self) -> Result<Vec<DidView>> {
        let mut conn = self.store.conn().await?;
        Ok(tq::dids(&mut conn)
            .await?
            .into_iter()
            .map(|r| DidView {
                did: r.did,
                number: r.number,
            })
            .collect())
    }

    /// Refuses to remove a trunk that routes still send calls to.
    pub(crate) async fn ensure_unrouted(
        &self,
        conn: &mut dyn Db,
        kind: TrunkKind,
        name: &str,
    ) -> Result<()> {
        let routes = tq::routes_to(conn, kind.as_str(), name).await?;
        if routes.is_empty() {
            return Ok(());
        }
        Err(Error::InUse {
            what: format!("{} {name}", kind.as_str()),
            owner: format!("route {} (remove the route first)", routes.join(", route ")),
        })
    }

    /// The trunk set for the server, passwords opened.
    pub async fn trunk_set(&self) -> Result<TrunkSet> {
        let mut conn = self.store.conn().await?;
        let gateways = q::list_gateways(&mut conn)
            .await?
            .into_iter()
            .map(|g| {
                Ok(GatewayTrunk {
                    password: self.open_secret(&gateway_aad(&g.name), &g.password_enc)?,
                    name: g.name,
                    number: g.number,
                    auth_id: g.auth_id,
                    host: g.host,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let providers = q::list_providers(&mut conn)
            .await?
            .into_iter()
            .map(|p| {
                Ok(ProviderTrunk {
                    password: self.open_secret(&provider_aad(&p.name), &p.password_enc)?,
                    name: p.name,
                    registrar: p.registrar,
                    auth_id: p.auth_id,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Rows were validated when written; one that no longer parses is skipped, never
        // guessed at.
        let routes = tq::routes(&mut conn)
            .await?
            .into_iter()
            .filter_map(|r| {
                Some(LoadedRoute {
                    pattern: Pattern::parse(&r.pattern).ok()?,
                    rewrite: Rewrite::parse(u32::try_from(r.strip).ok()?, &r.prepend).ok()?,
                    kind: TrunkKind::parse(&r.trunk_kind)?,
                    name: r.name,
                    trunk: r.trunk,
                })
            })
            .collect();
        let dids = tq::dids(&mut conn)
            .await?
            .into_iter()
            .map(|d| (d.did, d.number))
            .collect();
        Ok(TrunkSet {
            gateways,
            providers,
            routes,
            dids,
        })
    }
}

impl Registry {
    /// The trunk calls the running server last wrote, and when (0: no server runs).
    pub async fn active_calls(&self) -> Result<(Vec<tq::ActiveCallRow>, i64)> {
        let mut conn = self.store.conn().await?;
        Ok(tq::active_calls(&mut conn).await?)
    }

    /// What the running server last saw of a provider's registration.
    pub async fn provider_status(&self, name: &str) -> Result<Option<tq::ProviderStatusRow>> {
        let mut conn = self.store.conn().await?;
        Ok(tq::provider_status(&mut conn, name.trim()).await?)
    }
}
