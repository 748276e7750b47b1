//! An install of several sipward nodes on one PostgreSQL database, as the cluster and
//! hop tests set it up (issue 21): the nodes' data dirs (one secrets key), their
//! internal hop addresses, the PSTN gateway with its national route, and what a forger
//! needs to stamp hops. One fixture, so that each test keeps only what it proves.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::Env;
use crate::peers::Server;
use crate::pg;
use crate::user_agent::{Account, Dialog, Outgoing, Ua, answers, header, request_method, status};

/// A German dial plan (MD5 for the test phones), a concurrent limit of two and room for
/// as many attempts as a test makes: what the attack tests on nodes run with.
pub const CONFIG: &str = "[sip]\ndigest_algorithms = [\"MD5\"]\n\
    [dialplan]\ncountry_code = \"49\"\ninternational_prefix = \"00\"\nnational_prefix = \"0\"\n\
    [dialplan.limits]\nconcurrent_external = 2\nattempts_per_minute = 100\n";

/// A national number: the route of [`pstn_gateway`] sends it to the gateway.
pub const NATIONAL: &str = "0301234567";

/// `n` nodes' data dirs on one new database: the first created it (and the key), the
/// others were given a copy of the key. `config` gives each node its `sipward.toml`
/// (called once per node, so each may take a port of its own). Returns the nodes and
/// the database's name.
pub fn nodes(cluster: &pg::Cluster, n: usize, config: impl Fn() -> String) -> (Vec<Env>, String) {
    let url = cluster.fresh_database();
    let first = Env::on_postgres(&url, None);
    first.ok(&["ext", "list"]);
    let mut all = vec![first];
    for _ in 1..n {
        all.push(Env::on_postgres(&url, Some(&all[0])));
    }
    for env in &all {
        std::fs::create_dir_all(&env.data).expect("data dir");
        std::fs::write(env.data.join("sipward.toml"), config()).expect("config");
    }
    (all, pg::database_of(&url).to_owned())
}

/// Two nodes, A and B, both with `config`; and the database's name.
pub fn two_nodes(cluster: &pg::Cluster, config: &str) -> (Env, Env, String) {
    pair(nodes(cluster, 2, || config.to_owned()))
}

/// Two nodes, A and B, each with `config` and an internal hop address of its own
/// (`[cluster] internal`, a free loopback port); and the database's name.
pub fn two_hop_nodes(cluster: &pg::Cluster, config: &str) -> (Env, Env, String) {
    pair(nodes(cluster, 2, || with_internal(config, free_internal())))
}

fn pair((mut all, db): (Vec<Env>, String)) -> (Env, Env, String) {
    let b = all.pop().expect("b");
    let a = all.pop().expect("a");
    (a, b, db)
}

/// One node ("a" by its tests) with `config` and an internal hop address; returns its
/// data dir, that address and the database's name.
pub fn node_with_internal(cluster: &pg::Cluster, config: &str) -> (Env, SocketAddr, String) {
    let internal = free_internal();
    let (mut all, db) = nodes(cluster, 1, || with_internal(config, internal));
    (all.pop().expect("a"), internal, db)
}

/// A free loopback address for an internal hop socket.
pub fn free_internal() -> SocketAddr {
    format!("127.0.0.1:{}", crate::peers::free_port())
        .parse()
        .expect("addr")
}

/// `config` with `[cluster] internal` at `at` (the config must not have a `[cluster]`
/// table of its own).
pub fn with_internal(config: &str, at: SocketAddr) -> String {
    format!("{config}[cluster]\ninternal = \"{at}\"\n")
}

/// `config` with RTP ports of its own (`[media] rtp_ports`, 40 from a free port): for
/// nodes whose voicemail answers, apart from other tests' (the config must not have a
/// `[media]` table of its own).
pub fn media_ports(config: &str) -> String {
    let base = (crate::peers::free_port() & !1).min(65_000);
    format!("{config}[media]\nrtp_ports = \"{base}-{}\"\n", base + 39)
}

/// The gateway's SIP account (it registers under its virtual number 800).
pub fn pstn_account() -> Account {
    Account {
        number: "800".to_owned(),
        auth_id: "gw-pstn-7".to_owned(),
        password: "Gw7-pQ2v-Xk9m-Lr4t".to_owned(),
    }
}

