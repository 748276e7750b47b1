//! Gateways, providers, routes and DIDs edited from the console and the API. Both call
//! the same `accounts` functions as `sipward gateway|provider|route|did`, so a value the
//! CLI refuses is refused here with the same sentence; every change is appended to the
//! audit log. Values arrive as text fields (a form, or a JSON object of strings and
//! numbers), one table of fields per kind drives the forms, the checks and the OpenAPI
//! schemas.

use std::collections::BTreeMap;

use accounts::audit_log::{Change, Setting};
use accounts::gateway::{GatewayChange, NewGateway};
use accounts::provider::{NewProvider, ProviderChange};
use accounts::trunks::NewRoute;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::context;
use policy::{Finding, InvalidField};
use serde_json::{Value, json};

use crate::findings::Plain;
use crate::web::{Admin, AdminForm, Web, ser};

/// What can be edited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Gateway,
    Provider,
    Route,
    Did,
}

/// How a field is typed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Text,
    /// Never shown back; blank on an edit form means "unchanged".
    Secret,
    Number,
}

/// One field of an item.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub input: Input,
    /// Needed to add one (an edit may leave any field out).
    pub required: bool,
    pub hint: &'static str,
}

const fn field(
    name: &'static str,
    label: &'static str,
    input: Input,
    required: bool,
    hint: &'static str,
) -> Field {
    Field {
        name,
        label,
        input,
        required,
        hint,
    }
}

const GATEWAY: &[Field] = &[
    field(
        "name",
        "Name",
        Input::Text,
        true,
        "letters, digits, dot, dash",
    ),
    field(
        "vendor",
        "Vendor",
        Input::Text,
        true,
        "generic, or a known vendor (its factory logins are checked)",
    ),
    field(
        "number",
        "Virtual extension number",
        Input::Text,
        true,
        "the number it registers on",
    ),
    field(
        "auth_id",
        "Auth ID",
        Input::Text,
        true,
        "its SIP login name",
    ),
    field(
        "password",
        "Password",
        Input::Secret,
        true,
        "its SIP password",
    ),
    field(
        "host",
        "Host",
        Input::Text,
        true,
        "address or name, optionally :port",
    ),
];

const PROVIDER: &[Field] = &[
    field(
        "name",
        "Name",
        Input::Text,
        true,
        "letters, digits, dot, dash",
    ),
    field(
        "registrar",
        "Registrar",
        Input::Text,
        true,
        "the provider's host, optionally :port",
    ),
    field(
        "auth_id",
        "Auth ID",
        Input::Text,
        true,
        "the login the provider gave you",
    ),
    field(
        "password",
        "Password",
        Input::Secret,
        true,
        "the password the provider gave you",
    ),
];

const ROUTE: &[Field] = &[
    field(
        "name",
        "Name",
        Input::Text,
        true,
        "letters, digits, dot, dash",
    ),
    field(
        "pattern",
        "Dial pattern",
        Input::Text,
        true,
        "for example 0[1-9]X. or +44X.",
    ),
    field(
        "trunk",
        "Trunk",
        Input::Text,
        true,
        "a gateway or provider name (gateway:NAME or provider:NAME when both exist)",
    ),
    field(
        "strip",
        "Digits to strip",
        Input::Number,
        false,
        "from the front, before prepending (default 0)",
    ),
    field(
        "prepend",
        "Prepend",
        Input::Text,
        false,
        "digits put in front (default none)",
    ),
    field(
        "priority",
        "Priority",
        Input::Number,
        false,
        "lower is tried first (default: after the last route)",
    ),
];

const DID: &[Field] = &[
    field(
        "did",
        "DID",
        Input::Text,
        true,
        "the number callers dial, 1 to 24 digits, optionally after +",
    ),
    field(
        "number",
        "Extension",
        Input::Text,
        true,
        "the extension it rings",
    ),
];

impl Item {
    pub const ALL: [Item; 4] = [Item::Gateway, Item::Provider, Item::Route, Item::Did];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// The audit log's name for this kind of item.
    pub fn setting(self) -> Setting {
        match self {
            Item::Gateway => Setting::Gateway,
            Item::Provider => Setting::Provider,
            Item::Route => Setting::Route,
            Item::Did => Setting::Did,
        }
    }

