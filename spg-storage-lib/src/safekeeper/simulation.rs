//! Deterministic simulation of the election and replication protocol, generic over the
//! [`WalStore`] the safekeepers keep their state in: SPG's own stores run it, and so can yours.
//!
//! Three safekeepers (the real [`Safekeeper`] over your store) and any number of computes
//! exchange messages over a network that reorders, loses and partitions; safekeepers crash
//! (their store loses what [`CrashableWalStore::crash`] says a crash loses) and restart; computes
//! crash, and new generations start while old ones keep running. The invariants of DESIGN §3
//! are checked as the schedule runs:
//!
//! - **log safety**: every byte a safekeeper holds below its flush (and, after a crash, every
//!   byte its store still reports) is what the single writer of that timeline wrote there;
//! - **single writer**: no commit written after a newer generation was elected is acknowledged;
//! - **durability**: the newest elected generation recovers every acknowledged commit;
//! - **liveness**: with the network healed and every safekeeper up, a fresh generation starts
//!   and gets a commit acknowledged.
//!
//! Every schedule is a function of its [`Schedule`] (a seed and the mix of events it draws),
//! so a failure replays exactly:
//!
//! ```
//! use spg_storage_lib::safekeeper::simulation::{run, Schedule};
//! use spg_storage_lib::safekeeper::MemWalStore;
//!
//! let outcome = run(&Schedule::from_seed(7, 400), MemWalStore::new).expect("invariants hold");
//! assert!(outcome.steps == 400);
//! ```
//!
//! [`run_seeds`] runs many seeds; with the `testing` feature, [`strategies`] has `proptest`
//! strategies for schedules, so proptest searches (and shrinks) the mix of crashes and
//! partitions. Inside this crate, `SPG_SIM_SEED=<n> cargo test -p spg-storage-lib simulation --
//! --nocapture` replays one seed and prints its trace; `SPG_SIM_SEEDS=<count>` runs more.

use std::collections::{BTreeMap, VecDeque};

use spg_core::{Generation, Lsn, TimelineId};

use super::*;
use crate::StorageError;

const N: usize = 3;
const QUORUM: usize = 2;
/// Segment size of the simulated primary: it can serve WAL from the start of the segment its
/// timeline began in, and no earlier (older WAL comes from peers), as a real primary.
const SEG: u64 = 32;
const RECORD_MAGIC: u8 = 0xC7;

/// splitmix64: small, fast, and stable across crate versions, so seeds replay forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Elect {
        g: Generation,
    },
    Vote {
        vote: Vote,
    },
    Fetch {
        g: Generation,
    },
    FetchReply {
        log: WalLog,
        bytes: Vec<u8>,
    },
    Append {
        g: Generation,
        path: History,
        serve_from: Lsn,
        source: usize,
        lsn: Lsn,
        bytes: Vec<u8>,
    },
    Position {
        g: Generation,
        at: Lsn,
    },
    Ack {
        g: Generation,
        flush: Lsn,
    },
    PeerFetch {
        path: History,
        from: Lsn,
        to: Lsn,
    },
    PeerData {
        path: History,
        lsn: Lsn,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Sk(usize),
    Compute(usize),
}

#[derive(Debug)]
struct Envelope {
    from: Node,
    to: Node,
    msg: Msg,
}

/// Which primary a safekeeper streams from (the daemon's connection state, lost on a crash).
#[derive(Debug, Clone)]
struct Link {
    g: Generation,
    compute: usize,
    path: History,
    serve_from: Lsn,
    source: usize,
}

struct SimSk<S> {
    sk: Option<Safekeeper<S>>,
    down: Option<S>,
    link: Option<Link>,
}

/// A [`WalStore`] the simulation can take through crashes.
pub trait CrashableWalStore: WalStore {
    /// Crash: afterwards the store holds what a restart would find. [`MemWalStore`] loses
    /// everything not synced, as a power loss does (the contract of [`WalStore`] says what
    /// must survive); a store over real files can reopen its directory, which is a process
    /// crash (the kernel keeps unsynced writes), unless it runs on a disk that can lose them.
    fn crash(&mut self);
}

impl CrashableWalStore for MemWalStore {
    fn crash(&mut self) {
        MemWalStore::crash(self)
    }
}

