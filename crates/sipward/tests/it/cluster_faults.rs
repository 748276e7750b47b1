//! Faults between nodes and under them, on one PostgreSQL database in the test run's
//! cluster (issue 21): a node whose internal hop socket is gone while its row still
//! says it is live, and a database that refuses the active-calls snapshot. In each the
//! caller gets a clean answer in bounded time, the failure is counted, and the fraud
//! limits hold.

use std::time::{Duration, Instant};

use crate::install::{
    CONFIG, call_up, final_answer, free_internal, media_ports, nodes, pstn_gateway, two_nodes,
    with_internal,
};
use crate::peers::{Server, eventually};
use crate::pg;
use crate::user_agent::{Dialog, Ua, ext, header, status};

/// `sipward_background_errors_total` for `task` on `node`.
fn background_errors(node: &Server, task: &str) -> u64 {
    node.metric(&format!(
        "sipward_background_errors_total{{task=\"{task}\"}}"
    ))
}

/// The hop to a dead node (issue 21 follow-up). 5501 (no voicemail) and 5505 (its
/// voicemail after 3 s) are registered on node A only; A is killed (`kill -9`): its
/// internal socket is closed, but its row in `nodes` stays live until it is stale
/// (15 s), so node B still hops calls for them to A's internal address. B's caller
/// then calls both at once:
/// - 5505: B's own voicemail takes the call (the fallback a hop that is not answered
///   gets): 200 with media, the caller hangs up. Not after its 3 s of ringing but
///   once the hop's branch is done: B cancels it at 3 s, and a branch that never had
///   a provisional answer ends only when its INVITE times out (Timer B, 32 s);
/// - 5501: the caller gets a failure (the hop's transaction times out, or the ring
///   time ends it), in bounded time, never a hang;
/// - each unanswered hop is counted on B (`sipward_hops_unanswered_total`). Was a
///   GAP: nothing counted it (UDP reports no "port unreachable" to an unconnected
///   socket, so no send failed either: `background_errors_total{task="udp_send"}`
///   stayed 0), the caller got its 408 and nothing said why;
/// - once A's row is stale, B stops hopping: a new call to 5501 is answered 480 at
///   once. B never panicked and still serves.
///
/// The control: before the kill, the same call to 5501 through B rings the phone on A
/// over the hop (so the failures after it are the dead socket, not a hop that never
/// worked), and an answered hop is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_to_a_dead_nodes_internal_socket_fails_cleanly_and_is_counted() {
    let Some(cluster) = pg::cluster() else {
        return;
    };
    // B answers with voicemail media: ports of its own, apart from other tests'.
    let (mut two, _) = nodes(cluster, 2, || {
        with_internal(&media_ports(CONFIG), free_internal())
    });
    let b = two.pop().expect("b");
    let a = two.pop().expect("a");
    let silent = ext(&a, "5501", "national");
    a.ok(&["ext", "update", "5501", "--voicemail-after", "0"]);
    let boxed = ext(&a, "5505", "national");
    a.ok(&["ext", "update", "5505", "--voicemail-after", "3"]);
    let caller = ext(&a, "5502", "national");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let node_b = b.serve_with(&["--node-name", "b"]);
    let phone = Ua::phone("127.0.0.2", node_a.sip, &silent).await;
    phone.register().await;
    let boxed_phone = Ua::phone("127.0.0.4", node_a.sip, &boxed).await;
    boxed_phone.register().await;
    eventually("B knows that A holds both", Duration::from_secs(10), || {
        node_b.metric("sipward_table_entries{table=\"hop_targets\"}") == 2
    });
    let caller_ua = Ua::phone("127.0.0.3", node_b.sip, &caller).await;

    // Control: the hop works while A lives.
    let out = caller_ua.invite("5501", "").await;
    let rung = phone.wait_request("INVITE", &out.call_id).await;
    phone.reply(&rung, 486, "Busy Here", "busy", "", "").await;
    let answer = final_answer(&caller_ua, &out, Duration::from_secs(5), "control").await;
    assert_eq!(status(&answer), 486, "control: {answer}");
    caller_ua.ack_failure(&out, &answer).await;
    assert_eq!(
        node_b.metric("sipward_hops_unanswered_total"),
        0,
        "control: an answered hop is not counted"
    );
    node_a.signal("KILL");
    drop(node_a);
    let killed = Instant::now();
    let to_box = caller_ua.invite("5505", "").await;
    let to_silent = caller_ua.invite("5501", "").await;
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "both calls left within A's liveness window"
    );

    // The voicemail fallback.
    let answer = final_answer(&caller_ua, &to_box, Duration::from_secs(45), "5505").await;
    eprintln!("5505's voicemail answered after {:?}", killed.elapsed());
    assert_eq!(
        status(&answer),
        200,
        "B's voicemail takes the call\n{answer}\n{}",
        node_b.log()
    );
    let mut d = Dialog::uac(&to_box, &answer);
    caller_ua.ack_2xx(&d, to_box.cseq).await;
    let bye = caller_ua.send_in_dialog(&mut d, "BYE", "", "").await;
    let bye_id = header(&bye, "CSeq").unwrap_or_default().to_owned();
    caller_ua
        .wait("the 200 to the BYE", |m| {
            status(m) == 200 && header(m, "CSeq") == Some(bye_id.as_str())
        })
        .await;
    eventually("B files the message", Duration::from_secs(5), || {
        node_b.metric("sipward_voicemail_calls_total") == 1
    });

    // The clean failure, in bounded time (Timer B is 32 s).
    let answer = final_answer(&caller_ua, &to_silent, Duration::from_secs(45), "5501").await;
    let took = killed.elapsed();
    assert!(
        status(&answer) >= 400 && status(&answer) != 500,
        "a clean failure: {answer}"
    );
    caller_ua.ack_failure(&to_silent, &answer).await;
    eprintln!(
        "the call to 5501 through a dead node ended {} after {took:?}",
        status(&answer)
    );

    // Counted: both hops, once each.
    assert_eq!(node_b.metric("sipward_hops_unanswered_total"), 2);
    // A's row is stale by now (15 s): B no longer hops, and says so at once.
    eventually("B drops node a", Duration::from_secs(20), || {
        node_b.metric("sipward_table_entries{table=\"hop_nodes\"}") == 0
    });
    let asked = Instant::now();
    let out = caller_ua.invite("5501", "").await;
    let answer = final_answer(&caller_ua, &out, Duration::from_secs(5), "after A went").await;
    assert_eq!(status(&answer), 480, "{answer}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    caller_ua.ack_failure(&out, &answer).await;
    assert!(
        !node_b.log().contains("panicked"),
        "B panicked:\n{}",
        node_b.log()
    );
    assert!(
        phone
            .received()
            .iter()
            .all(|r| !r.text.contains(&to_silent.call_id)),
        "a dead node cannot ring anything"
    );
    node_b.stop();
}

