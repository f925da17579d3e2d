//! The MQTT trigger against a real broker (Mosquitto, started here): a message on a mapped
//! topic invokes the function and the result is published to the default reply topic, or to
//! the MQTT 5 response topic with the correlation data; unusable messages are logged and
//! dropped while the trigger keeps serving; a broker restart is survived.
//!
//! Needs `mosquitto` and `mosquitto-clients` (Debian packages): skipped with a message when
//! they are missing, a failure under CI=true.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BROKER: &str = "/usr/sbin/mosquitto";

fn have_mosquitto() -> bool {
    let ok =
        Path::new(BROKER).exists() && Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !ok {
        skip_without(
            "mosquitto and mosquitto-clients",
            "apt-get install mosquitto mosquitto-clients",
        );
    }
    ok
}

struct Broker {
    child: Child,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        Broker::with_config(
            dir,
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
    }

    /// Mosquitto with `config` (which must listen on `port`), once it accepts connections.
    fn with_config(dir: &Path, port: u16, config: &str) -> Broker {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(BROKER)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes to `topic` (MQTT 5) and returns the first message as `topic|corr|props|payload`.
fn subscribe(port: u16, topic: &str) -> Child {
    let child = Command::new("mosquitto_sub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", topic, "-C", "1", "-W", "15", "-F", "%t|%D|%P|%p"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the subscription a moment to reach the broker.
    std::thread::sleep(Duration::from_millis(400));
    child
}

fn received(sub: Child) -> String {
    let out = sub.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn publish(port: u16, topic: &str, payload: &str, extra: &[&str]) {
    let st = Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", topic, "-m", payload, "-q", "1"])
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits for the member's MQTT trigger to connect, then deploys `hello` on it.
async fn connected_with_hello(n: &NodeProc) {
    let line = n.stdout_rest.recv_timeout(Duration::from_secs(15)).unwrap();
    assert!(
        line.starts_with("mqtt trigger connected to 127.0.0.1:"),
        "{line}"
    );
    let r = deploy(n, "hello", "hello/hello.wasm", serde_json::json!({})).await;
    assert!(r.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_messages_invoke_functions_and_bad_ones_are_dropped() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let broker = Broker::start(d, port);
    let cfg = d.join("router.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[http]\nmax_body = \"1Ki\"\n[router.mqtt]\nbroker = \"127.0.0.1:{port}\"\n\
             [[router.mqtt.trigger]]\ntopic = \"sensors/+/temp\"\nfunction = \"hello\"\n\
             [[router.mqtt.trigger]]\ntopic = \"orphans/#\"\nfunction = \"nosuch\"\n"
        ),
    )
    .unwrap();
    let router = NodeProc::role(d, "router", "router", &cfg, &["--device"]);
    connected_with_hello(&router).await;

    // A mapped topic: the result goes to the default reply topic, with placement details.
    let sub = subscribe(port, "fogline/reply/#");
    publish(port, "sensors/k1/temp", "world", &[]);
    let got = received(sub);
    assert!(got.starts_with("fogline/reply/hello|"), "{got}");
    assert!(got.ends_with("|hello, world"), "{got}");
    assert!(
        got.contains("status:200") && got.contains("placed-on:"),
        "{got}"
    );

    // A `traceparent` user property puts the call in the sender's trace; the reply carries
    // the trace on and names the call.
    let sub = subscribe(port, "fogline/reply/#");
    publish(
        port,
        "sensors/k2/temp",
        "traced",
        &[
            "-D",
            "publish",
            "user-property",
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ],
    );
    let got = received(sub);
    assert!(
        got.contains("traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && got.contains("call-id:"),
        "{got}"
    );
    let (s, body) = get(
        &authed(&router.token),
        format!("{}/v1/traces/4bf92f3577b34da6a3ce929d0e0e4736", router.url),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"name\":\"mqtt\""), "{body}");

    // MQTT 5 request/response: the reply goes to the response topic with the correlation data.
    let sub = subscribe(port, "dev/7/inbox");
    publish(
        port,
        "sensors/k2/temp",
        "there",
        &[
            "-D",
            "publish",
            "response-topic",
            "dev/7/inbox",
            "-D",
            "publish",
            "correlation-data",
            "req-42",
        ],
    );
    let got = received(sub);
    assert!(got.starts_with("dev/7/inbox|req-42|"), "{got}");
    assert!(got.ends_with("|hello, there"), "{got}");

    // Unusable messages are logged and dropped; errors of the call are published.
    let big = "x".repeat(2048);
    publish(port, "sensors/k3/temp", &big, &[]);
    let sub = subscribe(port, "fogline/reply/nosuch");
    publish(port, "orphans/a", "y", &[]);
    let got = received(sub);
    assert!(
        got.contains("status:404") && got.contains("not found"),
        "{got}"
    );
    // A response topic with wildcards is not a topic: the default is used instead.
    let sub = subscribe(port, "fogline/reply/hello");
    publish(
        port,
        "sensors/k4/temp",
        "again",
        &["-D", "publish", "response-topic", "dev/+/inbox"],
    );
    let got = received(sub);
    assert!(got.ends_with("|hello, again"), "{got}");
    let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
    assert!(
        log.contains("payload of 2048 bytes exceeds the limit of 1024"),
        "{log}"
    );
    assert!(log.contains("which is not a topic"), "{log}");

    // The broker restarts: the trigger reconnects and serves again.
    drop(broker);
    let _broker = Broker::start(d, port);
    let t = Instant::now();
    loop {
        let sub = subscribe(port, "fogline/reply/hello");
        publish(port, "sensors/k5/temp", "back", &[]);
        let got = received(sub);
        if got.ends_with("|hello, back") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no reply after the broker restarted"
        );
    }
}

/// Any node takes MQTT (`[mqtt]`), not only a router: the call runs on the node itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_node_takes_mqtt_calls() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let _broker = Broker::start(d, port);
    let cfg = d.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nid = \"edge-m\"\n[mqtt]\nbroker = \"127.0.0.1:{port}\"\n\
             [[mqtt.trigger]]\ntopic = \"sensors/+/temp\"\nfunction = \"hello\"\n"
        ),
    )
    .unwrap();
    let node = NodeProc::node(d, &cfg);
    connected_with_hello(&node).await;
    let sub = subscribe(port, "fogline/reply/#");
    publish(port, "sensors/k1/temp", "node", &[]);
    let got = received(sub);
    assert!(got.ends_with("|hello, node"), "{got}");
    assert!(got.contains("placed-on:edge-m (edge)"), "{got}");

    // An `idempotency-key` user property: the function runs once per key, and a repeat
    // is answered with the stored output; a key that is not one is answered with 400.
    let before = calls(&node, "hello", 200).await;
    for _ in 0..3 {
        let sub = subscribe(port, "fogline/reply/#");
        let key = [
            "-D",
            "publish",
            "user-property",
            "idempotency-key",
            "reading-7",
        ];
        publish(port, "sensors/k1/temp", "once", &key);
        let got = received(sub);
        assert!(
            got.ends_with("|hello, once") && got.contains("status:200"),
            "{got}"
        );
    }
    assert_eq!(
        calls(&node, "hello", 200).await,
        before + 1,
        "one run for one key"
    );
    let sub = subscribe(port, "fogline/reply/#");
    let bad = [
        "-D",
        "publish",
        "user-property",
        "idempotency-key",
        "has space",
    ];
    publish(port, "sensors/k1/temp", "x", &bad);
    let got = received(sub);
    assert!(
        got.contains("status:400") && got.contains("idempotency"),
        "{got}"
    );
}

/// MQTT with credentials: Mosquitto over TLS (its certificate from the cluster CA) with a
/// password file and no anonymous access. The trigger connects with TLS and the password
/// read from its file; a wrong password is refused by the broker and said in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_a_password() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki(d);
    let broker_tls = issue(&pki, "broker", "node");
    let ca = pki.join("ca.pem");
    let pw = d.join("passwords");
    let st = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&pw)
        .args(["fogline", "s3cret"])
        .status()
        .unwrap();
    assert!(st.success());
    let port = free_port();
    let _broker = Broker::with_config(
        d,
        port,
        &format!(
            "user root\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             allow_anonymous false\npassword_file {}\npersistence false\n",
            ca.display(),
            broker_tls.join("cert.pem").display(),
            broker_tls.join("key.pem").display(),
            pw.display()
        ),
    );
    let node_with = |name: &str, password: &str| {
        let pass = d.join(format!("{name}.pass"));
        std::fs::write(&pass, format!("{password}\n")).unwrap();
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "version = 1\n[node]\nid = \"{name}\"\n[mqtt]\nbroker = \"127.0.0.1:{port}\"\n\
                 tls = true\nca = \"{}\"\nusername = \"fogline\"\npassword_file = \"{}\"\n\
                 client_id = \"{name}\"\n\
                 [[mqtt.trigger]]\ntopic = \"secure/+/temp\"\nfunction = \"hello\"\n",
                ca.display(),
                pass.display()
            ),
        )
        .unwrap();
        NodeProc::role(d, "node", name, &cfg, &[])
    };
    let node = node_with("edge-t", "s3cret");
    connected_with_hello(&node).await;
    let tls_args = |cmd: &mut Command| {
        cmd.args([
            "-V",
            "5",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--cafile",
        ])
        .arg(&ca)
        .args(["-u", "fogline", "-P", "s3cret"]);
    };
    let mut sub = Command::new("mosquitto_sub");
    tls_args(&mut sub);
    let sub = sub
        .args([
            "-t",
            "fogline/reply/#",
            "-C",
            "1",
            "-W",
            "15",
            "-F",
            "%t|%p",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let mut publ = Command::new("mosquitto_pub");
    tls_args(&mut publ);
    assert!(publ
        .args(["-t", "secure/k1/temp", "-m", "over tls", "-q", "1"])
        .status()
        .unwrap()
        .success());
    let got = received(sub);
    assert_eq!(got, "fogline/reply/hello|hello, over tls");

    // A wrong password: the broker refuses the connection, and the node says so.
    let _wrong = node_with("edge-w", "nope");
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(d.join("node.stderr")).unwrap();
        if log
            .lines()
            .any(|l| l.contains("mqtt: broker 127.0.0.1:") && l.contains("NotAuthorized"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no refusal in the log: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// At least once: 500 QoS 1 messages are published while the node takes at most 8 at a
/// time (each runs 100 ms), and Mosquitto (persistent) is restarted in the middle; every
/// message is run and answered after it returns. A redelivered message may run twice (at
/// least once), never zero times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_when_the_broker_restarts_are_not_lost() {
    if !have_mosquitto() {
        return;
    }
    let (ran, _) = under_load("1", Disruption::BrokerRestart).await;
    assert!(ran >= 500, "{ran} runs for 500 messages");
}

/// QoS 2 messages across the same restart: none is lost and the session goes on (rumqttc
/// dropped the connection on every release Mosquitto sends again on the resumed session,
/// rumqtt issue #664). Some run twice: Mosquitto 2.0 restores part of the messages it had
/// sent as queued ones and sends them again under new packet ids (its log: "PUBREC ... for
/// an unknown packet identifier"), so no receiver can tell them from new messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_messages_are_not_lost_across_a_broker_restart() {
    if !have_mosquitto() {
        return;
    }
    let (ran, _) = under_load("2", Disruption::BrokerRestart).await;
    assert!(ran >= 500, "{ran} runs for 500 messages");
}

/// Exactly once for QoS 2: the node's connections to the broker are cut three times while
/// 500 messages run (the broker keeps its sessions). Messages the broker sends again after
/// they ran here are acknowledged again and not run: every message runs exactly once. The
/// same cuts with QoS 1 run some twice (printed; at least once is all QoS 1 promises).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_messages_run_once_across_lost_connections() {
    if !have_mosquitto() {
        return;
    }
    let (ran1, _) = under_load("1", Disruption::CutConnections).await;
    assert!(ran1 >= 500, "QoS 1: {ran1} runs for 500 messages");
    let (ran, again) = under_load("2", Disruption::CutConnections).await;
    eprintln!("QoS 1: {ran1} runs; QoS 2: {ran} runs, {again} deliveries again not run");
    assert_eq!(ran, 500, "QoS 2: {ran} runs for 500 messages");
    assert!(
        again > 0,
        "no message was delivered again: the cuts tested nothing"
    );
}

/// A subscriber with a session of its own (so it misses nothing across a broker restart)
/// collecting the payloads of the replies.
fn collect_replies(port: u16) -> (Child, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let mut sub = Command::new("mosquitto_sub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "-i", "fl-replies", "-q", "1", "-x", "600"])
        .args(["-t", "fogline/reply/#", "-F", "%p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = sub.stdout.take().unwrap();
    let replies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let r2 = replies.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if !l.is_empty() {
                r2.lock().unwrap().push(l);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    (sub, replies)
}

/// The jobs `0..n` not answered (`waited 100 ms #i`) once all were, or `within` passed.
fn unanswered(replies: &std::sync::Mutex<Vec<String>>, n: usize, within: Duration) -> Vec<usize> {
    let t = Instant::now();
    loop {
        let got: std::collections::HashSet<String> =
            replies.lock().unwrap().iter().cloned().collect();
        let missing: Vec<usize> = (0..n)
            .filter(|i| !got.contains(&format!("waited 100 ms #{i}")))
            .collect();
        if missing.is_empty() || t.elapsed() > within {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node (`edge-q`, data in `d/node`) whose `jobs/+` topics call `wait`, taking 8 messages
/// at a time from the broker at `port`, with `async` in its `[async]` section; and its
/// config file (to start it again).
async fn jobs_node(d: &Path, port: u16, async_: &str) -> (NodeProc, std::path::PathBuf) {
    let cfg = d.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nid = \"edge-q\"\n[async]\n{async_}\n\
             [mqtt]\nbroker = \"127.0.0.1:{port}\"\nmax_inflight = 8\n\
             [[mqtt.trigger]]\ntopic = \"jobs/+\"\nfunction = \"wait\"\n"
        ),
    )
    .unwrap();
    let node = NodeProc::node(d, &cfg);
    let line = node
        .stdout_rest
        .recv_timeout(Duration::from_secs(15))
        .unwrap();
    assert!(line.starts_with("mqtt trigger connected"), "{line}");
    let r = deploy(&node, "wait", "wait/wait.wasm", serde_json::json!({})).await;
    assert!(r.status().is_success());
    (node, cfg)
}

/// Publishes `n` messages `100 #i` (the `wait` function waits 100 ms) on `jobs/a`.
fn publish_jobs(port: u16, qos: &str, n: usize) {
    let mut publ = Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "jobs/a", "-q", qos, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = publ.stdin.take().unwrap();
        for i in 0..n {
            writeln!(stdin, "100 #{i}").unwrap();
        }
    }
    assert!(publ.wait().unwrap().success());
}

/// A QoS 1 message is acknowledged once its call is stored, not once it ran: the member
/// holds more messages in its queue than the broker lets it take unacknowledged (8), and
/// when it is killed (SIGKILL) with them queued, they run after its restart and every
/// message is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_run_after_the_member_is_killed() {
    if !have_mosquitto() {
        return;
    }
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let _broker = Broker::start(d, port);
    let (mut node, cfg) = jobs_node(d, port, "workers = 2").await;
    let (mut sub, replies) = collect_replies(port);
    publish_jobs(port, "1", N);
    let t = Instant::now();
    let held = loop {
        let q = metric_value(&metrics(&node).await, "fogline_async_queued").unwrap_or(0.0) as u64;
        if q >= 20 || t.elapsed() > Duration::from_secs(15) {
            break q;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        held >= 20,
        "{held} calls queued: messages are acknowledged only after they ran?"
    );
    let answered = replies.lock().unwrap().len();
    node.kill();
    eprintln!("member killed with {held} calls queued and {answered} of {N} answered");
    assert!(
        answered < N - 8,
        "too few messages were left to the restart"
    );
    let node = NodeProc::node(d, &cfg);
    let missing = unanswered(&replies, N, Duration::from_secs(30));
    let _ = sub.kill();
    let _ = sub.wait();
    drop(node);
    assert!(missing.is_empty(), "never answered: {missing:?}");
}

/// A reply is done only once the broker acknowledged it: while the broker refuses the
/// member's replies (an ACL that lets it read `jobs/#` but not write `fogline/reply/#`;
/// Mosquitto answers the PUBACK with "not authorized"), the results stay in the member's
/// outbox and are retried; once the ACL allows them (reloaded with SIGHUP), every message
/// is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_the_broker_refused_are_sent_again() {
    if !have_mosquitto() {
        return;
    }
    const N: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let acl = d.join("acl");
    std::fs::write(&acl, "topic readwrite jobs/#\ntopic read fogline/reply/#\n").unwrap();
    let broker = Broker::with_config(
        d,
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nacl_file {}\n",
            acl.display()
        ),
    );
    let (node, _) = jobs_node(d, port, "retry_max = \"500ms\"").await;
    let (mut sub, replies) = collect_replies(port);
    publish_jobs(port, "1", N);
    let t = Instant::now();
    let refused = loop {
        let retries = metric_value(&metrics(&node).await, "fogline_callback_retries_total")
            .unwrap_or(0.0) as u64;
        if retries >= N as u64 || t.elapsed() > Duration::from_secs(20) {
            break retries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused >= N as u64, "{refused} reply deliveries retried");
    assert_eq!(
        replies.lock().unwrap().len(),
        0,
        "a refused reply was received"
    );
    std::fs::write(
        &acl,
        "topic readwrite jobs/#\ntopic readwrite fogline/reply/#\n",
    )
    .unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &broker.child.id().to_string()])
        .status();
    let missing = unanswered(&replies, N, Duration::from_secs(30));
    let _ = sub.kill();
    let _ = sub.wait();
    assert!(missing.is_empty(), "never answered: {missing:?}");
    eprintln!("{refused} deliveries refused before the ACL allowed the replies");
}

enum Disruption {
    /// SIGTERM the broker (it saves its sessions) and start it again.
    BrokerRestart,
    /// Close the node's connections to the broker (through a relay), three times.
    CutConnections,
}

/// A TCP relay on loopback whose connections can be cut, to drop a client's connections
/// while the broker keeps its sessions.
struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn to(target: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let o = open.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { return };
                let Ok(b) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = c.set_nodelay(true);
                let _ = b.set_nodelay(true);
                let mut l = o.lock().unwrap();
                l.push(c.try_clone().unwrap());
                l.push(b.try_clone().unwrap());
                for (mut from, mut to) in [(c.try_clone().unwrap(), b.try_clone().unwrap()), (b, c)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, open }
    }

    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Publishes 500 messages with QoS `qos` to a node taking 8 at a time into an async queue
/// of 40 (the broker holds the rest), disrupts its broker connection while they run and
/// queue, checks every one is answered; returns the runs and the QoS 2 deliveries again
/// that were not stored again.
async fn under_load(qos: &str, disruption: Disruption) -> (u64, u64) {
    const N: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let store = d.join("mosq");
    std::fs::create_dir_all(&store).unwrap();
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 10000\nuser root\n",
        store.display()
    );
    let broker = Broker::with_config(d, port, &conf);
    let relay = Relay::to(port);
    let node_port = match disruption {
        Disruption::BrokerRestart => port,
        Disruption::CutConnections => relay.port,
    };
    let (node, _) = jobs_node(d, node_port, "max_queued = 40").await;
    let (mut sub, replies) = collect_replies(port);
    publish_jobs(port, qos, N);
    let answered = || replies.lock().unwrap().len();
    let wait_for = |n: usize| {
        let t = Instant::now();
        while answered() < n && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let _broker = match disruption {
        Disruption::BrokerRestart => {
            // Restart the broker (SIGTERM: it saves its sessions and queued messages)
            // while messages are in flight and queued.
            wait_for(40);
            let answered_before = answered();
            let mut broker = broker;
            let _ = Command::new("kill")
                .args(["-TERM", &broker.child.id().to_string()])
                .status();
            let _ = broker.child.wait();
            drop(broker);
            eprintln!("broker restarted with {answered_before} of {N} answered");
            assert!(
                answered_before < N,
                "every message was answered before the restart"
            );
            Broker::with_config(d, port, &conf)
        }
        Disruption::CutConnections => {
            for at in [60, 200, 340] {
                wait_for(at);
                relay.cut();
                eprintln!("connections cut with {} of {N} answered", answered());
            }
            assert!(answered() < N, "every message was answered before the cuts");
            broker
        }
    };
    let missing = unanswered(&replies, N, Duration::from_secs(60));
    let _ = sub.kill();
    let _ = sub.wait();
    if !missing.is_empty() {
        let log = std::fs::read_to_string(d.join("node.stderr")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("node log (last lines, newest first):\n{}", tail.join("\n"));
        let (_, m) = get(&authed(&node.token), format!("{}/metrics", node.url)).await;
        eprintln!(
            "{}",
            m.lines()
                .filter(|l| l.contains("function_name=\"wait\""))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        missing.is_empty(),
        "{} never answered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let ran = calls(&node, "wait", 200).await;
    let again =
        metric_value(&metrics(&node).await, "fogline_mqtt_duplicates_total").unwrap_or(0.0) as u64;
    eprintln!(
        "QoS {qos}: {ran} runs for {N} messages, {} replies, {again} deliveries again not run",
        replies.lock().unwrap().len()
    );
    (ran, again)
}