/// How often each kind of event is drawn (relative weights; 0 never draws it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventWeights {
    /// A message is delivered (or lost, or dropped by a partition).
    pub deliver: u64,
    /// A streaming compute writes commits.
    pub commit: u64,
    /// A compute resends what it is waiting on (votes, recovery, WAL).
    pub tick_compute: u64,
    /// A safekeeper syncs and acknowledges.
    pub flush_sk: u64,
    /// A safekeeper fetches WAL it lacks from a peer.
    pub tick_sk: u64,
    /// A safekeeper crashes.
    pub crash_sk: u64,
    /// A crashed safekeeper restarts.
    pub restart_sk: u64,
    /// A compute crashes.
    pub crash_compute: u64,
    /// A new generation starts (while older ones may still run).
    pub start_compute: u64,
    /// A safekeeper is cut off from everyone, or joins again.
    pub isolate: u64,
    /// One compute–safekeeper link is cut, or heals.
    pub cut_link: u64,
}

impl EventWeights {
    fn as_array(&self) -> [u64; 11] {
        [
            self.deliver,
            self.commit,
            self.tick_compute,
            self.flush_sk,
            self.tick_sk,
            self.crash_sk,
            self.restart_sk,
            self.crash_compute,
            self.start_compute,
            self.isolate,
            self.cut_link,
        ]
    }
}

/// One simulated run: what it draws its events from and how long it runs before the network
/// heals and liveness is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Seeds every random choice (which event, which node, which message).
    pub seed: u64,
    /// Events before the final settling.
    pub steps: usize,
    /// Messages lost, per thousand.
    pub loss_per_mille: u64,
    /// The mix of events.
    pub weights: EventWeights,
}

impl Schedule {
    /// The schedule seed `seed` stands for, mix included (swarm testing: each seed draws its
    /// own mix, so some schedules are all partitions, others all crashes).
    pub fn from_seed(seed: u64, steps: usize) -> Schedule {
        let mut rng = Rng(seed ^ 0x5EED_5EED_5EED_5EED);
        let loss_per_mille = [0, 20, 100, 300][rng.below(4) as usize];
        let mut draw = |i: usize| match i {
            0 => 40 + rng.below(40),
            1..=4 => 1 + rng.below(15),
            _ => rng.below(6),
        };
        let w: Vec<u64> = (0..11).map(&mut draw).collect();
        Schedule {
            seed,
            steps,
            loss_per_mille,
            weights: EventWeights {
                deliver: w[0],
                commit: w[1],
                tick_compute: w[2],
                flush_sk: w[3],
                tick_sk: w[4],
                crash_sk: w[5],
                restart_sk: w[6],
                crash_compute: w[7],
                start_compute: w[8],
                isolate: w[9],
                cut_link: w[10],
            },
        }
    }
}

/// What a schedule that kept every invariant did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Events run (before settling).
    pub steps: usize,
    /// Commits acknowledged by a quorum.
    pub acknowledged: usize,
    /// Generations that got elected, recovered and streamed.
    pub promotions: usize,
    /// What happened, one line per event of note.
    pub trace: Vec<String>,
}

/// A broken invariant (or a store error), with the schedule that replays it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The schedule.
    pub schedule: Schedule,
    /// What went wrong.
    pub error: String,
    /// What happened up to the failure, one line per event of note.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = self.trace.len().saturating_sub(60);
        write!(
            f,
            "seed {} ({} steps): {}\nschedule: {:?}\nlast events:\n{}",
            self.schedule.seed,
            self.schedule.steps,
            self.error,
            self.schedule,
            self.trace[tail..].join("\n")
        )
    }
}

impl std::error::Error for Failure {}

/// Run `schedule` with three safekeepers, each over a store `new_store` makes (empty).
pub fn run<S: CrashableWalStore>(
    schedule: &Schedule,
    mut new_store: impl FnMut() -> S,
) -> Result<Outcome, Box<Failure>> {
    let fail = |error: String, trace: Vec<String>| {
        Box::new(Failure {
            schedule: schedule.clone(),
            error,
            trace,
        })
    };
    let mut w = World::new(schedule, &mut new_store).map_err(|e| fail(e, Vec::new()))?;
    let result = (0..schedule.steps)
        .try_for_each(|i| w.step(i))
        .and_then(|()| w.check_logs())
        .and_then(|()| w.settle());
    match result {
        Ok(()) => Ok(Outcome {
            steps: schedule.steps,
            acknowledged: w.acked.len(),
            promotions: w.starts_streaming,
            trace: w.trace,
        }),
        Err(e) => Err(fail(e, w.trace)),
    }
}

/// What [`run_seeds`] saw over every schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Schedules run.
    pub schedules: usize,
    /// Commits acknowledged, over all schedules.
    pub acknowledged: usize,
    /// Generations promoted, over all schedules.
    pub promotions: usize,
}

