//! taskscope's own Redis pub/sub connection: one socket, read with `redis-protocol`'s RESP2
//! codec (the one fred uses), each push handed to a callback in the order Redis sent it.
//!
//! Why not fred's `SubscriberClient`: fred gives every client nine broadcast channels (messages,
//! keyspace events, errors, reconnects, ...) of one capacity and allocates every slot up front,
//! and drops messages for a receiver that falls that capacity behind. The messages and keyspace
//! events had to survive bursts (16,384 slots, sized by measurement), so the two subscribers
//! kept 19.3 MB resident for channels that mostly carry nothing: at 10M tasks of history the
//! largest part of the heap after DuckDB (issue #22). Here nothing is preallocated: the
//! callback moves each push into a queue of the consumer's (capped, counted when full), and
//! keyspace events and messages arrive in one sequence, in Redis's order (taskscope opens
//! one such connection, in [`super::prefetch`], so that this order holds for everything).
//!
//! The connection task reconnects forever with backoff (100 ms doubling to 10 s), subscribes
//! again to every channel and pattern it was asked for, then delivers [`Push::Reconnected`]:
//! what happened while it was down is the consumer's to re-read. Subscribing while
//! disconnected records the subscription (made on connect) and answers at once.

use anyhow::Context;
use fred::bytes::Bytes;
use fred::bytes_utils::Str;
use fred::types::config::{Config, ServerConfig};
use futures::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

/// One thing Redis pushed, or a change of the connection.
#[derive(Debug)]
pub enum Push {
    /// A message on a subscribed channel, or on one matching a subscribed pattern.
    Message { channel: Str, payload: Bytes },
    /// A keyspace (`__keyspace@<db>__:<key>`, the operation in the payload) or key-event
    /// (`__keyevent@<db>__:<operation>`, the key in the payload) notification.
    Key {
        db: u32,
        operation: String,
        key: Bytes,
        /// A keyspace notification (else a key-event one).
        keyspace: bool,
    },
    /// The connection was lost and is back, subscriptions restored (never sent for the first
    /// connection): pushes of the time between are lost.
    Reconnected,
}

/// The handle: subscribe, unsubscribe, wait for the first connection, quit. Dropping it ends
/// the connection.
pub struct Subscriber {
    control: mpsc::UnboundedSender<Control>,
    connected: watch::Receiver<bool>,
}

enum Control {
    Change {
        command: &'static str,
        names: Vec<String>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Quit,
}

/// Where to connect, from the Redis URL (fred parses it, as for the command client).
pub struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(10);

impl Target {
    /// The server and credentials of a Redis URL; an error for a URL fred cannot use or for
    /// more than one server (found at start, before any thread is spawned).
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let config = Config::from_url(url)
            .with_context(|| format!("cannot use the Redis URL {:?}", super::redact(url)))?;
        let ServerConfig::Centralized { server } = &config.server else {
            anyhow::bail!(
                "{}: only a single Redis server (redis://host:port/db) is supported",
                super::redact(url)
            );
        };
        Ok(Target {
            host: server.host.to_string(),
            port: server.port,
            username: config.username.clone(),
            password: config.password.clone(),
        })
    }
}

impl Subscriber {
    /// Starts the connection task for `target` on the current runtime; `deliver` gets every
    /// push (called on the connection task: it must not wait) and returns `false` once nobody
    /// consumes them (the task ends).
    pub fn spawn(
        target: Target,
        name: &'static str,
        deliver: impl FnMut(Push) -> bool + Send + 'static,
    ) -> Self {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (connected_tx, connected) = watch::channel(false);
        tokio::spawn(run(target, name, control_rx, connected_tx, deliver));
        Self { control, connected }
    }

