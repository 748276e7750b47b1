//! What the tests of sealed HA1s share: a registry on a manual clock, its credentials
//! loaded into a directory as a server start loads them, and one REGISTER verified
//! against that directory.

// Each test file uses its own part of this.
#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use accounts::credentials::Credentials;
use accounts::extension::NewExtension;
use accounts::{Registry, Settings};
use pbx::authenticator::{AuthConfig, Authenticator, Outcome};
use pbx::directory::{Directory, Opening};
use pbx::metrics::Metrics;
use policy::PolicyConfig;
use policy::clock::ManualClock;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sip::digest::{Algorithm, ResponseInput, expected_response, ha1};

pub const NOW: u64 = 1_795_894_105;
pub const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
pub const REALM: &str = "sipward";
pub const OLD: &str = "Zq8xLmTr4wPyK7vB2";
pub const NEW: &str = "Nw7pQz4xTr9mLk2Vb";

pub async fn registry(dir: &std::path::Path) -> Registry {
    let settings = Settings {
        realm: REALM.into(),
        domain: None,
        policy: PolicyConfig::default(),
        dialplan: Default::default(),
        admin_email: None,
        provisioning: Default::default(),
    };
    let clock = Arc::new(ManualClock::new(
        i64::try_from(NOW).expect("fits"),
        Instant::now(),
    ));
    let data = store::DataDir::new(dir.join("d"));
    let (reg, _) = Registry::open(&data, settings, Box::new(StdRng::seed_from_u64(7)), clock)
        .await
        .expect("open");
    reg
}

pub async fn add(reg: &Registry, number: &str, auth_id: &str, password: &str) {
    let new = NewExtension {
        auth_id: Some(auth_id.into()),
        password: Some(password.into()),
        ..NewExtension::default()
    };
    reg.add_extension(number, new).await.expect("add");
}

pub fn opening(reg: &Registry) -> Arc<Opening> {
    Arc::new(Opening {
        opener: Some(reg.ha1_opener()),
        realm: REALM.into(),
    })
}

/// The credentials as the server reads them at `NOW` (HA1s sealed).
pub async fn credentials(reg: &Registry) -> Credentials {
    let mut conn = reg.store().conn().await.expect("conn");
    reg.credentials(&mut conn, i64::try_from(NOW).expect("fits"))
        .await
        .expect("credentials")
}

/// The directory a start (`previous` None) or a reload builds; no gateway here, so every
/// value opens later or not at all.
pub async fn load(
    reg: &Registry,
    opening: &Arc<Opening>,
    previous: Option<&Directory>,
) -> Directory {
    let c = credentials(reg).await;
    let (d, unopened) = Directory::load(c.accounts, c.graces, opening.clone(), 3, previous);
    assert!(unopened.is_empty(), "no gateway here: {unopened:?}");
    d
}

pub fn authenticator_with(metrics: Arc<Metrics>) -> Authenticator {
    Authenticator::new(
        AuthConfig {
            realm: REALM.into(),
            nonce_max_age_secs: 300,
            nc_capacity: 1000,
            algorithms: vec![Algorithm::Md5],
        },
        [1; 32],
        [2; 32],
        metrics,
    )
}

pub fn authenticator() -> Authenticator {
    authenticator_with(Arc::new(Metrics::default()))
}

/// One REGISTER answering a fresh challenge with `user` and `password`, verified.
pub fn register(a: &Authenticator, d: &Directory, user: &str, password: &str) -> Outcome {
    let nonce = a.challenges(SRC, NOW, false)[0]
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("nonce")
        .to_owned();
    let uri = "sip:127.0.0.1:5060";
    let input = ResponseInput {
        method: "REGISTER",
        uri,
        nonce: &nonce,
        qop_auth: Some(("00000001", "6b8b4567")),
    };
    let response = expected_response(
        Algorithm::Md5,
        &ha1(Algorithm::Md5, user, REALM, password),
        &input,
    );
    let text = format!(
        "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:16062;branch=z9hG4bK-1\r\n\
         Authorization: Digest username=\"{user}\",realm=\"{REALM}\",cnonce=\"6b8b4567\",nc=00000001,\
         qop=auth,uri=\"{uri}\",nonce=\"{nonce}\",response=\"{response}\",algorithm=MD5\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let m = sip::msg::parse(text.as_bytes()).expect("parses");
    a.verify(d, &m, "REGISTER", SRC, NOW)
}

pub fn accepted(o: &Outcome) -> bool {
    matches!(o, Outcome::Authenticated(_) | Outcome::Grace(_))
}

pub fn logs_in(a: &Authenticator, d: &Directory, user: &str, password: &str) -> bool {
    accepted(&register(a, d, user, password))
}