/// A PSTN gateway `pstn` listening on `ip` (a port of its own), added on `env` with a
/// route `national` (`0ZX.`) to it. The gateway's user agent does not know a node yet:
/// it sends nothing before a test points it at one.
pub async fn pstn_gateway(env: &Env, ip: &str) -> Ua {
    let gateway = Ua::bind(ip, "127.0.0.1:9".parse().expect("addr")).await;
    let account = pstn_account();
    env.ok(&[
        "gateway",
        "add",
        "pstn",
        "--vendor",
        "generic",
        "--ext",
        &account.number,
        "--auth-id",
        &account.auth_id,
        "--password",
        &account.password,
        "--host",
        &gateway.addr.to_string(),
    ]);
    env.ok(&[
        "route",
        "add",
        "national",
        "--pattern",
        "0ZX.",
        "--trunk",
        "pstn",
    ]);
    gateway
}

/// The first final answer to `out` at `ua`, waiting up to `deadline`; panics naming
/// `what` when none comes (a call that hangs).
pub async fn final_answer(ua: &Ua, out: &Outgoing, deadline: Duration, what: &str) -> String {
    ua.try_wait(deadline, |m| answers(m, out) && status(m) >= 200)
        .await
        .unwrap_or_else(|| panic!("{what}: no final answer within {deadline:?}"))
}

/// `phone` calls [`NATIONAL`] through `node` and the gateway answers an INVITE with a
/// Call-ID it had not seen: the call is up (the caller got the 200 and ACKed it). Or
/// the call was refused, with that status (and nothing new reached the gateway within
/// 5 s).
pub async fn call_up(phone: &Ua, gateway: &Ua, node: &Server) -> Result<(), u16> {
    // Taken before the call leaves: its INVITE may reach the gateway at once.
    let seen: Vec<String> = gateway
        .received()
        .iter()
        .filter_map(|r| header(&r.text, "Call-ID").map(str::to_owned))
        .collect();
    let out = phone.invite(NATIONAL, "").await;
    let invite = gateway
        .try_wait(Duration::from_secs(5), |m| {
            request_method(m) == Some("INVITE")
                && header(m, "Call-ID").is_some_and(|c| !seen.iter().any(|s| s == c))
        })
        .await;
    let Some(invite) = invite else {
        let answer = final_answer(phone, &out, Duration::from_secs(5), &out.call_id).await;
        eprintln!("refused: {}", crate::user_agent::first_line(&answer));
        phone.ack_failure(&out, &answer).await;
        return Err(status(&answer));
    };
    gateway.answer(&invite).await;
    let ok = phone
        .try_wait(Duration::from_secs(5), |m| {
            answers(m, &out) && status(m) == 200
        })
        .await
        .unwrap_or_else(|| panic!("the caller never got the 200\n{}", node.log()));
    phone.ack_2xx(&Dialog::uac(&out, &ok), out.cseq).await;
    Ok(())
}

/// Publishes a node `name` at `at` in the database, beating for the whole test (it
/// stands for a live node of the install).
pub fn publish_node(cluster: &pg::Cluster, db: &str, name: &str, at: SocketAddr) {
    cluster.psql(
        db,
        &format!(
            "INSERT INTO nodes (name, instance, hop, heartbeat_at) VALUES ('{name}', 'forged', '{at}', {})",
            unix_now() + 3600
        ),
    );
}

/// What a forger needs to stamp hops for the install (it stands for a node of the
/// install, or for whoever holds a node's secrets key): the hop key every node derives.
pub fn hop_key_of(env: &Env) -> pbx::hop::HopKey {
    let vault = store::Vault::load(&env.data.join("secrets.key")).expect("the key");
    pbx::hop::HopKey::new(*vault.hop_key())
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A hop INVITE from `from` for `extension`, as a node would send it, with `proof`
/// (none when empty).
pub fn hop_invite(
    from: SocketAddr,
    to: SocketAddr,
    extension: &str,
    call_id: &str,
    proof: &str,
) -> String {
    let proof = if proof.is_empty() {
        String::new()
    } else {
        format!("X-Sipward-Hop: {proof}\r\n")
    };
    format!(
        "INVITE sip:{extension}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call_id};rport\r\n\
         Max-Forwards: 69\r\nFrom: <sip:5502@{from}>;tag=f{call_id}\r\nTo: <sip:{extension}@{to}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:5502@{from}>\r\n{proof}Content-Length: 0\r\n\r\n"
    )
}

/// A genuine proof, as node `node` stamps a hop INVITE for `extension` at `at`.
pub fn hop_proof(
    key: &pbx::hop::HopKey,
    node: &str,
    extension: &str,
    call_id: &str,
    at: i64,
) -> String {
    pbx::hop::stamp(
        key,
        &pbx::hop::HopFields {
            method: "INVITE",
            extension,
            call_id,
            cseq: 1,
            from_tag: &format!("f{call_id}"),
            node,
        },
        at,
    )
}