    /// Waits for the first connection (retried for as long as it takes).
    pub async fn connected(&self) -> anyhow::Result<()> {
        let mut connected = self.connected.clone();
        connected
            .wait_for(|c| *c)
            .await
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("the subscriber's connection task ended"))
    }

    pub async fn subscribe(&self, channels: Vec<String>) -> anyhow::Result<()> {
        self.change("SUBSCRIBE", channels).await
    }

    pub async fn psubscribe(&self, patterns: Vec<String>) -> anyhow::Result<()> {
        self.change("PSUBSCRIBE", patterns).await
    }

    pub async fn punsubscribe(&self, patterns: Vec<String>) -> anyhow::Result<()> {
        self.change("PUNSUBSCRIBE", patterns).await
    }

    /// Subscribes or unsubscribes; answered once Redis confirmed every name (or at once while
    /// disconnected: made on connect).
    async fn change(&self, command: &'static str, names: Vec<String>) -> anyhow::Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.control
            .send(Control::Change {
                command,
                names,
                done,
            })
            .map_err(|_| anyhow::anyhow!("the subscriber's connection task ended"))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("{command} failed: {e}")),
            Err(_) => Err(anyhow::anyhow!("the subscriber's connection task ended")),
        }
    }

    /// Ends the connection.
    pub fn quit(&self) {
        let _ = self.control.send(Control::Quit);
    }
}

/// The channels and patterns to be subscribed to on every connection.
#[derive(Default)]
struct Wanted {
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
}

impl Wanted {
    /// The commands that subscribe to everything wanted.
    fn commands(&self) -> Vec<(&'static str, Vec<String>)> {
        [
            ("SUBSCRIBE", &self.channels),
            ("PSUBSCRIBE", &self.patterns),
        ]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(verb, names)| (verb, names.iter().cloned().collect()))
        .collect()
    }

    fn apply(&mut self, command: &str, names: &[String]) {
        let (set, add) = match command {
            "SUBSCRIBE" => (&mut self.channels, true),
            "UNSUBSCRIBE" => (&mut self.channels, false),
            "PSUBSCRIBE" => (&mut self.patterns, true),
            _ => (&mut self.patterns, false),
        };
        for name in names {
            if add {
                set.insert(name.clone());
            } else {
                set.remove(name);
            }
        }
    }
}

