//! Background work shared by the stores of a namespace group: one flusher
//! thread (`Durability::Interval` syncs) and one maintenance thread (GC
//! runs and background checkpoints), whatever the number of stores.
//!
//! A store registers when it opens and unregisters when it closes. Each job
//! runs on a clone of the store's `Arc<Inner>`, outside the workers' lock;
//! `unregister` removes the store and then waits for a job of it that is
//! running, so no job touches a store after its close has begun syncing
//! (and none can deadlock with it: a job never waits for the workers' lock
//! while holding a store lock the closing thread needs, and `unregister`
//! holds no store lock).
//!
//! Failure semantics are the per-store threads': a failed sync poisons that
//! store only (through its own poison gate); a job that panics poisons that
//! store and the thread goes on serving the others; a failed GC run is kept
//! in that store's `gc_last_error`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{io_err, Result};
use crate::store::Inner;
use crate::vfs::Vfs;

/// What a thread runs for a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Task {
    Flush,
    Gc,
    Checkpoint,
}

/// The two threads: which queue each serves.
const FLUSHER: usize = 0;
const MAINTENANCE: usize = 1;

fn thread_of(t: Task) -> usize {
    match t {
        Task::Flush => FLUSHER,
        Task::Gc | Task::Checkpoint => MAINTENANCE,
    }
}

struct Member<F: Vfs> {
    inner: Arc<Inner<F>>,
    flush_every: Option<Duration>,
    gc_every: Option<Duration>,
    gc_paused: bool,
    /// A checkpoint request is queued (requests are merged).
    ckpt_queued: bool,
}

struct State<F: Vfs> {
    members: HashMap<u64, Member<F>>,
    next_id: u64,
    stop: bool,
    /// Per thread: the store whose job runs now.
    running: [Option<u64>; 2],
    /// Per thread: due jobs, earliest first. Entries of stores that have
    /// unregistered are skipped when they come up.
    queues: [BinaryHeap<Reverse<(Instant, u64, Task)>>; 2],
}

/// The shared worker threads of a namespace group.
pub(crate) struct Workers<F: Vfs> {
    state: Mutex<State<F>>,
    /// Wakes the threads: a new job, or stop.
    wake: Condvar,
    /// A job finished (for `unregister`).
    done: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The group's lock: released when the last user of the workers (the
    /// group, its stores, the threads) is gone, so it outlives store
    /// handles kept after the group was closed.
    _lock: Option<F::Lock>,
}

impl<F: Vfs> Workers<F> {
    /// Starts the two threads.
    pub(crate) fn start(group_lock: Option<F::Lock>) -> Result<Arc<Self>> {
        let w = Arc::new(Workers {
            state: Mutex::new(State {
                members: HashMap::new(),
                next_id: 1,
                stop: false,
                running: [None, None],
                queues: [BinaryHeap::new(), BinaryHeap::new()],
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            _lock: group_lock,
        });
        for (which, name) in [
            (FLUSHER, "dedupstore-ns-flush"),
            (MAINTENANCE, "dedupstore-ns-maint"),
        ] {
            let me = w.clone();
            let spawned = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || me.run(which));
            match spawned {
                Ok(h) => lock(&w.threads).push(h),
                Err(e) => {
                    w.stop();
                    return Err(io_err("spawn worker", PathBuf::new())(e));
                }
            }
        }
        Ok(w)
    }

    fn state(&self) -> MutexGuard<'_, State<F>> {
        lock(&self.state)
    }

    /// Registers a store: its flushes and GC runs are scheduled from its
    /// config, and a sealed segment queues a checkpoint if it has
    /// background checkpoints. Returns its id.
    pub(crate) fn register(self: &Arc<Self>, inner: &Arc<Inner<F>>) -> u64 {
        let cfg = &inner.config;
        let flush_every = match cfg.durability {
            crate::Durability::Interval(d) => Some(d),
            _ => None,
        };
        let gc_every = cfg.gc_interval;
        let ckpt = cfg.checkpoints == crate::Checkpoints::Background;
        let mut st = self.state();
        let id = st.next_id;
        st.next_id += 1;
        let now = Instant::now();
        if let Some(d) = flush_every {
            st.queues[FLUSHER].push(Reverse((now + d, id, Task::Flush)));
        }
        if let Some(d) = gc_every {
            st.queues[MAINTENANCE].push(Reverse((now + d, id, Task::Gc)));
        }
        st.members.insert(
            id,
            Member {
                inner: inner.clone(),
                flush_every,
                gc_every,
                gc_paused: false,
                ckpt_queued: false,
            },
        );
        drop(st);
        if ckpt {
            // Weak: the store's log must not keep the workers alive.
            let w = Arc::downgrade(self);
            let _ = inner.log.on_seal.set(Box::new(move || {
                if let Some(w) = Weak::upgrade(&w) {
                    w.request(id, Task::Checkpoint);
                }
            }));
        }
        self.wake.notify_all();
        id
    }