/// Run the schedules of `seeds` ([`Schedule::from_seed`]), `steps` events each; the first
/// failure ends the run. A run in which nothing was acknowledged or promoted is a failure too:
/// the schedules must exercise the protocol, not idle.
pub fn run_seeds<S: CrashableWalStore>(
    seeds: std::ops::Range<u64>,
    steps: usize,
    mut new_store: impl FnMut() -> S,
) -> Result<Summary, Box<Failure>> {
    let mut sum = Summary::default();
    let mut last = None;
    for seed in seeds {
        let schedule = Schedule::from_seed(seed, steps);
        let o = run(&schedule, &mut new_store)?;
        sum.schedules += 1;
        sum.acknowledged += o.acknowledged;
        sum.promotions += o.promotions;
        last = Some(schedule);
    }
    match last {
        Some(schedule) if sum.acknowledged == 0 || sum.promotions == 0 => Err(Box::new(Failure {
            schedule,
            error: format!(
                "the schedules idled: {} commits acknowledged, {} promotions",
                sum.acknowledged, sum.promotions
            ),
            trace: Vec::new(),
        })),
        _ => Ok(sum),
    }
}

/// `proptest` strategies for schedules of crashes and partitions.
#[cfg(feature = "testing")]
pub mod strategies {
    use proptest::prelude::*;

    use super::{EventWeights, Schedule};

    /// Event mixes: delivery always possible (messages must flow), every other kind of event
    /// from never to frequent, so shrinking finds the fewest kinds of fault that break a store.
    pub fn weights() -> impl Strategy<Value = EventWeights> {
        (
            (1u64..80, 0u64..16, 0u64..16, 0u64..16, 0u64..16, 0u64..8),
            (0u64..8, 0u64..8, 0u64..8, 0u64..8, 0u64..8),
        )
            .prop_map(
                |(
                    (deliver, commit, tick_compute, flush_sk, tick_sk, crash_sk),
                    (restart_sk, crash_compute, start_compute, isolate, cut_link),
                )| EventWeights {
                    deliver,
                    commit,
                    tick_compute,
                    flush_sk,
                    tick_sk,
                    crash_sk,
                    restart_sk,
                    crash_compute,
                    start_compute,
                    isolate,
                    cut_link,
                },
            )
    }

    /// Schedules of up to `max_steps` events, with any seed, loss rate and event mix.
    pub fn schedules(max_steps: usize) -> impl Strategy<Value = Schedule> {
        (
            any::<u64>(),
            1..=max_steps.max(1),
            prop_oneof![Just(0u64), Just(20), Just(100), Just(300)],
            weights(),
        )
            .prop_map(|(seed, steps, loss_per_mille, weights)| Schedule {
                seed,
                steps,
                loss_per_mille,
                weights,
            })
    }

    /// Long schedules in which messages flow, commits are written and safekeepers crash
    /// often (and restart): the faults a store's durability is tested by.
    pub fn crash_heavy(max_steps: usize) -> impl Strategy<Value = Schedule> {
        schedules(max_steps).prop_map(move |mut s| {
            s.steps = s.steps.max(max_steps / 2);
            s.weights.deliver = s.weights.deliver.max(40);
            s.weights.crash_sk = s.weights.crash_sk.max(4);
            s.weights.restart_sk = s.weights.restart_sk.max(4);
            s.weights.commit = s.weights.commit.max(8);
            s.weights.flush_sk = s.weights.flush_sk.max(4);
            s.weights.start_compute = s.weights.start_compute.max(1);
            s
        })
    }
}

struct Stream {
    tli: TimelineId,
    path: History,
    wal: Vec<u8>,
    serve_from: Lsn,
    source: usize,
    pos: [Option<Lsn>; N],
    acks: [Lsn; N],
    /// Commits waiting for the quorum: id, start, end, and the newest generation a quorum had
    /// promised when the commit was written.
    pending: VecDeque<(u32, Lsn, Lsn, Generation)>,
}

enum Phase {
    Electing(BTreeMap<usize, WalLog>),
    Recovering { source: usize, expect: WalLog },
    Streaming(Box<Stream>),
    Dead,
}

struct Compute {
    g: Generation,
    phase: Phase,
}

#[derive(Debug, Clone)]
struct Acked {
    g: Generation,
    id: u32,
    start: Lsn,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Deliver,
    Commit,
    TickCompute,
    FlushSk,
    TickSk,
    CrashSk,
    RestartSk,
    CrashCompute,
    StartCompute,
    Isolate,
    CutLink,
}

const EVENTS: [Event; 11] = [
    Event::Deliver,
    Event::Commit,
    Event::TickCompute,
    Event::FlushSk,
    Event::TickSk,
    Event::CrashSk,
    Event::RestartSk,
    Event::CrashCompute,
    Event::StartCompute,
    Event::Isolate,
    Event::CutLink,
];