/// A request waiting for Redis's confirmations (one per name).
struct Awaited {
    confirmations: usize,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

type Connection = Framed<TcpStream, Resp2>;

async fn run(
    target: Target,
    name: &'static str,
    mut control: mpsc::UnboundedReceiver<Control>,
    connected: watch::Sender<bool>,
    mut deliver: impl FnMut(Push) -> bool,
) {
    let mut wanted = Wanted::default();
    let mut first = true;
    let mut retry = FIRST_RETRY;
    loop {
        let attempt = connect(&target, wanted.commands());
        tokio::pin!(attempt);
        // Connecting; changes asked for meanwhile are made once connected, in order.
        let mut meanwhile: Vec<(&'static str, Vec<String>)> = Vec::new();
        let conn = loop {
            tokio::select! {
                c = &mut attempt => break c,
                c = control.recv() => match c {
                    None | Some(Control::Quit) => return,
                    Some(Control::Change { command, names, done }) => {
                        wanted.apply(command, &names);
                        meanwhile.push((command, names));
                        let _ = done.send(Ok(()));
                    }
                },
            }
        };
        let conn = match conn {
            Ok((mut conn, mut awaited)) => {
                let mut sent = Ok(());
                for (verb, names) in meanwhile {
                    awaited.push_back(Awaited {
                        confirmations: names.len(),
                        done: None,
                    });
                    sent = conn.send(command(verb, &names)).await;
                    if sent.is_err() {
                        break;
                    }
                }
                sent.map(|()| (conn, awaited)).map_err(anyhow::Error::from)
            }
            Err(e) => Err(e),
        };
        let (mut conn, mut awaited) = match conn {
            Ok(c) => c,
            Err(e) => {
                if first || retry >= LAST_RETRY {
                    warn!(subscriber = name, error = %e, retry_in_ms = retry.as_millis() as u64,
                        "Cannot connect the Redis subscriber; retrying.");
                } else {
                    debug!(subscriber = name, error = %e, "Cannot connect the Redis subscriber; retrying.");
                }
                let pause = tokio::time::sleep(retry);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = &mut pause => break,
                        c = control.recv() => match c {
                            None | Some(Control::Quit) => return,
                            Some(Control::Change { command, names, done }) => {
                                wanted.apply(command, &names);
                                let _ = done.send(Ok(()));
                            }
                        },
                    }
                }
                retry = (retry * 2).min(LAST_RETRY);
                continue;
            }
        };
        retry = FIRST_RETRY;
        connected.send_replace(true);
        if !std::mem::take(&mut first) {
            info!(subscriber = name, "The Redis subscriber reconnected.");
            if !deliver(Push::Reconnected) {
                return;
            }
        }
        let lost = loop {
            tokio::select! {
                frame = conn.next() => match frame {
                    Some(Ok(frame)) => {
                        if !on_frame(frame, &mut awaited, &mut deliver) {
                            return;
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the connection was closed".to_string(),
                },
                c = control.recv() => match c {
                    None | Some(Control::Quit) => {
                        let _ = conn.send(command("QUIT", &[])).await;
                        return;
                    }
                    Some(Control::Change { command: verb, names, done }) => {
                        wanted.apply(verb, &names);
                        awaited.push_back(Awaited { confirmations: names.len(), done: Some(done) });
                        if let Err(e) = conn.send(command(verb, &names)).await {
                            break e.to_string();
                        }
                    }
                },
            }
        };
        warn!(subscriber = name, error = %lost, "The Redis subscriber lost its connection; reconnecting.");
        // Recorded in `wanted`: made again on connect.
        for a in awaited.drain(..) {
            if let Some(done) = a.done {
                let _ = done.send(Ok(()));
            }
        }
    }
}

/// Connects, authenticates and subscribes to everything wanted (confirmations awaited by the
/// read loop).
async fn connect(
    target: &Target,
    subscriptions: Vec<(&'static str, Vec<String>)>,
) -> anyhow::Result<(Connection, VecDeque<Awaited>)> {
    let socket = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}"))??;
    socket.set_nodelay(true)?;
    let mut conn = Framed::new(socket, Resp2::default());
    if let Some(password) = &target.password {
        let mut args = Vec::new();
        args.extend(target.username.clone());
        args.push(password.clone());
        conn.send(command("AUTH", &args)).await?;
        match conn.next().await {
            Some(Ok(BytesFrame::Error(e))) => anyhow::bail!("Redis refused AUTH: {e}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the connection was closed during AUTH"),
        }
    }
    let mut awaited = VecDeque::new();
    for (verb, names) in subscriptions {
        conn.send(command(verb, &names)).await?;
        awaited.push_back(Awaited {
            confirmations: names.len(),
            done: None,
        });
    }
    Ok((conn, awaited))
}

fn command(verb: &str, args: &[String]) -> BytesFrame {
    BytesFrame::Array(
        std::iter::once(Bytes::copy_from_slice(verb.as_bytes()))
            .chain(args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())))
            .map(BytesFrame::BulkString)
            .collect(),
    )
}

