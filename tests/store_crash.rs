//! Acknowledged writes survive `kill -9`.
//!
//! Each test re-runs this test binary as a child process (the `crash_child`
//! test, which does nothing unless the environment tells it what to do). The child
//! opens a store and commits batches in a loop, printing `ACK <seq> …` only after
//! `commit`/`write` returned. The parent reads a few hundred acks, SIGKILLs the child in
//! the middle of its stream, reopens the store and checks that every acknowledged write
//! is there with its content, that each batch is all there or not at all, and that the
//! file opens cleanly. Then it lets a new child continue on the same file, twice more.
//!
//! Batch `seq` writes the pair `a-<j>` / `b-<j>` (`j = seq % PAIRS`), both carrying
//! `seq` and a payload derived from it, so any stored value can be checked for being
//! one the child wrote whole; every tenth batch also creates a new object.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bramble::api::{ConfigMap, Kind, Object, ObjectKey};
use bramble::store::{LocalOp, LocalStore, Mode, Op, Store};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const MODE_ENV: &str = "BRAMBLE_CRASH_CHILD_MODE";
const PATH_ENV: &str = "BRAMBLE_CRASH_CHILD_PATH";
const START_ENV: &str = "BRAMBLE_CRASH_CHILD_START";

const PAIRS: u64 = 37;
const ACKS_PER_ROUND: usize = 300;
const ROUNDS: usize = 3;
/// How long a child may take to produce its acks before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(300);

fn payload(seq: u64) -> String {
    format!("{seq:x}.").repeat(1 + (seq % 97) as usize)
}

fn object(name: &str, seq: u64) -> Object {
    Object::ConfigMap(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            [
                ("seq".to_string(), seq.to_string()),
                ("payload".to_string(), payload(seq)),
            ]
            .into(),
        ),
        ..Default::default()
    })
}

fn local_value(seq: u64) -> Vec<u8> {
    format!("{seq}:{}", payload(seq)).into_bytes()
}

/// The child: commits forever, acknowledging each batch on stdout once it is durable.
#[test]
fn crash_child() {
    let (Ok(mode), Ok(path), Ok(start)) = (
        std::env::var(MODE_ENV),
        std::env::var(PATH_ENV),
        std::env::var(START_ENV),
    ) else {
        return;
    };
    let path = PathBuf::from(path);
    let start: u64 = start.parse().unwrap();
    // Written directly, not through `println!`, which the test harness may capture.
    let mut out = std::io::stdout().lock();
    // The harness has printed `test crash_child ... ` without a newline: end that line
    // so the first ack is a line of its own.
    writeln!(out).unwrap();
    match mode.as_str() {
        "master" => {
            let store = Store::open(&path).unwrap();
            for seq in start.. {
                let j = seq % PAIRS;
                let mut ops = vec![
                    Op::Put(object(&format!("a-{j}"), seq)),
                    Op::Put(object(&format!("b-{j}"), seq)),
                ];
                if seq % 10 == 0 {
                    ops.push(Op::Put(object(&format!("c-{seq}"), seq)));
                }
                let outcomes = store.commit(ops, Mode::Commit).unwrap();
                let rv = outcomes[0].object().resource_version();
                writeln!(out, "ACK {seq} {rv}").unwrap();
                out.flush().unwrap();
            }
        }
        "local" => {
            let store = LocalStore::open(&path).unwrap();
            for seq in start.. {
                let j = (seq % PAIRS).to_string();
                let mut batch = vec![
                    LocalOp::put("pods", j.clone(), local_value(seq)),
                    LocalOp::put("services", j, local_value(seq)),
                ];
                if seq % 10 == 0 {
                    batch.push(LocalOp::put(
                        "assignment",
                        seq.to_string(),
                        local_value(seq),
                    ));
                }
                store.write(batch).unwrap();
                writeln!(out, "ACK {seq} 0").unwrap();
                out.flush().unwrap();
            }
        }
        other => panic!("unknown {MODE_ENV} {other}"),
    }
}

/// Kills the child (if still running) and reaps it, also when the test fails.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a child on `path` from batch `start`, kills it with SIGKILL after
/// `ACKS_PER_ROUND` acks, and returns every ack it printed: `(seq, rv)`.
fn run_child_and_kill(mode: &str, path: &Path, start: u64) -> Vec<(u64, u64)> {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(MODE_ENV, mode)
        .env(PATH_ENV, path)
        .env(START_ENV, start.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let parse = |line: &str| -> Option<(u64, u64)> {
        let mut words = line.strip_prefix("ACK ")?.split(' ');
        Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
    };
    let deadline = Instant::now() + DEADLINE;
    let mut acks: Vec<(u64, u64)> = Vec::new();
    while acks.len() < ACKS_PER_ROUND {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => acks.extend(parse(&line)),
            Err(e) => panic!("child stopped acknowledging after {} acks: {e}", acks.len()),
        }
    }
    child.0.kill().unwrap(); // SIGKILL
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "child was killed, not finished");
    // Lines already in the pipe were acknowledged before the kill.
    reader.join().unwrap();
    acks.extend(rx.try_iter().filter_map(|l| parse(&l)));
    assert_eq!(acks[0].0, start, "the first ack was not recognised");
    acks
}