/// The active-calls snapshot refused by the database (issue 21 follow-up). Each node
/// writes its trunk calls behind (`store::trunks::replace_active_calls`, stamped in
/// `call_writers`): it is what `sipward calls` and the console show, never what a limit
/// counts (the concurrent limit counts lease rows, taken before the call is placed).
/// With a trigger refusing every `active_calls` row, one extension (limit 2) has a call
/// up through each node: both calls are placed (the snapshot is not on the call path),
/// the refused writes are counted (`sipward_background_errors_total{task=
/// "call_state"}`) and logged on both nodes, and the snapshot holds nothing. A third
/// call through either node is still refused 403 and reaches no gateway: the limit does
/// not rest on the snapshot. With the trigger gone, the next write brings the snapshot
/// back to both calls.
///
/// (Breaking the limit suspends the extension, as it does with the snapshot written.)
///
/// The controls: a call of another extension goes through at once (the route and the
/// gateway take calls, so the 403 is the limit), and the trigger did refuse the rows
/// (the snapshot fills once it is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_active_calls_write_is_counted_and_the_limit_still_holds() {
    let Some(cluster) = pg::cluster() else {
        return;
    };
    let (a, b, db) = two_nodes(cluster, CONFIG);
    let gateway = pstn_gateway(&a, "127.0.0.10").await;
    let account = ext(&a, "5601", "national");
    let other = ext(&a, "5602", "national");
    let node_a = a.serve_with(&["--node-name", "a"]);
    let node_b = b.serve_with(&["--node-name", "b"]);
    let at_a = Ua::phone("127.0.0.11", node_a.sip, &account).await;
    let at_b = Ua::phone("127.0.0.12", node_b.sip, &account).await;
    let other_ua = Ua::phone("127.0.0.13", node_b.sip, &other).await;
    let before = (
        background_errors(&node_a, "call_state"),
        background_errors(&node_b, "call_state"),
    );
    cluster.psql(
        &db,
        "CREATE FUNCTION refuse_active_call() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'active call refused by the test'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON active_calls \
         FOR EACH ROW EXECUTE FUNCTION refuse_active_call();",
    );
    let rows = || -> u64 {
        cluster
            .psql(&db, "SELECT COUNT(*) FROM active_calls")
            .parse()
            .expect("a count")
    };

    call_up(&at_a, &gateway, &node_a)
        .await
        .expect("the call through A is placed");
    call_up(&at_b, &gateway, &node_b)
        .await
        .expect("the call through B is placed");
    eventually(
        "both nodes count a refused write",
        Duration::from_secs(10),
        || {
            background_errors(&node_a, "call_state") > before.0
                && background_errors(&node_b, "call_state") > before.1
        },
    );
    for node in [&node_a, &node_b] {
        assert!(
            node.log()
                .contains("writing the provider status and active calls failed"),
            "logged:\n{}",
            node.log()
        );
    }
    assert_eq!(rows(), 0, "the snapshot was refused");

    for (via, node, phone) in [("A", &node_a, &at_a), ("B", &node_b, &at_b)] {
        let third = call_up(phone, &gateway, node).await;
        assert_eq!(
            third,
            Err(403),
            "a third call through {via} is refused by the limit"
        );
    }
    eventually(
        "the breach suspends as ever",
        Duration::from_secs(5),
        || a.ok(&["ext", "show", "5601"]).contains("SUSPENDED"),
    );
    // Control: another extension's call goes through.
    call_up(&other_ua, &gateway, &node_b)
        .await
        .expect("control: another extension's call is placed");

    // Control: the rows were refused by the trigger alone.
    cluster.psql(&db, "DROP TRIGGER refuse ON active_calls");
    eventually("the snapshot catches up", Duration::from_secs(15), || {
        rows() == 3
    });
    node_b.stop();
    node_a.stop();
}
