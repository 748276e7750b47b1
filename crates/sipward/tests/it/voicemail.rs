//! Voicemail boxes as the administrator sees them: the console page, the API and the
//! CLI list a deposited message (count, length, date) without its audio, and hand the
//! recording out only to an administrator who gives a reason, which the audit log keeps.

use std::process::Command;
use std::sync::Arc;

use accounts::{Registry, Settings};
use policy::clock::ManualClock;
use rand::SeedableRng;
use serde_json::Value;

use crate::console::{ADMIN_PASSWORD, login};
use crate::harness::Env;
use crate::peers::{SMTP_PASSWORD, Smtp, require};

/// A WAV of `samples` 16-bit samples at 8 kHz.
fn wav(samples: usize) -> Vec<u8> {
    let data = u32::try_from(samples * 2).expect("small");
    let mut w = Vec::new();
    for part in [
        &b"RIFF"[..],
        &(36 + data).to_le_bytes(),
        b"WAVEfmt ",
        &16u32.to_le_bytes(),
        &1u16.to_le_bytes(),
        &1u16.to_le_bytes(),
        &8000u32.to_le_bytes(),
        &16000u32.to_le_bytes(),
        &2u16.to_le_bytes(),
        &16u16.to_le_bytes(),
        b"data",
        &data.to_le_bytes(),
    ] {
        w.extend_from_slice(part);
    }
    w.extend((0..samples * 2).map(|i| (i % 251) as u8));
    w
}

/// Runs `f` on the data dir's registry as a process beside the CLI would (the realm the
/// binary uses when no domain is configured).
fn with_registry<F, Fut, T>(env: &Env, f: F) -> T
where
    F: FnOnce(Registry) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let settings = Settings {
            realm: "sipward".into(),
            domain: None,
            policy: Default::default(),
            dialplan: Default::default(),
            admin_email: None,
            provisioning: Default::default(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let (reg, _) = Registry::open(
            &store::DataDir::new(&env.data),
            settings,
            Box::new(rand::rngs::StdRng::seed_from_u64(3)),
            Arc::new(ManualClock::new(
                i64::try_from(now).expect("now"),
                std::time::Instant::now(),
            )),
        )
        .await
        .expect("open");
        let store = reg.store().clone();
        let out = f(reg).await;
        store.close().await;
        out
    })
}

/// Leaves a message in `number`'s box the way the call side does (begin, write,
/// commit); returns its id.
fn deposit(env: &Env, number: &str, audio: &[u8]) -> String {
    with_registry(env, |reg| async move {
        let pending = reg.begin_message(number).await.expect("begin");
        let id = pending.id().to_owned();
        std::fs::write(pending.path(), audio).expect("write");
        reg.commit_message(pending, "\"Bob\" <sip:4002@pbx>", 2500)
            .await
            .expect("commit");
        id
    })
}

fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new(require("curl", "curl"))
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = out.stdout;
    let cut = text.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&text[cut..])
        .trim()
        .parse()
        .unwrap_or(0);
    (code, text[..cut].to_vec())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_console_and_api_list_voicemail_and_open_a_message_only_with_a_reason() {
    let env = Env::new();
    env.ok(&["ext", "add", "4001", "--pin", "4001", "--name", "Ann"]);
    env.ok(&["ext", "add", "4003", "--name", "Reception"]);
    let r = env.run_with_stdin(
        &["admin", "passwd", "--password", "-"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let token = env
        .ok(&["admin", "token", "create", "vm"])
        .trim()
        .to_owned();
    let audio = wav(4000);
    deposit(&env, "4001", &audio);

    // The CLI lists it, without audio.
    let listed: Value = serde_json::from_str(&env.ok(&["vm", "list", "--json"])).expect("json");
    let ann = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["number"] == "4001")
        .expect("4001")
        .clone();
    assert_eq!(
        (ann["new"].as_u64(), ann["total_ms"].as_u64()),
        (Some(1), Some(2500))
    );

    let server = env.serve();
    let base = format!("http://{}", server.http);
    let api = |path: &str| format!("{base}/api/v1{path}");
    let bearer = format!("Authorization: Bearer {token}");

    let (code, body) = curl(&[&api("/voicemail")]);
    assert_eq!(code, 401, "{}", text(&body));
    let (code, body) = curl(&["-H", &bearer, &api("/voicemail")]);
    assert_eq!(code, 200, "{}", text(&body));
    let boxes: Value = serde_json::from_slice(&body).expect("json");
    let ann = boxes
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["box"]["number"] == "4001")
        .expect("4001");
    assert_eq!(ann["box"]["new"], 1);
    assert_eq!(ann["weak_pin"], true, "PIN 4001 is the number: {ann}");
    let (code, body) = curl(&["-H", &bearer, &api("/voicemail/4001")]);
    assert_eq!(code, 200);
    let one: Value = serde_json::from_slice(&body).expect("json");
    let id = one["messages"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(one["messages"][0]["duration_ms"], 2500);
    assert_eq!(one["messages"][0]["caller"], "\"Bob\" <sip:4002@pbx>");
    assert_eq!(curl(&["-H", &bearer, &api("/voicemail/x1")]).0, 400);
    assert_eq!(curl(&["-H", &bearer, &api("/voicemail/4999")]).0, 404);

    // The recording: refused without a reason, handed out with one.
    let open = |body: &str| {
        curl(&[
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/json",
            "-X",
            "POST",
            "--data",
            body,
            &api(&format!("/voicemail/4001/messages/{id}/open")),
        ])
    };
    assert_eq!(open("{}").0, 400);
    assert_eq!(open(r#"{"reason": "  "}"#).0, 400);
    let (code, got) = open(r#"{"reason": "ticket 4711: caller asked"}"#);
    assert_eq!(code, 200);
    assert_eq!(got, audio, "the recording as deposited");
    let (code, _) = curl(&[
        "-H",
        &bearer,
        "-H",
        "Content-Type: application/json",
        "-X",
        "POST",
        "--data",
        r#"{"reason": "ticket 4711"}"#,
        &api("/voicemail/4003/messages/nosuch/open"),
    ]);
    assert_eq!(code, 404, "another box's message is not found");
    let log = env.ok(&["log", "--limit", "20"]);
    assert!(
        log.contains("voicemail.message_opened") && log.contains("ticket 4711: caller asked"),
        "{log}"
    );

    // The console's pages, in a session.
    let (code, cookie) = login(&base, "127.0.0.1", ADMIN_PASSWORD);
    assert_eq!(code, 303);
    let cookie = format!("Cookie: sipward_session={}", cookie.expect("cookie"));
    let (code, page) = curl(&["-H", &cookie, &format!("{base}/voicemail")]);
    let page = text(&page);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("box-4001") && page.contains("PIN is weak"),
        "{page}"
    );
    let (code, page) = curl(&["-H", &cookie, &format!("{base}/voicemail/4001")]);
    let page = text(&page);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Re-Generate") && page.contains(&id), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf")
        .to_owned();
    let listen = |reason: &str| {
        curl(&[
            "-H",
            &cookie,
            "-X",
            "POST",
            "--data-urlencode",
            &format!("csrf={csrf}"),
            "--data-urlencode",
            &format!("reason={reason}"),
            &format!("{base}/voicemail/4001/{id}"),
        ])
    };
    assert_eq!(listen("").0, 400);
    let (code, got) = listen("owner on leave, asked by HR");
    assert_eq!(code, 200);
    assert_eq!(got, audio);
    server.stop();
}

#[test]
fn a_new_message_is_mailed_with_its_recording_unless_deleted_first() {
    let env = Env::new();
    env.ok(&["ext", "list"]);
    let smtp = Smtp::start(&env);
    std::fs::write(env.data.join("sipward.toml"), smtp.config(SMTP_PASSWORD)).expect("config");
    env.ok(&[
        "ext",
        "add",
        "4001",
        "--email",
        "ann@example.com",
        "--name",
        "Ann",
    ]);
    // The welcome mail is not what this test is about: send it out of the way.
    env.ok(&["mail", "send"]);
    let before = smtp.messages().len();

    let audio = wav(800);
    deposit(&env, "4001", &audio);
    let sent: Value = serde_json::from_str(&env.ok(&["mail", "send", "--json"])).expect("json");
    assert!(sent.to_string().contains("sent"), "{sent}");
    let mails = smtp.messages();
    assert_eq!(mails.len(), before + 1, "{sent}");
    let mail = mails.last().expect("mail");
    assert!(mail.contains("Voicemail for 4001"), "{mail}");
    assert!(
        mail.to_ascii_lowercase()
            .contains("content-type: audio/wav"),
        "{mail}"
    );
    // The attachment is the recording (base64, folded into lines).
    let b64: String = mail
        .split("\r\n\r\n")
        .chain(mail.split("\n\n"))
        .filter(|part| part.starts_with("UklGR"))
        .map(|part| {
            part.split("--")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect()
        })
        .next()
        .expect("a base64 WAV part");
    assert!(
        b64.starts_with(&base64_head(&audio)),
        "the attached bytes are the recording"
    );

    // A message deleted before its mail went out: the mail is withdrawn, not sent.
    let id = deposit(&env, "4001", &audio);
    with_registry(&env, |reg| async move {
        assert!(
            reg.delete_message("4001", &id, "test")
                .await
                .expect("delete")
        );
    });
    let sent = env.ok(&["mail", "send", "--json"]);
    assert!(!sent.contains("\"sent\""), "{sent}");
    assert_eq!(smtp.messages().len(), before + 1, "no second mail");
}

/// The first 48 bytes of `bytes` in base64 (a prefix that does not depend on padding).
fn base64_head(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    bytes[..48]
        .chunks(3)
        .flat_map(|c| {
            let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
            [18, 12, 6, 0].map(|s| char::from(ABC[((n >> s) & 63) as usize]))
        })
        .collect()
}