    /// The word in paths and anchors.
    pub fn as_str(self) -> &'static str {
        match self {
            Item::Gateway => "gateway",
            Item::Provider => "provider",
            Item::Route => "route",
            Item::Did => "did",
        }
    }

    /// The API collection: `/api/v1/gateways`.
    pub fn plural(self) -> &'static str {
        match self {
            Item::Gateway => "gateways",
            Item::Provider => "providers",
            Item::Route => "routes",
            Item::Did => "dids",
        }
    }

    /// "a PSTN gateway", for headings.
    pub fn noun(self) -> &'static str {
        match self {
            Item::Gateway => "PSTN gateway",
            Item::Provider => "VoIP provider",
            Item::Route => "outbound route",
            Item::Did => "DID",
        }
    }

    pub fn fields(self) -> &'static [Field] {
        match self {
            Item::Gateway => GATEWAY,
            Item::Provider => PROVIDER,
            Item::Route => ROUTE,
            Item::Did => DID,
        }
    }

    /// The field that names one (its key).
    pub fn key(self) -> &'static str {
        self.fields()[0].name
    }

    /// The JSON schema of an add (`edit: false`: the required fields) or an edit body
    /// (nothing required; the key is in the path).
    pub fn schema(self, edit: bool) -> Value {
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        for f in self.fields() {
            if edit && f.name == self.key() {
                continue;
            }
            let ty = if f.input == Input::Number {
                json!({ "type": "integer", "minimum": 0, "description": f.hint })
            } else {
                json!({ "type": "string", "maxLength": MAX_VALUE, "description": f.hint })
            };
            props.insert(f.name.into(), ty);
            if f.required && !edit {
                required.push(f.name);
            }
        }
        json!({ "type": "object", "additionalProperties": false, "required": required,
                "properties": props })
    }
}

/// The longest value looked at; longer input is refused before any parsing.
const MAX_VALUE: usize = 1000;

/// The values given, by field name. On an edit an absent field (or a blank secret)
/// stays as it is.
pub type Values = BTreeMap<String, String>;

/// What went wrong with the values, as a sentence (the same as the CLI's where the
/// `accounts` function refused them).
#[derive(Debug)]
pub enum Refused {
    Input(String),
    Accounts(accounts::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Input(s) => f.write_str(s),
            Refused::Accounts(e) => write!(f, "{e}"),
        }
    }
}

impl From<accounts::Error> for Refused {
    fn from(e: accounts::Error) -> Self {
        Refused::Accounts(e)
    }
}

impl From<InvalidField> for Refused {
    fn from(e: InvalidField) -> Self {
        Refused::Accounts(e.into())
    }
}

/// The values of a form for `item`: its known fields only, trimmed (secrets as typed),
/// blank ones left out.
pub fn from_form(item: Item, form: &[(String, String)]) -> Values {
    let mut out = Values::new();
    for f in item.fields() {
        if let Some((_, v)) = form.iter().find(|(k, _)| k == f.name) {
            let v = if f.input == Input::Secret {
                v.clone()
            } else {
                v.trim().to_owned()
            };
            if !v.is_empty() {
                out.insert(f.name.to_owned(), v);
            }
        }
    }
    out
}

/// The values of a JSON object for `item`: unknown fields, wrong types and overlong
/// text are refused with a sentence.
pub fn from_json(item: Item, body: &Value, edit: bool) -> Result<Values, Refused> {
    let Some(obj) = body.as_object() else {
        return Err(Refused::Input("the body must be a JSON object".into()));
    };
    let mut out = Values::new();
    for (k, v) in obj {
        let Some(f) = item
            .fields()
            .iter()
            .find(|f| f.name == k && !(edit && f.name == item.key()))
        else {
            return Err(Refused::Input(format!(
                "unknown field {:?} for a {}",
                k.chars().take(40).collect::<String>(),
                item.noun()
            )));
        };
        let text = match (f.input, v) {
            (Input::Number, Value::Number(n)) if n.as_u64().is_some() => n.to_string(),
            (Input::Number, _) => {
                return Err(Refused::Input(format!(
                    "{} must be a whole number of at least 0",
                    f.name
                )));
            }
            (_, Value::String(s)) => s.clone(),
            _ => return Err(Refused::Input(format!("{} must be a string", f.name))),
        };
        out.insert(k.clone(), text);
    }
    Ok(out)
}