/// The newest acknowledged `(seq, rv)` per pair.
fn newest_per_pair(acks: &[(u64, u64)]) -> BTreeMap<u64, (u64, u64)> {
    let mut newest = BTreeMap::new();
    for &(seq, rv) in acks {
        let e = newest.entry(seq % PAIRS).or_insert((seq, rv));
        if seq >= e.0 {
            *e = (seq, rv);
        }
    }
    newest
}

fn seq_of(obj: &Object) -> u64 {
    let Object::ConfigMap(cm) = obj else {
        panic!("unexpected object {obj:?}")
    };
    let data = cm.data.as_ref().unwrap();
    let seq: u64 = data["seq"].parse().unwrap();
    assert_eq!(
        data["payload"],
        payload(seq),
        "{} holds a torn value",
        obj.name()
    );
    seq
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.redb");
    let mut acks = Vec::new();
    for round in 0..ROUNDS {
        let start = acks.iter().map(|&(seq, _)| seq + 1).max().unwrap_or(0);
        acks.extend(run_child_and_kill("master", &path, start));

        let store = Store::open(&path).expect("store opens cleanly after kill -9");
        let newest = newest_per_pair(&acks);
        let key = |name: String| ObjectKey::new(Kind::ConfigMap, "default", &name);
        for j in 0..PAIRS {
            let a = store.get(&key(format!("a-{j}")));
            let b = store.get(&key(format!("b-{j}")));
            let Some(&(acked_seq, acked_rv)) = newest.get(&j) else {
                assert_eq!(
                    a.is_some(),
                    b.is_some(),
                    "round {round}: half a batch for pair {j}"
                );
                continue;
            };
            let (a, b) = (a.unwrap(), b.unwrap());
            let (sa, sb) = (seq_of(&a), seq_of(&b));
            assert_eq!(sa, sb, "round {round}: pair {j} mixes two batches");
            assert_eq!(a.resource_version(), b.resource_version());
            assert_eq!(sa % PAIRS, j);
            assert!(
                sa >= acked_seq,
                "round {round}: pair {j} lost seq {acked_seq}, has {sa}"
            );
            if sa == acked_seq {
                assert_eq!(a.resource_version(), acked_rv, "round {round}: pair {j}");
            }
        }
        for &(seq, _) in acks.iter().filter(|(seq, _)| seq % 10 == 0) {
            let c = store
                .get(&key(format!("c-{seq}")))
                .unwrap_or_else(|| panic!("round {round}: acknowledged c-{seq} is missing"));
            assert_eq!(seq_of(&c), seq);
        }
        let max_rv = acks.iter().map(|&(_, rv)| rv).max().unwrap();
        assert!(store.resource_version() >= max_rv, "round {round}");
        // The counter continues: a new commit gets a version above every acked one.
        let out = store
            .commit(vec![Op::Put(object("probe", round as u64))], Mode::Commit)
            .unwrap();
        assert!(out[0].object().resource_version() > max_rv);
    }
}

#[test]
fn acknowledged_local_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.redb");
    let mut acks = Vec::new();
    let parse = |v: &[u8]| -> u64 {
        let text = std::str::from_utf8(v).unwrap();
        let (seq, rest) = text.split_once(':').unwrap();
        let seq: u64 = seq.parse().unwrap();
        assert_eq!(rest, payload(seq), "torn value");
        seq
    };
    for round in 0..ROUNDS {
        let start = acks.iter().map(|&(seq, _)| seq + 1).max().unwrap_or(0);
        acks.extend(run_child_and_kill("local", &path, start));

        let store = LocalStore::open(&path).expect("local store opens cleanly after kill -9");
        let newest = newest_per_pair(&acks);
        let pods: BTreeMap<_, _> = store.list("pods").unwrap().into_iter().collect();
        let services: BTreeMap<_, _> = store.list("services").unwrap().into_iter().collect();
        assert_eq!(
            pods.keys().collect::<Vec<_>>(),
            services.keys().collect::<Vec<_>>(),
            "round {round}: half a batch"
        );
        for (j, &(acked_seq, _)) in &newest {
            let pod = parse(&pods[&j.to_string()]);
            let svc = parse(&services[&j.to_string()]);
            assert_eq!(pod, svc, "round {round}: pair {j} mixes two batches");
            assert!(
                pod >= acked_seq,
                "round {round}: pair {j} lost seq {acked_seq}, has {pod}"
            );
        }
        for &(seq, _) in acks.iter().filter(|(seq, _)| seq % 10 == 0) {
            let v = store
                .get("assignment", &seq.to_string())
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged assignment {seq} missing"));
            assert_eq!(parse(&v), seq);
        }
    }
}