struct World<S> {
    weights: [u64; 11],
    rng: Rng,
    sks: Vec<SimSk<S>>,
    computes: Vec<Compute>,
    net: Vec<Envelope>,
    isolated: [bool; N],
    /// Cut links between a compute and a safekeeper (both directions).
    cut: std::collections::BTreeSet<(usize, usize)>,
    /// The newest generation whose compute has collected a quorum of promises.
    elected: Generation,
    loss_per_mille: u64,
    next_gen: u64,
    next_id: u32,
    acked: Vec<Acked>,
    truth: BTreeMap<TimelineId, Vec<u8>>,
    trace: Vec<String>,
    starts_streaming: usize,
}

type Check = Result<(), String>;

/// Parse simulated WAL records from LSN 0; the end of the last complete record.
fn end_of_records(wal: &[u8]) -> usize {
    let mut at = 0;
    while at + 2 <= wal.len() && wal[at] == RECORD_MAGIC {
        let len = wal[at + 1] as usize;
        if len < 5 || at + len > wal.len() {
            break;
        }
        at += len;
    }
    at
}

impl<S: CrashableWalStore> World<S> {
    fn new(schedule: &Schedule, new_store: &mut dyn FnMut() -> S) -> Result<World<S>, String> {
        let mut sks = Vec::with_capacity(N);
        for k in 0..N {
            let sk = Safekeeper::open(new_store())
                .map_err(|e| format!("sk {k}: an empty store does not open: {e}"))?;
            sks.push(SimSk {
                sk: Some(sk),
                down: None,
                link: None,
            });
        }
        let loss_per_mille = schedule.loss_per_mille.min(1000);
        Ok(World {
            weights: schedule.weights.as_array(),
            rng: Rng(schedule.seed),
            sks,
            computes: Vec::new(),
            net: Vec::new(),
            isolated: [false; N],
            cut: Default::default(),
            elected: Generation::NONE,
            loss_per_mille,
            next_gen: 1,
            next_id: 1,
            acked: Vec::new(),
            truth: BTreeMap::new(),
            trace: Vec::new(),
            starts_streaming: 0,
        })
    }

    fn pick_event(&mut self) -> Event {
        let total: u64 = self.weights.iter().sum();
        if total == 0 {
            return Event::Deliver;
        }
        let mut r = self.rng.below(total);
        for (i, w) in self.weights.iter().enumerate() {
            if r < *w {
                return EVENTS[i];
            }
            r -= w;
        }
        Event::Deliver
    }

    fn log(&mut self, s: String) {
        self.trace.push(s);
    }

    fn send(&mut self, from: Node, to: Node, msg: Msg) {
        self.net.push(Envelope { from, to, msg });
    }

    fn start_compute(&mut self) {
        let g = Generation(self.next_gen);
        self.next_gen += 1;
        let c = self.computes.len();
        self.computes.push(Compute {
            g,
            phase: Phase::Electing(BTreeMap::new()),
        });
        self.log(format!("compute {c} starts as {g}"));
        for i in 0..N {
            self.send(Node::Compute(c), Node::Sk(i), Msg::Elect { g });
        }
    }

    fn deliver(&mut self, lossless: bool) -> Check {
        if self.net.is_empty() {
            return Ok(());
        }
        let i = self.rng.below(self.net.len() as u64) as usize;
        let env = self.net.swap_remove(i);
        let isolated = |n: Node| matches!(n, Node::Sk(k) if self.isolated[k]);
        let link = match (env.from, env.to) {
            (Node::Compute(c), Node::Sk(k)) | (Node::Sk(k), Node::Compute(c)) => Some((c, k)),
            _ => None,
        };
        let cut = link.is_some_and(|l| self.cut.contains(&l));
        if !lossless
            && (isolated(env.from)
                || isolated(env.to)
                || cut
                || self.rng.below(1000) < self.loss_per_mille)
        {
            return Ok(());
        }
        match env.to {
            Node::Sk(k) => self.on_sk(k, env.from, env.msg),
            Node::Compute(c) => self.on_compute(c, env.from, env.msg),
        }
    }