fn checked(values: &Values) -> Result<(), Refused> {
    match values.iter().find(|(_, v)| v.len() > MAX_VALUE) {
        Some((k, _)) => Err(Refused::Input(format!(
            "{k} is longer than {MAX_VALUE} characters"
        ))),
        None => Ok(()),
    }
}

fn required<'a>(item: Item, values: &'a Values, name: &'static str) -> Result<&'a str, Refused> {
    values.get(name).map(String::as_str).ok_or_else(|| {
        let label = item
            .fields()
            .iter()
            .find(|f| f.name == name)
            .map_or(name, |f| f.label);
        Refused::Input(format!("{label} is required to add a {}", item.noun()))
    })
}

fn number<T: std::str::FromStr>(values: &Values, name: &'static str) -> Result<Option<T>, Refused> {
    values
        .get(name)
        .map(|v| {
            v.parse::<T>().map_err(|_| {
                Refused::Accounts(
                    InvalidField::new(name, format!("{v:?} is not a whole number of at least 0"))
                        .into(),
                )
            })
        })
        .transpose()
}

/// The subject of an item in the audit log and findings: `gateway:NAME`.
pub fn subject(item: Item, id: &str) -> String {
    item.setting().subject(id)
}

/// What a change did: the item as it is now and its findings (accounts only).
#[derive(Debug)]
pub struct Done {
    pub id: String,
    pub view: Value,
    pub findings: Vec<Finding>,
}

fn done<T: serde::Serialize>(id: String, view: &T, findings: Vec<Finding>) -> Done {
    Done {
        id,
        view: serde_json::to_value(view).unwrap_or(Value::Null),
        findings,
    }
}

/// Adds an item through the same `accounts` call as the CLI, and logs it.
pub async fn add(web: &Web, actor: &str, item: Item, values: &Values) -> Result<Done, Refused> {
    checked(values)?;
    let reg = &web.registry;
    let key = required(item, values, item.key())?.to_owned();
    let text = |n: &str| values.get(n).cloned().unwrap_or_default();
    let out = match item {
        Item::Gateway => {
            for f in GATEWAY {
                required(item, values, f.name)?;
            }
            let new = NewGateway {
                vendor: text("vendor"),
                number: text("number"),
                auth_id: text("auth_id"),
                password: text("password"),
                host: text("host"),
            };
            let (v, f) = reg.add_gateway(&key, new).await?;
            done(v.name.clone(), &v, f)
        }
        Item::Provider => {
            for f in PROVIDER {
                required(item, values, f.name)?;
            }
            let new = NewProvider {
                registrar: text("registrar"),
                auth_id: text("auth_id"),
                password: text("password"),
            };
            let (v, f) = reg.add_provider(&key, new).await?;
            done(v.name.clone(), &v, f)
        }
        Item::Route => {
            let new = NewRoute {
                pattern: required(item, values, "pattern")?.to_owned(),
                trunk: required(item, values, "trunk")?.to_owned(),
                strip: number(values, "strip")?.unwrap_or(0),
                prepend: text("prepend"),
                priority: number(values, "priority")?,
            };
            let v = reg.add_route(&key, new).await?;
            done(v.name.clone(), &v, Vec::new())
        }
        Item::Did => {
            let v = reg.add_did(&key, required(item, values, "number")?).await?;
            done(v.did.clone(), &v, Vec::new())
        }
    };
    let detail = changed_fields(values);
    web.log_setting(actor, item.setting(), Change::Added, &out.id, &detail)
        .await;
    Ok(out)
}