    /// Queues `task` for store `id` now (merged with a queued checkpoint).
    fn request(&self, id: u64, task: Task) {
        let mut st = self.state();
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        if task == Task::Checkpoint {
            if m.ckpt_queued {
                return;
            }
            m.ckpt_queued = true;
        }
        st.queues[thread_of(task)].push(Reverse((Instant::now(), id, task)));
        drop(st);
        self.wake.notify_all();
    }

    /// Runs a GC of store `id` soon (unless paused).
    pub(crate) fn wake_gc(&self, id: u64) {
        self.request(id, Task::Gc);
    }

    /// Pauses or resumes the scheduled GC runs of store `id`.
    pub(crate) fn set_gc_paused(&self, id: u64, paused: bool) {
        if let Some(m) = self.state().members.get_mut(&id) {
            m.gc_paused = paused;
        }
    }

    /// Removes store `id`; returns once no job of it is running.
    pub(crate) fn unregister(&self, id: u64) {
        let mut st = self.state();
        st.members.remove(&id);
        while st.running.contains(&Some(id)) {
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let last = st.stop && st.members.is_empty();
        drop(st);
        if last {
            // The threads were told to stop and served this store last:
            // join them, so that the group's lock is released when this
            // store's handle (the last user of the workers) is dropped, not
            // later by an exiting thread (a reopen right after would get
            // `Locked`).
            self.wake.notify_all();
            self.join();
        }
    }

    /// Joins the threads (except the calling one, if it is one of them).
    fn join(&self) {
        let handles = std::mem::take(&mut *lock(&self.threads));
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    /// Stores registered now.
    pub(crate) fn members(&self) -> usize {
        self.state().members.len()
    }

    /// Tells the threads to stop once no store is registered, and joins
    /// them if none is now. (Stores still registered, whose handles
    /// outlive the group, keep being served until they close.)
    pub(crate) fn stop(&self) {
        let empty = {
            let mut st = self.state();
            st.stop = true;
            st.members.is_empty()
        };
        self.wake.notify_all();
        if !empty {
            return;
        }
        self.join();
    }

    /// A thread's loop: take the earliest due job, run it outside the lock.
    fn run(&self, which: usize) {
        let mut st = self.state();
        loop {
            if st.stop && st.members.is_empty() {
                return;
            }
            let now = Instant::now();
            let next = st.queues[which].peek().map(|Reverse((at, _, _))| *at);
            match next {
                None => {
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                Some(at) if at > now => {
                    st = self
                        .wake
                        .wait_timeout(st, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                Some(_) => {}
            }
            let Some(Reverse((_, id, task))) = st.queues[which].pop() else {
                continue;
            };
            let (inner, flush_every, gc_every, paused) = {
                let Some(m) = st.members.get_mut(&id) else {
                    continue; // unregistered since
                };
                if task == Task::Checkpoint {
                    m.ckpt_queued = false;
                }
                (m.inner.clone(), m.flush_every, m.gc_every, m.gc_paused)
            };
            let again = match task {
                Task::Flush => flush_every,
                // A requested run (wake_gc) adds no schedule: the periodic
                // entry stays queued.
                Task::Gc if next_is_periodic(&st.queues[which], id) => None,
                Task::Gc => gc_every,
                Task::Checkpoint => None,
            };
            if let Some(d) = again {
                st.queues[which].push(Reverse((now + d, id, task)));
            }
            if task == Task::Gc && paused {
                continue;
            }
            st.running[which] = Some(id);
            drop(st);
            run_job(&inner, task);
            drop(inner);
            st = self.state();
            st.running[which] = None;
            self.done.notify_all();
        }
    }
}

/// Is a GC run of store `id` still queued (its periodic entry)?
fn next_is_periodic(q: &BinaryHeap<Reverse<(Instant, u64, Task)>>, id: u64) -> bool {
    q.iter()
        .any(|Reverse((_, i, t))| *i == id && *t == Task::Gc)
}

/// Runs one job. A failed sync has poisoned the store (its gate); a panic
/// (a bug) poisons it here, rather than leaving callers to believe their
/// data gets synced or collected.
fn run_job<F: Vfs>(inner: &Inner<F>, task: Task) {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match task {
        Task::Flush => inner.sync().err().map(|e| e.to_string()),
        Task::Gc => inner
            .gc(inner.config.compact_below)
            .err()
            .map(|e| e.to_string()),
        Task::Checkpoint => {
            if inner.checkpoint_due() {
                // A failure leaves the previous checkpoint (still valid or
                // caught at open); a failed sync poisoned the store.
                let _ = inner.write_checkpoint();
            }
            None
        }
    }));
    let err = match ran {
        Ok(e) => e,
        Err(_) => {
            inner.log.poison.set();
            Some(format!("{task:?} job panicked; the store is poisoned"))
        }
    };
    if let (Some(e), Task::Gc | Task::Checkpoint) = (err, task) {
        *lock(&inner.gc_counters.last_error) = Some(e);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