    fn on_sk(&mut self, k: usize, from: Node, msg: Msg) -> Check {
        let me = Node::Sk(k);
        let Some(sk) = self.sks[k].sk.as_mut() else {
            return Ok(());
        };
        match msg {
            Msg::Elect { g } => {
                let vote = sk.elect(g).map_err(|e| e.to_string())?;
                if sk.following().is_none() {
                    self.sks[k].link = None;
                }
                self.send(me, from, Msg::Vote { vote });
            }
            Msg::Fetch { g } => {
                // Recovery reads are fenced too: a newer generation owns this log now.
                if sk.generation() != g {
                    let vote = Vote::Reject {
                        current: sk.generation(),
                    };
                    self.send(me, from, Msg::Vote { vote });
                    return Ok(());
                }
                let log = sk.log().clone();
                let bytes = sk
                    .read(log.start, (log.flush.0 - log.start.0) as usize)
                    .map_err(|e| e.to_string())?;
                self.send(me, from, Msg::FetchReply { log, bytes });
            }
            Msg::Append {
                g,
                path,
                serve_from,
                source,
                lsn,
                bytes,
            } => {
                let Node::Compute(c) = from else {
                    return Err("append from a safekeeper".into());
                };
                if sk.following() != Some(g) {
                    match sk.follow(g, &path) {
                        Err(StorageError::StaleGeneration { .. }) => return Ok(()),
                        Err(e) => return Err(e.to_string()),
                        Ok(at) => {
                            self.sks[k].link = Some(Link {
                                g,
                                compute: c,
                                path: path.clone(),
                                serve_from,
                                source,
                            });
                            self.log(format!("sk {k} follows {g} from {at}"));
                            self.send(me, from, Msg::Position { g, at });
                            if at < serve_from && source != k {
                                let to = serve_from;
                                self.send(
                                    me,
                                    Node::Sk(source),
                                    Msg::PeerFetch { path, from: at, to },
                                );
                            }
                        }
                    }
                    return Ok(());
                }
                if bytes.is_empty() {
                    let at = sk.written();
                    self.send(me, from, Msg::Position { g, at });
                    return Ok(());
                }
                match sk.append(g, lsn, &bytes) {
                    Ok(()) => {}
                    Err(StorageError::WalGap { expected, .. }) => {
                        self.send(me, from, Msg::Position { g, at: expected })
                    }
                    Err(e) => return Err(format!("sk {k} append: {e}")),
                }
            }
            Msg::PeerFetch { path, from: at, to } => {
                let bytes = sk.read_on_path(&path, at, to).map_err(|e| e.to_string())?;
                if !bytes.is_empty() {
                    self.send(
                        me,
                        from,
                        Msg::PeerData {
                            path,
                            lsn: at,
                            bytes,
                        },
                    );
                }
            }
            Msg::PeerData { path, lsn, bytes } => {
                let Some(link) = self.sks[k].link.clone() else {
                    return Ok(());
                };
                let Some(sk) = self.sks[k].sk.as_mut() else {
                    return Ok(());
                };
                match sk.append_on_path(link.g, &path, lsn, &bytes) {
                    Ok(())
                    | Err(StorageError::WalGap { .. })
                    | Err(StorageError::NotFollowing(_)) => {}
                    Err(e) => return Err(format!("sk {k} peer append: {e}")),
                }
                let at = sk.written();
                self.send(
                    me,
                    Node::Compute(link.compute),
                    Msg::Position { g: link.g, at },
                );
            }
            other => return Err(format!("safekeeper got {other:?}")),
        }
        Ok(())
    }