/// Handles one frame from Redis; `false` once nobody consumes pushes.
fn on_frame(
    frame: BytesFrame,
    awaited: &mut VecDeque<Awaited>,
    deliver: &mut impl FnMut(Push) -> bool,
) -> bool {
    let parts = match frame {
        BytesFrame::Array(parts) => parts,
        BytesFrame::Error(e) => {
            // The answer to the oldest request still waiting.
            match awaited.pop_front() {
                Some(Awaited {
                    done: Some(done), ..
                }) => {
                    let _ = done.send(Err(e.to_string()));
                }
                _ => warn!(error = %e, "Redis answered the subscriber with an error."),
            }
            return true;
        }
        _ => return true,
    };
    let bytes = |f: &BytesFrame| match f {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b.clone()),
        _ => None,
    };
    let Some(kind) = parts.first().and_then(bytes) else {
        return true;
    };
    match &kind[..] {
        b"message" if parts.len() == 3 => match (bytes(&parts[1]), bytes(&parts[2])) {
            (Some(channel), Some(payload)) => deliver(push(channel, payload)),
            _ => true,
        },
        b"pmessage" if parts.len() == 4 => match (bytes(&parts[2]), bytes(&parts[3])) {
            (Some(channel), Some(payload)) => deliver(push(channel, payload)),
            _ => true,
        },
        b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe" => {
            if let Some(front) = awaited.front_mut() {
                front.confirmations = front.confirmations.saturating_sub(1);
                if front.confirmations == 0 {
                    if let Some(done) = awaited.pop_front().and_then(|a| a.done) {
                        let _ = done.send(Ok(()));
                    }
                }
            }
            true
        }
        _ => true,
    }
}

/// A message, or the keyspace or key-event notification its channel names.
fn push(channel: Bytes, payload: Bytes) -> Push {
    if let Some((db, rest, keyspace)) = notification(&channel) {
        let (operation, key) = if keyspace {
            (payload, rest)
        } else {
            (rest, payload)
        };
        return Push::Key {
            db,
            operation: String::from_utf8_lossy(&operation).into_owned(),
            key,
            keyspace,
        };
    }
    let channel = Str::from_inner(channel.clone())
        .unwrap_or_else(|_| Str::from(String::from_utf8_lossy(&channel).into_owned()));
    Push::Message { channel, payload }
}