/// Changes the fields given (others stay), through the same `accounts` call as the
/// CLI, and logs which fields changed (never their values).
pub async fn update(
    web: &Web,
    actor: &str,
    item: Item,
    id: &str,
    values: &Values,
) -> Result<Done, Refused> {
    checked(values)?;
    let reg = &web.registry;
    let given = |n: &str| values.get(n).cloned();
    let out = match item {
        Item::Gateway => {
            let change = GatewayChange {
                vendor: given("vendor"),
                number: given("number"),
                auth_id: given("auth_id"),
                password: given("password"),
                host: given("host"),
            };
            let (v, f) = reg.update_gateway(id, change).await?;
            done(v.name.clone(), &v, f)
        }
        Item::Provider => {
            let change = ProviderChange {
                registrar: given("registrar"),
                auth_id: given("auth_id"),
                password: given("password"),
            };
            let (v, f) = reg.update_provider(id, change).await?;
            done(v.name.clone(), &v, f)
        }
        Item::Route => {
            let old = reg.get_route(id).await?;
            let strip = match number::<u32>(values, "strip")? {
                Some(s) => s,
                None => u32::try_from(old.strip).unwrap_or(0),
            };
            let trunk =
                given("trunk").unwrap_or_else(|| format!("{}:{}", old.trunk_kind, old.trunk));
            let new = NewRoute {
                pattern: given("pattern").unwrap_or(old.pattern),
                trunk,
                strip,
                prepend: given("prepend").unwrap_or(old.prepend),
                priority: number(values, "priority")?,
            };
            let v = reg.update_route(id, new).await?;
            done(v.name.clone(), &v, Vec::new())
        }
        Item::Did => {
            let Some(number) = given("number") else {
                return Err(Refused::Input(
                    "Extension is required: it is the only thing a DID has to change".into(),
                ));
            };
            let v = reg.update_did(id, &number).await?;
            done(v.did.clone(), &v, Vec::new())
        }
    };
    web.log_setting(
        actor,
        item.setting(),
        Change::Updated,
        &out.id,
        &changed_fields(values),
    )
    .await;
    Ok(out)
}

/// Removes an item through the same `accounts` call as the CLI, and logs it.
pub async fn remove(web: &Web, actor: &str, item: Item, id: &str) -> Result<(), Refused> {
    let reg = &web.registry;
    match item {
        Item::Gateway => reg.remove_gateway(id).await?,
        Item::Provider => reg.remove_provider(id).await?,
        Item::Route => reg.remove_route(id).await?,
        Item::Did => reg.remove_did(id).await?,
    }
    let id = match item {
        Item::Did => policy::trunk::normalize_did(id).unwrap_or_default(),
        _ => id.trim().to_owned(),
    };
    web.log_setting(actor, item.setting(), Change::Removed, &id, "")
        .await;
    Ok(())
}

/// The names of the fields given (values are not logged: one may be a password).
fn changed_fields(values: &Values) -> String {
    values.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Every item of a kind as the list shows it (views as JSON objects).
pub async fn list(web: &Web, item: Item) -> accounts::Result<Vec<Value>> {
    fn values<T: serde::Serialize>(views: Vec<T>) -> Vec<Value> {
        views
            .iter()
            .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
            .collect()
    }
    let reg = &web.registry;
    Ok(match item {
        Item::Gateway => values(reg.list_gateways().await?),
        Item::Provider => values(reg.list_providers().await?),
        Item::Route => values(reg.list_routes().await?),
        Item::Did => values(reg.list_dids().await?),
    })
}

/// One item as stored (for its edit form), or not found.
pub async fn find(web: &Web, item: Item, id: &str) -> accounts::Result<Value> {
    let reg = &web.registry;
    let v = match item {
        Item::Gateway => serde_json::to_value(reg.get_gateway(id).await?),
        Item::Provider => serde_json::to_value(reg.get_provider(id).await?),
        Item::Route => serde_json::to_value(reg.get_route(id).await?),
        Item::Did => {
            let d = policy::trunk::normalize_did(id).unwrap_or_default();
            let found = reg.list_dids().await?.into_iter().find(|x| x.did == d);
            match found {
                Some(x) => serde_json::to_value(x),
                None => {
                    return Err(accounts::Error::NotFound {
                        what: format!("DID {}", id.trim()),
                    });
                }
            }
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

// The console's pages: the list of all four kinds, an add form and an edit form per
// kind (one template each, driven by the field tables above).

pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/trunks", get(page))
        .route("/trunks/new/{item}", get(new_form).post(create))
        .route("/trunks/edit/{item}/{id}", get(edit_form).post(save))
        .route("/trunks/remove/{item}/{id}", post(delete))
        .with_state(web)
        .layer(axum::middleware::map_response(crate::web::security_headers))
}

fn unreadable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the data dir cannot be read\n",
    )
        .into_response()
}

fn no_such(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}\n")).into_response()
}

