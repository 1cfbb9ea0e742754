//! The `pubsub` app's channel engine in process (issue 19): what history costs a publication's
//! fan-out, and what a recovery costs.
//!
//! - `publish/1000 members/history off|on`: one publication through `Engine::publish` to 1,000
//!   local members, queues drained as a writer drains them. History on keeps the last 100. The
//!   ratio on/off is an upper bound of what history adds per delivery on a real server: the
//!   socket writes, equal in both, are left out.
//! - `recover/100 publications`: one client subscribing with `recover` 100 publications behind
//!   (reply with 100 publications queued, joined), then leaving; run for 1,000 clients in turn.
//!
//! Run: `cargo bench --bench pubsub_history` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use serde_json::json;
use wsgate::apps::pubsub::engine::{Engine, Namespace, Position};
use wsgate::config::pubsub::{Access, NamespaceConfig};
use wsgate::metrics::Metrics;
use wsgate::pubsub::budget::SlowConsumerPolicy;
use wsgate::pubsub::channel::{ChannelIdGenerator, ChannelInfo, ChannelQueue};
use wsgate::pubsub::{ChannelHandle, Hub};

const MEMBERS: usize = 1000;

fn namespace(history: usize) -> Namespace {
    Namespace::new(&NamespaceConfig {
        pattern: "*".into(),
        subscribe: Access::Any,
        publish: Access::Any,
        history,
        history_ttl: None,
        presence: false,
    })
    .unwrap()
}

struct Setup {
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    ids: ChannelIdGenerator,
    queues: Vec<ChannelQueue>,
    handles: Vec<ChannelHandle>,
}

fn member(s: &Setup) -> (ChannelHandle, ChannelQueue) {
    let info = ChannelInfo {
        id: s.ids.next_id(),
        app: "live".into(),
        url: "/live".into(),
        peer: "127.0.0.1:1".parse().unwrap(),
    };
    let (handle, queue) = ChannelHandle::new(info, 64 << 20, SlowConsumerPolicy::Close);
    s.hub.register(handle.clone());
    (handle, queue)
}

fn setup(history: usize, members: usize) -> Setup {
    let hub = Arc::new(Hub::with_metrics(Arc::new(Metrics::new())));
    let engine = Engine::new(hub.clone());
    engine.set_namespaces(vec![namespace(history)]);
    let mut s = Setup { engine, hub, ids: ChannelIdGenerator::new("bench"), queues: Vec::new(), handles: Vec::new() };
    for _ in 0..members {
        let (handle, mut queue) = member(&s);
        s.engine.subscribe("news", &handle, "", None, |_, _| json!({"subscribe": {}})).now_or_never().unwrap().unwrap();
        drain(std::slice::from_mut(&mut queue));
        s.handles.push(handle);
        s.queues.push(queue);
    }
    s
}

fn drain(queues: &mut [ChannelQueue]) {
    for queue in queues {
        while let Ok(item) = queue.rx.try_recv() {
            if let Some(frame) = item.plain_frame() {
                queue.budget().release(frame.len());
            }
        }
    }
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish/1000 members");
    for (label, history) in [("history off", 0), ("history on", 100)] {
        let mut s = setup(history, MEMBERS);
        let data = json!({"text": "x".repeat(200)});
        group.bench_function(label, |b| {
            b.iter(|| {
                black_box(s.engine.publish("news", data.clone(), None).now_or_never().unwrap().unwrap());
                drain(&mut s.queues);
            })
        });
    }
    group.finish();
}

fn recover(c: &mut Criterion) {
    let s = setup(1000, 0);
    let mut last = None;
    for i in 0..100 {
        last = Some(s.engine.publish("news", json!({ "i": i }), None).now_or_never().unwrap().unwrap());
    }
    let last = last.unwrap();
    let since = Position { offset: last.offset - 100, epoch: last.epoch.clone() };
    c.bench_function("recover/100 publications", |b| {
        b.iter_batched(
            || member(&s),
            |(handle, mut queue)| {
                s.engine
                    .subscribe("news", &handle, "", Some(&since), |position, recovered| {
                        let publications = recovered.expect("recoverable");
                        assert_eq!(publications.len(), 100);
                        json!({ "subscribe": { "offset": position.offset, "publications": publications } })
                    })
                    .now_or_never()
                    .unwrap()
                    .unwrap();
                drain(std::slice::from_mut(&mut queue));
                s.engine.unsubscribe("news", handle.id()).now_or_never();
                s.hub.unregister(handle.id());
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, publish, recover);
criterion_main!(benches);
