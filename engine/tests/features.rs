//! The optional features: `metrics` (`Store::emit_metrics` publishes the
//! counters through the `metrics` facade) and `tracing` (events for open,
//! takeovers and failed syncs). Each test is compiled only with its
//! feature; CI runs them with `cargo test -p dedupstore --all-features
//! --test features`.

#[cfg(feature = "metrics")]
mod metrics_feature {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dedupstore::{Claim, Config, Durability, Store};
    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    const DAY: Duration = Duration::from_secs(86_400);

    /// One value per metric name: counters and gauges (as `f64` bits).
    #[derive(Default)]
    struct Cell(AtomicU64);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.fetch_max(value, Relaxed);
        }
    }

    impl GaugeFn for Cell {
        fn increment(&self, value: f64) {
            self.set(f64::from_bits(self.0.load(Relaxed)) + value);
        }
        fn decrement(&self, value: f64) {
            self.set(f64::from_bits(self.0.load(Relaxed)) - value);
        }
        fn set(&self, value: f64) {
            self.0.store(value.to_bits(), Relaxed);
        }
    }

    /// Records every counter and gauge registered, by name.
    #[derive(Default)]
    struct Collect {
        counters: Mutex<BTreeMap<String, Arc<Cell>>>,
        gauges: Mutex<BTreeMap<String, Arc<Cell>>>,
    }

    impl Collect {
        fn counter(&self, name: &str) -> Option<u64> {
            let m = self.counters.lock().unwrap();
            m.get(name).map(|c| c.0.load(Relaxed))
        }
        fn gauge(&self, name: &str) -> Option<f64> {
            let m = self.gauges.lock().unwrap();
            m.get(name).map(|c| f64::from_bits(c.0.load(Relaxed)))
        }
    }

    impl Recorder for Collect {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut m = self.counters.lock().unwrap();
            Counter::from_arc(m.entry(key.name().to_string()).or_default().clone())
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            let mut m = self.gauges.lock().unwrap();
            Gauge::from_arc(m.entry(key.name().to_string()).or_default().clone())
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn emit_metrics_publishes_every_counter() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default()
            .durability(Durability::Immediate)
            .gc_interval(None);
        let s = Store::open(dir.path(), cfg).unwrap();
        assert!(s.check_and_insert("a", DAY).unwrap().is_inserted());
        assert!(!s.check_and_insert("a", DAY).unwrap().is_inserted());
        assert!(s.check_and_insert("b", DAY).unwrap().is_inserted());
        let Claim::Acquired(t) = s.claim("c", DAY, None).unwrap() else {
            panic!("fresh key")
        };
        assert!(matches!(
            s.claim("c", DAY, None).unwrap(),
            Claim::InProgress { .. }
        ));
        s.complete(&t, Some(b"r"), DAY).unwrap();
        let c = s.counters();
        let rec = Collect::default();
        metrics::with_local_recorder(&rec, || s.emit_metrics());

        assert_eq!(rec.counter("dedupstore_inserted"), Some(2));
        assert_eq!(rec.counter("dedupstore_duplicate"), Some(1));
        assert_eq!(rec.counter("dedupstore_claims_acquired"), Some(1));
        assert_eq!(rec.counter("dedupstore_claims_in_progress"), Some(1));
        assert_eq!(rec.counter("dedupstore_claims_completed"), Some(1));
        assert_eq!(rec.counter("dedupstore_claims_released"), Some(0));
        assert_eq!(rec.counter("dedupstore_takeovers"), Some(0));
        assert_eq!(rec.counter("dedupstore_stale_tokens"), Some(0));
        // The same figures as `counters()`, read at the same time.
        assert_eq!(rec.counter("dedupstore_syncs"), Some(c.syncs));
        assert!(c.syncs >= 4, "{c:?}");
        let micros = u64::try_from(c.sync_time.as_micros()).unwrap();
        assert_eq!(rec.counter("dedupstore_sync_micros"), Some(micros));
        #[expect(clippy::cast_precision_loss, reason = "small test figures")]
        let max = c.sync_max.as_micros() as f64;
        assert_eq!(rec.gauge("dedupstore_sync_max_micros"), Some(max));
        assert_eq!(rec.counters.lock().unwrap().len(), 10);

        // A later scrape publishes the counters' new values.
        let _ = s.check_and_insert("d", DAY).unwrap();
        metrics::with_local_recorder(&rec, || s.emit_metrics());
        assert_eq!(rec.counter("dedupstore_inserted"), Some(3));
    }
}

#[cfg(feature = "tracing")]
mod tracing_feature {
    use std::fmt;
    use std::sync::{Mutex, Once};
    use std::time::Duration;

    use dedupstore::{Claim, Config, Store};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    const LEASE: Duration = Duration::from_secs(60);

    /// Every event seen by the process: (target, level, message).
    static EVENTS: Mutex<Vec<(String, Level, String)>> = Mutex::new(Vec::new());

    /// Collects events (the store emits some on its own threads, so the
    /// subscriber is the global one); spans are not used by the store.
    struct Collect;

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Collect {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut m = Message(String::new());
            event.record(&mut m);
            let meta = event.metadata();
            EVENTS
                .lock()
                .unwrap()
                .push((meta.target().to_string(), *meta.level(), m.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| tracing::subscriber::set_global_default(Collect).unwrap());
    }

    /// How many events so far say `what` (target `dedupstore`, `level`).
    fn seen(level: Level, what: &str) -> usize {
        let events = EVENTS.lock().unwrap();
        events
            .iter()
            .filter(|(t, l, m)| t == "dedupstore" && *l == level && m.contains(what))
            .count()
    }

    #[test]
    fn open_and_a_takeover_emit_events() {
        install();
        let dir = tempfile::tempdir().unwrap();
        let cfg = || Config::default().gc_interval(None);
        let opened = seen(Level::INFO, "opened and recovered");
        let s = Store::open(dir.path(), cfg()).unwrap();
        assert!(seen(Level::INFO, "opened and recovered") > opened);
        let Claim::Acquired(_) = s.claim("k", LEASE, None).unwrap() else {
            panic!("fresh key")
        };
        drop(s);
        // The claim is orphaned by the reopen: the next claim takes it over.
        let s = Store::open(dir.path(), cfg()).unwrap();
        let before = seen(Level::INFO, "took over a claim orphaned");
        let Claim::Acquired(_) = s.claim("k", LEASE, None).unwrap() else {
            panic!("orphaned claim: taken over")
        };
        assert_eq!(s.counters().takeovers, 1);
        assert_eq!(seen(Level::INFO, "took over a claim orphaned"), before + 1);
    }

    #[cfg(feature = "sim")]
    #[test]
    fn a_failed_sync_emits_an_error_event() {
        use dedupstore::sim::{Fault, SimFs};
        use dedupstore::Durability;
        install();
        let fs = SimFs::new();
        let cfg = Config::default()
            .durability(Durability::Immediate)
            .segment_size(64 << 10)
            .gc_interval(None);
        let s = Store::open_with(fs.clone(), "/db", cfg).unwrap();
        let before = seen(Level::ERROR, "a sync failed");
        fs.fail_at(Some(Fault {
            at: 0,
            sticky: false,
            errno: libc::EIO,
            only: None,
        }));
        assert!(s.check_and_insert("k", LEASE).is_err());
        assert_eq!(seen(Level::ERROR, "a sync failed"), before + 1);
    }
}