/// The fields of a form for a template: name, label, type, hint, value.
fn form_fields(item: Item, values: &Values, edit: bool) -> Vec<minijinja::Value> {
    item.fields()
        .iter()
        .filter(|f| !(edit && f.name == item.key()))
        .map(|f| {
            let value = if f.input == Input::Secret {
                String::new()
            } else {
                values.get(f.name).cloned().unwrap_or_default()
            };
            context! {
                name => f.name, label => f.label, hint => f.hint, value,
                kind => match f.input { Input::Text => "text", Input::Secret => "password", Input::Number => "number" },
                required => f.required && !(edit && f.input == Input::Secret),
            }
        })
        .collect()
}

/// Text values of a stored item (for its edit form).
fn values_of(item: Item, view: &Value) -> Values {
    let mut out = Values::new();
    for f in item.fields() {
        let v = match view.get(f.name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => continue,
        };
        out.insert(f.name.to_owned(), v);
    }
    if item == Item::Route
        && let (Some(k), Some(t)) = (view["trunk_kind"].as_str(), view["trunk"].as_str())
    {
        out.insert("trunk".into(), format!("{k}:{t}"));
    }
    out
}

async fn page(State(web): State<Web>, Admin(s): Admin) -> Response {
    let Ok(findings) = web.findings().await else {
        return unreadable();
    };
    let by_subject = accounts::findings::weak_by_subject(&findings);
    let mut sections = Vec::new();
    for item in Item::ALL {
        let Ok(rows) = list(&web, item).await else {
            return unreadable();
        };
        let rows: Vec<minijinja::Value> = rows
            .iter()
            .map(|v| {
                let id = v[item.key()].as_str().unwrap_or("").to_owned();
                let subj = subject(item, &id);
                let fs = by_subject.get(subj.as_str()).cloned().unwrap_or_default();
                let plain: Vec<Plain> = fs.iter().map(|f| Plain::of(f)).collect();
                context! {
                    id => id.clone(), anchor => subj.replace([':', '+'], "-"), view => ser(v),
                    weak => !plain.is_empty(),
                    reasons => plain.iter().map(Plain::sentence).collect::<Vec<_>>(),
                    findings => ser(&plain),
                }
            })
            .collect();
        sections.push(context! { item => item.as_str(), noun => item.noun(), rows });
    }
    web.render(
        StatusCode::OK,
        "trunks.html",
        context! { title => "Trunks, routes and DIDs", admin => s.admin, csrf => s.csrf, sections },
    )
}

fn form_page(
    web: &Web,
    s: &crate::web::Session,
    item: Item,
    id: Option<&str>,
    values: &Values,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let title = match id {
        Some(id) => format!("{} {id}", item.noun()),
        None => format!("Add a {}", item.noun()),
    };
    web.render(
        status,
        "trunk_form.html",
        context! { title, admin => s.admin.clone(), csrf => s.csrf.clone(), item => item.as_str(),
        noun => item.noun(), id, fields => form_fields(item, values, id.is_some()), error },
    )
}

async fn new_form(State(web): State<Web>, Admin(s): Admin, Path(item): Path<String>) -> Response {
    let Some(item) = Item::parse(&item) else {
        return no_such("kind");
    };
    form_page(&web, &s, item, None, &Values::new(), StatusCode::OK, None)
}

async fn create(
    State(web): State<Web>,
    Path(item): Path<String>,
    AdminForm { session: s, form }: AdminForm,
) -> Response {
    let Some(item) = Item::parse(&item) else {
        return no_such("kind");
    };
    let values = from_form(item, &form);
    match add(&web, &s.actor(), item, &values).await {
        Ok(d) => Redirect::to(&format!(
            "/trunks#{}",
            subject(item, &d.id).replace([':', '+'], "-")
        ))
        .into_response(),
        Err(e) => form_page(
            &web,
            &s,
            item,
            None,
            &values,
            StatusCode::BAD_REQUEST,
            Some(e.to_string()),
        ),
    }
}