    fn on_compute(&mut self, c: usize, from: Node, msg: Msg) -> Check {
        let Node::Sk(k) = from else {
            return Err("compute got a message from a compute".into());
        };
        let g = self.computes[c].g;
        match (&mut self.computes[c].phase, msg) {
            (Phase::Electing(votes), Msg::Vote { vote }) => match vote {
                Vote::Promise { generation, log } if generation == g => {
                    votes.insert(k, log);
                    if votes.len() >= QUORUM {
                        let (ids, logs): (Vec<usize>, Vec<WalLog>) =
                            votes.iter().map(|(i, l)| (*i, l.clone())).unzip();
                        let pick = choose_source(&logs).ok_or("no votes")?;
                        let (source, expect) = (ids[pick], logs[pick].clone());
                        self.elected = self.elected.max(g);
                        self.computes[c].phase = Phase::Recovering { source, expect };
                        self.log(format!(
                            "compute {c} ({g}) elected; recovers from sk {source}"
                        ));
                        self.send(Node::Compute(c), Node::Sk(source), Msg::Fetch { g });
                    }
                }
                Vote::Promise { .. } => {}
                Vote::Reject { current } => {
                    self.log(format!("compute {c} ({g}) rejected: {current} in force"));
                    self.computes[c].phase = Phase::Dead;
                }
            },
            (
                Phase::Recovering { .. },
                Msg::Vote {
                    vote: Vote::Reject { current },
                },
            ) => {
                self.log(format!(
                    "compute {c} ({g}) fenced during recovery by {current}"
                ));
                self.computes[c].phase = Phase::Dead;
            }
            (Phase::Recovering { source, expect }, Msg::FetchReply { log, bytes })
                if *source == k =>
            {
                if log.start != Lsn::INVALID
                    || log.rank() < expect.rank()
                    || log.history.divergence(&expect.history) < expect.flush
                {
                    // The source moved on (a newer generation took it): this start fails.
                    self.log(format!("compute {c} ({g}): source changed, gives up"));
                    self.computes[c].phase = Phase::Dead;
                    return Ok(());
                }
                let source = *source;
                self.recovered(c, source, log, bytes)?;
            }
            (Phase::Streaming(s), Msg::Position { g: pg, at }) if pg == g => {
                s.pos[k] = Some(at);
            }
            (Phase::Streaming(s), Msg::Ack { g: ag, flush }) if ag == g => {
                s.acks[k] = s.acks[k].max(flush);
                let mut sorted = s.acks;
                sorted.sort();
                let quorum_flush = sorted[N - QUORUM];
                let mut done = Vec::new();
                while let Some(&(id, start, end, elected)) = s.pending.front() {
                    if end > quorum_flush {
                        break;
                    }
                    s.pending.pop_front();
                    let bytes = s.wal[start.0 as usize..end.0 as usize].to_vec();
                    done.push((
                        Acked {
                            g,
                            id,
                            start,
                            bytes,
                        },
                        elected,
                    ));
                }
                for (a, elected) in done {
                    // An acknowledgement sent before a newer election may still arrive after it
                    // (and its commit is recovered by the newer generation). A commit *written*
                    // after the newer election must never be acknowledged.
                    if elected > g {
                        return Err(format!(
                            "single writer violated: commit {} of {g}, written after {elected} was elected, acknowledged",
                            a.id
                        ));
                    }
                    self.log(format!("commit {} of {g} acknowledged", a.id));
                    self.acked.push(a);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn recovered(&mut self, c: usize, source: usize, log: WalLog, bytes: Vec<u8>) -> Check {
        let g = self.computes[c].g;
        let tli = timeline_of(g);
        let end = end_of_records(&bytes);
        let s = Lsn(end as u64);
        let wal = bytes[..end].to_vec();
        // A generation overtaken by a newer election while it recovered is stale: it can promote
        // but never get a commit acknowledged (the single-writer check watches that), so only
        // the newest elected generation must hold every acknowledged commit.
        let stale = self.elected > g;
        for a in self.acked.iter().filter(|_| !stale) {
            let range = a.start.0 as usize..a.start.0 as usize + a.bytes.len();
            if wal.get(range) != Some(&a.bytes[..]) {
                return Err(format!(
                    "acknowledged commit {} of {} at {} lost: {g} recovered only to {s}",
                    a.id, a.g, a.start
                ));
            }
        }
        let path = if log.is_empty() {
            History::starting(tli, s)
        } else {
            log.history
                .branch(s, tli)
                .ok_or_else(|| format!("{g} cannot branch timeline {tli} from {:?}", log.history))?
        };
        self.truth.insert(tli, wal.clone());
        let serve_from = Lsn(s.0 / SEG * SEG);
        self.log(format!(
            "compute {c} ({g}) promotes to timeline {tli} at {s}"
        ));
        self.starts_streaming += 1;
        self.computes[c].phase = Phase::Streaming(Box::new(Stream {
            tli,
            path,
            wal,
            serve_from,
            source,
            pos: [None; N],
            acks: [Lsn::INVALID; N],
            pending: VecDeque::new(),
        }));
        self.tick_compute(c);
        Ok(())
    }

    fn tick_compute(&mut self, c: usize) {
        let g = self.computes[c].g;
        let mut out = Vec::new();
        match &mut self.computes[c].phase {
            Phase::Electing(votes) => {
                for i in (0..N).filter(|i| !votes.contains_key(i)) {
                    out.push((Node::Sk(i), Msg::Elect { g }));
                }
            }
            Phase::Recovering { source, .. } => out.push((Node::Sk(*source), Msg::Fetch { g })),
            Phase::Streaming(s) => {
                let end = Lsn(s.wal.len() as u64);
                for i in 0..N {
                    let from = match s.pos[i] {
                        None => None,
                        Some(p) if p < s.serve_from => None,
                        Some(p) if p < end => Some(p),
                        Some(_) if s.acks[i] < end => Some(s.acks[i].max(s.serve_from)),
                        Some(_) => continue,
                    };
                    let (lsn, bytes) = match from {
                        Some(f) => (f, s.wal[f.0 as usize..].to_vec()),
                        None => (end, Vec::new()),
                    };
                    if from.is_some() {
                        s.pos[i] = Some(end);
                    }
                    out.push((
                        Node::Sk(i),
                        Msg::Append {
                            g,
                            path: s.path.clone(),
                            serve_from: s.serve_from,
                            source: s.source,
                            lsn,
                            bytes,
                        },
                    ));
                }
            }
            Phase::Dead => {}
        }
        for (to, msg) in out {
            self.send(Node::Compute(c), to, msg);
        }
    }

    fn commit(&mut self, c: usize) {
        let id = self.next_id;
        let elected = self.elected;
        let Phase::Streaming(s) = &mut self.computes[c].phase else {
            return;
        };
        self.next_id += 1;
        let len = 5 + self.rng.below(8) as usize;
        let start = Lsn(s.wal.len() as u64);
        let mut rec = vec![RECORD_MAGIC, len as u8, id as u8, (id >> 8) as u8, c as u8];
        rec.resize(len, (id % 251) as u8 | 1);
        s.wal.extend_from_slice(&rec);
        let end = Lsn(s.wal.len() as u64);
        s.pending.push_back((id, start, end, elected));
        self.truth.insert(s.tli, s.wal.clone());
    }

    fn flush_sk(&mut self, k: usize) -> Check {
        let link = self.sks[k].link.clone();
        let Some(sk) = self.sks[k].sk.as_mut() else {
            return Ok(());
        };
        sk.flush().map_err(|e| e.to_string())?;
        if let Some(link) = link {
            if let Some(flush) = sk.ack(link.g) {
                self.send(
                    Node::Sk(k),
                    Node::Compute(link.compute),
                    Msg::Ack { g: link.g, flush },
                );
            }
        }
        Ok(())
    }

    fn tick_sk(&mut self, k: usize) {
        let (Some(sk), Some(link)) = (&self.sks[k].sk, self.sks[k].link.clone()) else {
            return;
        };
        let at = sk.written();
        if at < link.serve_from {
            let peer = if link.source != k {
                link.source
            } else {
                (k + 1 + self.rng.below(N as u64 - 1) as usize) % N
            };
            let msg = Msg::PeerFetch {
                path: link.path,
                from: at,
                to: link.serve_from,
            };
            self.send(Node::Sk(k), Node::Sk(peer), msg);
        }
    }

    fn crash_sk(&mut self, k: usize) -> Check {
        if let Some(sk) = self.sks[k].sk.take() {
            let mut store = sk.into_store();
            store.crash();
            self.sks[k].down = Some(store);
            self.sks[k].link = None;
            self.log(format!("sk {k} crashes"));
            // What the crash left is what a restart reads: it must still be the writers' WAL.
            self.check_sk(k)?;
        }
        Ok(())
    }

    fn restart_sk(&mut self, k: usize) -> Check {
        if let Some(store) = self.sks[k].down.take() {
            self.sks[k].sk = Some(Safekeeper::open(store).map_err(|e| e.to_string())?);
            self.log(format!("sk {k} restarts"));
        }
        Ok(())
    }

    /// Log safety: every byte every safekeeper holds below its flush equals what the single
    /// writer of its timeline wrote at that LSN.
    fn check_logs(&mut self) -> Check {
        (0..N).try_for_each(|k| self.check_sk(k))
    }

    /// Log safety on safekeeper `k`: a running one as it serves its log, a crashed one as its
    /// store would come back.
    fn check_sk(&mut self, k: usize) -> Check {
        let sim = &mut self.sks[k];
        let (log, bytes) = match (&sim.sk, &mut sim.down) {
            (Some(sk), _) => {
                let log = sk.log().clone();
                let len = log.flush.0.saturating_sub(log.start.0) as usize;
                let bytes = sk.read(log.start, len);
                (log, bytes)
            }
            (None, Some(store)) => {
                let Some(control) = store
                    .load()
                    .map_err(|e| format!("sk {k}: its store does not load after a crash: {e}"))?
                else {
                    return Ok(());
                };
                let log = control.log;
                let len = log.flush.0.saturating_sub(log.start.0) as usize;
                let bytes = store.read_wal(log.start, len);
                (log, bytes)
            }
            (None, None) => return Err(format!("sk {k} is neither up nor down")),
        };
        let bytes = bytes.map_err(|e| {
            format!(
                "log safety violated: sk {k} cannot read its own log {}..{}: {e}",
                log.start, log.flush
            )
        })?;
        for (i, have) in bytes.iter().enumerate() {
            let lsn = log.start.0 + i as u64;
            let tli = log.history.tli_at(Lsn(lsn)).ok_or("byte outside history")?;
            let want = self
                .truth
                .get(&tli)
                .and_then(|w| w.get(lsn as usize))
                .copied();
            if want != Some(*have) {
                return Err(format!(
                    "log safety violated: sk {k} holds {have:?} at {} on timeline {tli}, its writer wrote {want:?}",
                    Lsn(lsn)
                ));
            }
        }
        Ok(())
    }

    fn live_computes(&self) -> Vec<usize> {
        (0..self.computes.len())
            .filter(|&c| !matches!(self.computes[c].phase, Phase::Dead))
            .collect()
    }

    fn step(&mut self, step: usize) -> Check {
        let live = self.live_computes();
        let pick = |rng: &mut Rng, v: &[usize]| v.get(rng.below(v.len() as u64) as usize).copied();
        let k = self.rng.below(N as u64) as usize;
        match self.pick_event() {
            Event::Deliver => self.deliver(false)?,
            Event::Commit => {
                if let Some(c) = pick(&mut self.rng, &live) {
                    for _ in 0..1 + self.rng.below(3) {
                        self.commit(c);
                    }
                }
            }
            Event::TickCompute => {
                if let Some(c) = pick(&mut self.rng, &live) {
                    self.tick_compute(c);
                }
            }
            Event::FlushSk => self.flush_sk(k)?,
            Event::TickSk => self.tick_sk(k),
            Event::CrashSk => self.crash_sk(k)?,
            Event::RestartSk => self.restart_sk(k)?,
            Event::CrashCompute => {
                if let Some(c) = pick(&mut self.rng, &live) {
                    self.log(format!("compute {c} crashes"));
                    self.computes[c].phase = Phase::Dead;
                }
            }
            Event::StartCompute => {
                if live.len() < 3 {
                    self.start_compute();
                }
            }
            Event::Isolate => {
                self.isolated[k] = !self.isolated[k];
                self.log(format!("sk {k} isolated: {}", self.isolated[k]));
            }
            Event::CutLink => {
                if let Some(c) = pick(&mut self.rng, &live) {
                    if !self.cut.remove(&(c, k)) {
                        self.cut.insert((c, k));
                    }
                    let on = self.cut.contains(&(c, k));
                    self.log(format!("link compute {c} - sk {k} cut: {on}"));
                }
            }
        }
        if step % 16 == 0 {
            self.check_logs()?;
        }
        Ok(())
    }

    /// Heal everything, start a fresh generation and require it to recover every acknowledged
    /// commit and acknowledge a new one.
    fn settle(&mut self) -> Check {
        self.isolated = [false; N];
        self.cut.clear();
        for k in 0..N {
            self.restart_sk(k)?;
        }
        self.start_compute();
        let c = self.computes.len() - 1;
        let mut committed = false;
        for round in 0..4000 {
            match self.rng.below(4) {
                0 | 1 => self.deliver(true)?,
                2 => self.tick_compute(c),
                _ => {
                    let k = self.rng.below(N as u64) as usize;
                    self.flush_sk(k)?;
                    self.tick_sk(k);
                }
            }
            match &self.computes[c].phase {
                Phase::Dead => return Err("the final generation failed to start".into()),
                Phase::Streaming(_) if !committed && round > 50 => {
                    self.commit(c);
                    committed = true;
                }
                Phase::Streaming(s) if committed && s.pending.is_empty() => {
                    return self.check_logs();
                }
                _ => {}
            }
        }
        Err("no progress: the final generation did not acknowledge a commit with all safekeepers up".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }

    #[test]
    fn simulation() {
        let steps = env_u64("SPG_SIM_STEPS").unwrap_or(400) as usize;
        if let Some(seed) = env_u64("SPG_SIM_SEED") {
            match run(&Schedule::from_seed(seed, steps), MemWalStore::new) {
                Ok(o) => println!("{}", o.trace.join("\n")),
                Err(f) => panic!("{f}"),
            }
            return;
        }
        let seeds = env_u64("SPG_SIM_SEEDS").unwrap_or(20_000);
        match run_seeds(0..seeds, steps, MemWalStore::new) {
            Ok(sum) => println!(
                "simulation: {} schedules, {} acknowledged commits, {} promotions",
                sum.schedules, sum.acknowledged, sum.promotions
            ),
            Err(f) => panic!(
                "{f}\nreplay: SPG_SIM_SEED={} cargo test -p spg-storage-lib simulation -- --nocapture",
                f.schedule.seed
            ),
        }
    }
}
