//! Multicast to 10,000 in-process members (DESIGN §4: encode once, share the bytes).
//!
//! Before the timing runs, one multicast is measured with a counting global allocator
//! (`stats_alloc`): the whole fan-out must allocate O(1) times, not once per member, and every
//! member's queue must hold the very same buffer (no copy of the payload).
//!
//! Run: `cargo bench --bench multicast` (add `-- --quick` for a short run).

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use wsgate::apps::Message;
use wsgate::metrics::Metrics;
use wsgate::pubsub::budget::SlowConsumerPolicy;
use wsgate::pubsub::channel::{ChannelIdGenerator, ChannelInfo, ChannelQueue};
use wsgate::pubsub::{ChannelHandle, Hub};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MEMBERS: usize = 10_000;
const PAYLOAD: usize = 1024;

struct Setup {
    hub: Hub,
    queues: Vec<ChannelQueue>,
    _handles: Vec<ChannelHandle>,
}

fn setup() -> Setup {
    let hub = Hub::with_metrics(std::sync::Arc::new(Metrics::new()));
    let ids = ChannelIdGenerator::new("bench");
    let mut queues = Vec::with_capacity(MEMBERS);
    let mut handles = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let info = ChannelInfo {
            id: ids.next_id(),
            app: "bench".into(),
            url: "/b".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let (handle, queue) = ChannelHandle::new(info, 1 << 20, SlowConsumerPolicy::Close);
        hub.register(handle.clone());
        hub.subscribe(handle.id(), "room").unwrap();
        handles.push(handle);
        queues.push(queue);
    }
    Setup { hub, queues, _handles: handles }
}

/// Empties every member's queue the way a writer does (releasing the byte budget); returns the
/// number of distinct buffers seen, by address.
fn drain(queues: &mut [ChannelQueue]) -> usize {
    let mut first: Option<*const u8> = None;
    let mut distinct = 0;
    for queue in queues {
        while let Ok(item) = queue.rx.try_recv() {
            // A multicast queues the shared message; its plain frame is what a member without
            // permessage-deflate is sent.
            if let Some(frame) = item.plain_frame() {
                if first != Some(frame.as_ptr()) {
                    first = Some(frame.as_ptr());
                    distinct += 1;
                }
                queue.budget().release(frame.len());
            }
        }
    }
    distinct
}

fn count_allocations(s: &mut Setup, message: &Message) {
    // Warm up: the queues' linked blocks get allocated once and are reused afterwards.
    for _ in 0..3 {
        s.hub.multicast("room", message, &[]);
        drain(&mut s.queues);
    }
    let region = Region::new(GLOBAL);
    let delivery = s.hub.multicast("room", message, &[]);
    let stats = region.change();
    let distinct = drain(&mut s.queues);
    println!(
        "multicast to {} members of a {PAYLOAD}-byte message: {} allocations ({} bytes) for the whole fan-out, \
         {:.4} allocations per member; {distinct} distinct frame buffer(s) across all queues",
        delivery.delivered,
        stats.allocations + stats.reallocations,
        stats.bytes_allocated,
        (stats.allocations + stats.reallocations) as f64 / delivery.delivered as f64,
    );
    assert_eq!(delivery.delivered, MEMBERS);
    assert_eq!(distinct, 1, "every member must get the same encoded bytes");
    assert!(stats.allocations + stats.reallocations <= 4, "no per-member allocation: {stats:?}");
    assert!(stats.bytes_allocated < 4 * PAYLOAD + 1024, "no per-member copy of the payload: {stats:?}");
}

fn bench(c: &mut Criterion) {
    let mut s = setup();
    let message = Message::Text(Bytes::from(vec![b'x'; PAYLOAD]));
    count_allocations(&mut s, &message);
    let mut group = c.benchmark_group("multicast");
    group.throughput(criterion::Throughput::Elements(MEMBERS as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("10k_members_1KiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                black_box(s.hub.multicast("room", &message, &[]));
                total += started.elapsed();
                drain(&mut s.queues);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