/// `__keyspace@<db>__:<rest>` or `__keyevent@<db>__:<rest>`: the database, the rest, and
/// whether it is a keyspace one.
fn notification(channel: &Bytes) -> Option<(u32, Bytes, bool)> {
    let keyspace = channel.starts_with(b"__keyspace@");
    if !keyspace && !channel.starts_with(b"__keyevent@") {
        return None;
    }
    let after_at = b"__keyspace@".len();
    let end = channel[after_at..]
        .windows(3)
        .position(|w| w == b"__:")
        .map(|p| after_at + p)?;
    let db = std::str::from_utf8(&channel[after_at..end])
        .ok()?
        .parse()
        .ok()?;
    Some((db, channel.slice(end + 3..), keyspace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> BytesFrame {
        BytesFrame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn pushes(frames: Vec<BytesFrame>) -> Vec<Push> {
        let mut out = Vec::new();
        let mut awaited = VecDeque::new();
        for f in frames {
            assert!(on_frame(f, &mut awaited, &mut |p| {
                out.push(p);
                true
            }));
        }
        out
    }

    #[test]
    fn messages_keyspace_and_key_events_are_told_apart() {
        let got = pushes(vec![
            BytesFrame::Array(vec![bulk("message"), bulk("celeryev.task"), bulk("{}")]),
            BytesFrame::Array(vec![
                bulk("pmessage"),
                bulk("__keyspace@0__:dramatiq:*"),
                bulk("__keyspace@0__:dramatiq:default"),
                bulk("lpush"),
            ]),
            BytesFrame::Array(vec![
                bulk("pmessage"),
                bulk("__keyevent@*__:new"),
                bulk("__keyevent@12__:new"),
                bulk("rq:job:1"),
            ]),
            BytesFrame::Array(vec![bulk("psubscribe"), bulk("x"), BytesFrame::Integer(1)]),
            // Garbage never panics.
            BytesFrame::Array(vec![bulk("pmessage"), bulk("only two")]),
            BytesFrame::Array(vec![
                bulk("pmessage"),
                bulk("p"),
                bulk("__keyspace@x__:k"),
                bulk("set"),
            ]),
            BytesFrame::Integer(3),
        ]);
        assert!(
            matches!(&got[0], Push::Message { channel, payload } if &**channel == "celeryev.task" && &payload[..] == b"{}")
        );
        assert!(
            matches!(&got[1], Push::Key { db: 0, operation, key, keyspace: true } if operation == "lpush" && &key[..] == b"dramatiq:default")
        );
        assert!(
            matches!(&got[2], Push::Key { db: 12, operation, key, keyspace: false } if operation == "new" && &key[..] == b"rq:job:1")
        );
        // A keyspace-looking channel with no database number is an ordinary message.
        assert!(matches!(&got[3], Push::Message { .. }));
        assert_eq!(got.len(), 4);
    }

    /// A command over a plain socket; returns the first line of the reply.
    fn raw(conn: &mut std::net::TcpStream, args: &[&str]) -> String {
        use std::io::{BufRead, Write};
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        conn.write_all(out.as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(conn.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn authenticates_subscribes_and_delivers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--requirepass", "s3cret"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut admin = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("redis-server did not start: {e}"),
            }
        };
        assert!(raw(&mut admin, &["AUTH", "s3cret"]).starts_with("+OK"));
        assert!(raw(
            &mut admin,
            &["CONFIG", "SET", "notify-keyspace-events", "K$"]
        )
        .starts_with("+OK"));

        let (tx, mut rx) = mpsc::unbounded_channel();
        let url = format!("redis://:s3cret@127.0.0.1:{port}/0");
        let target = Target::from_url(&url).unwrap();
        let sub = Subscriber::spawn(target, "test", move |p| tx.send(p).is_ok());
        // Asked before the connection is up: made on connect.
        sub.psubscribe(vec!["__keyspace@0__:job:*".into()])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub.connected())
            .await
            .unwrap()
            .unwrap();
        // Answered once Redis confirmed it.
        sub.subscribe(vec!["chan".into()]).await.unwrap();
        // Both subscriptions are in place before anything is published: Redis counts them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !raw(&mut admin, &["PUBSUB", "NUMPAT"]).starts_with(":1") {
            assert!(
                std::time::Instant::now() < deadline,
                "PSUBSCRIBE never made"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        raw(&mut admin, &["SET", "job:1", "x"]);
        raw(&mut admin, &["PUBLISH", "chan", "hello"]);
        raw(&mut admin, &["SET", "other", "x"]);
        raw(&mut admin, &["PUBLISH", "chan", "bye"]);
        let mut got = Vec::new();
        while got.len() < 3 {
            let push = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a push within 10 s")
                .unwrap();
            got.push(match push {
                Push::Key {
                    db, operation, key, ..
                } => {
                    format!("key {db} {operation} {}", String::from_utf8_lossy(&key))
                }
                Push::Message { channel, payload } => {
                    format!(
                        "message {} {}",
                        &*channel,
                        String::from_utf8_lossy(&payload)
                    )
                }
                Push::Reconnected => "reconnected".into(),
            });
        }
        assert_eq!(
            got,
            ["key 0 set job:1", "message chan hello", "message chan bye"],
            "in Redis's order; `other` matches no pattern"
        );
        sub.quit();
        let _ = server.kill();
        let _ = server.wait();
    }

    #[test]
    fn a_request_is_answered_after_every_name_is_confirmed() {
        let (done, mut answer) = oneshot::channel();
        let mut awaited = VecDeque::from([Awaited {
            confirmations: 2,
            done: Some(done),
        }]);
        let mut deliver = |_| true;
        let ack = || BytesFrame::Array(vec![bulk("psubscribe"), bulk("a"), BytesFrame::Integer(1)]);
        on_frame(ack(), &mut awaited, &mut deliver);
        assert!(answer.try_recv().is_err(), "one of two confirmed");
        on_frame(ack(), &mut awaited, &mut deliver);
        assert_eq!(answer.try_recv(), Ok(Ok(())));
        assert!(awaited.is_empty());
    }
}