async fn edit_form(
    State(web): State<Web>,
    Admin(s): Admin,
    Path((item, id)): Path<(String, String)>,
) -> Response {
    let Some(item) = Item::parse(&item) else {
        return no_such("kind");
    };
    match find(&web, item, &id).await {
        Ok(v) => form_page(
            &web,
            &s,
            item,
            Some(&id),
            &values_of(item, &v),
            StatusCode::OK,
            None,
        ),
        Err(accounts::Error::NotFound { .. } | accounts::Error::Invalid(_)) => no_such(item.noun()),
        Err(_) => unreadable(),
    }
}

async fn save(
    State(web): State<Web>,
    Path((item, id)): Path<(String, String)>,
    AdminForm { session: s, form }: AdminForm,
) -> Response {
    let Some(item) = Item::parse(&item) else {
        return no_such("kind");
    };
    let mut values = from_form(item, &form);
    // A route's form shows every field: a prepend emptied there is cleared.
    if item == Item::Route
        && crate::web::field(&form, "prepend").is_some_and(|p| p.trim().is_empty())
    {
        values.insert("prepend".into(), String::new());
    }
    match update(&web, &s.actor(), item, &id, &values).await {
        Ok(d) => Redirect::to(&format!(
            "/trunks#{}",
            subject(item, &d.id).replace([':', '+'], "-")
        ))
        .into_response(),
        Err(Refused::Accounts(accounts::Error::NotFound { what }))
            if what.starts_with(item.as_str()) || what.starts_with("DID") =>
        {
            no_such(item.noun())
        }
        Err(e) => {
            // The form again, with what was typed (secrets never echoed) over what is stored.
            let mut shown = match find(&web, item, &id).await {
                Ok(v) => values_of(item, &v),
                Err(_) => Values::new(),
            };
            shown.extend(values);
            form_page(
                &web,
                &s,
                item,
                Some(&id),
                &shown,
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
            )
        }
    }
}

async fn delete(
    State(web): State<Web>,
    Path((item, id)): Path<(String, String)>,
    AdminForm { session: s, .. }: AdminForm,
) -> Response {
    let Some(item) = Item::parse(&item) else {
        return no_such("kind");
    };
    match remove(&web, &s.actor(), item, &id).await {
        Ok(()) => Redirect::to("/trunks").into_response(),
        Err(Refused::Accounts(accounts::Error::NotFound { .. })) => no_such(item.noun()),
        Err(e) => match find(&web, item, &id).await {
            Ok(v) => form_page(
                &web,
                &s,
                item,
                Some(&id),
                &values_of(item, &v),
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
            ),
            Err(_) => no_such(item.noun()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_keep_known_fields_and_secrets_as_typed() {
        let form = vec![
            ("name".to_owned(), " gw1 ".to_owned()),
            ("password".to_owned(), " spaced ".to_owned()),
            ("host".to_owned(), "".to_owned()),
            ("colour".to_owned(), "red".to_owned()),
        ];
        let v = from_form(Item::Gateway, &form);
        assert_eq!(v.get("name").map(String::as_str), Some("gw1"));
        assert_eq!(v.get("password").map(String::as_str), Some(" spaced "));
        assert!(!v.contains_key("host"), "blank is left out");
        assert!(!v.contains_key("colour"));
    }

    #[test]
    fn json_values_refuse_unknown_fields_and_wrong_types() {
        let ok = from_json(
            Item::Route,
            &json!({"name": "r", "pattern": "0X.", "trunk": "gw", "strip": 1}),
            false,
        )
        .expect("ok");
        assert_eq!(ok.get("strip").map(String::as_str), Some("1"));
        for bad in [
            json!({"colour": "red"}),
            json!({"strip": -1}),
            json!({"strip": "1"}),
            json!({"pattern": 5}),
            json!([1]),
        ] {
            assert!(from_json(Item::Route, &bad, false).is_err(), "{bad}");
        }
        // The key is in the path of an edit, not in its body.
        assert!(from_json(Item::Route, &json!({"name": "x"}), true).is_err());
    }

    #[test]
    fn every_kind_has_a_schema_with_its_required_fields() {
        let s = Item::Gateway.schema(false);
        assert_eq!(s["required"].as_array().map(Vec::len), Some(6));
        assert_eq!(Item::Gateway.schema(true)["required"], json!([]));
        assert!(Item::Did.schema(true)["properties"].get("did").is_none());
        for i in Item::ALL {
            assert_eq!(Item::parse(i.as_str()), Some(i));
        }
    }
}
