//! Prometheus metrics (DESIGN §7), with `prometheus-client`.
//!
//! One [`Metrics`] per server, shared through an `Arc`. Counters are registered *without*
//! `_total`: the OpenMetrics encoder appends it. No label takes a value from a client: app
//! names come from the configuration, every other label from a fixed set in the code.
//! The `process_*` family (no `wsgate_` prefix, as every Prometheus client library names it)
//! comes from [`process::ProcessCollector`], read from `/proc/self` at scrape time.

pub(crate) mod process;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Label: the app name (from the configuration).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    /// App name.
    pub app: String,
}

/// Label: a short, fixed reason code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reason code, e.g. `bad_key`, `origin_denied`.
    pub reason: &'static str,
}

/// Label: a pubsub namespace's pattern (from the configuration, so the set is bounded; never
/// one series per channel name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    /// The namespace's `pattern`.
    pub namespace: String,
}

/// Labels: a pubsub namespace and how a recovery in it ended (`recovered`, `not_recovered`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceOutcomeLabel {
    /// The namespace's `pattern`.
    pub namespace: String,
    /// The outcome.
    pub outcome: &'static str,
}

/// Label: what the slow-consumer policy did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// `close` or `drop`.
    pub action: &'static str,
}

/// Label: the class of a proxied response status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabel {
    /// `1xx` … `5xx`.
    pub status_class: &'static str,
}

/// Label: the kind of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// e.g. `connect`, `timeout`, `reset`.
    pub kind: &'static str,
}

/// Label: the result of a configuration reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The message and byte counters of one app, handed to its sessions.
#[derive(Clone, Debug, Default)]
pub struct AppCounters {
    /// Complete messages received from clients.
    pub messages_received: Counter,
    /// Data messages written to clients.
    pub messages_sent: Counter,
    /// Payload bytes of received messages.
    pub bytes_received: Counter,
    /// Bytes written to clients (frames, headers included).
    pub bytes_sent: Counter,
    /// WebSocket connections accepted.
    pub connections_total: Counter,
    /// Open WebSocket connections.
    pub connections_active: Gauge,
}

/// Every metric wsgate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSockets per app.
    pub connections_active: Family<AppLabel, Gauge>,
    /// Accepted WebSockets per app.
    pub connections_total: Family<AppLabel, Counter>,
    /// Refused WebSocket handshakes by reason.
    pub handshake_failures: Family<ReasonLabel, Counter>,
    /// Admin requests refused by the Host rule, by reason (`host_denied`, `cross_site`,
    /// `origin_denied`).
    pub admin_refused: Family<ReasonLabel, Counter>,
    /// Messages received from clients per app.
    pub messages_received: Family<AppLabel, Counter>,
    /// Messages sent to clients per app.
    pub messages_sent: Family<AppLabel, Counter>,
    /// Payload bytes received per app.
    pub bytes_received: Family<AppLabel, Counter>,
    /// Bytes written to WebSocket clients per app.
    pub bytes_sent: Family<AppLabel, Counter>,
    /// Multicasts performed.
    pub multicast: Counter,
    /// Frames queued by multicasts.
    pub multicast_deliveries: Counter,
    /// Time to fan one multicast out to every member's queue.
    pub multicast_duration: Histogram,
    /// How long control-API publishes were held back by the publish window (only those that
    /// waited).
    pub publish_backpressure: Histogram,
    /// Slow-consumer policy actions.
    pub slow_consumer_events: Family<ActionLabel, Counter>,
    /// Subscriptions with at least one member.
    pub subscriptions_active: Gauge,
    /// Proxied requests by response status class.
    pub proxy_requests: Family<StatusClassLabel, Counter>,
    /// Time from request to response head for proxied requests.
    pub proxy_request_duration: Histogram,
    /// Upstream failures by kind.
    pub upstream_errors: Family<KindLabel, Counter>,
    /// Lines sent by log-view.
    pub logview_lines: Counter,
    /// Configuration reloads by result.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Failed TLS handshakes.
    pub tls_handshake_failures: Counter,
    /// Broker (Redis) errors: the sum of the two counters below.
    pub broker_errors: Counter,
    /// Messages the broker could not relay to the other nodes.
    pub broker_undelivered: Counter,
    /// Failed attempts to (re)connect to the broker.
    pub broker_connect_failures: Counter,
    /// Messages other nodes relayed that this node never received.
    pub broker_missed: Counter,
    /// pubsub: channels with state (history, presence or members) on this node, by namespace.
    pub pubsub_channels: Family<NamespaceLabel, Gauge>,
    /// pubsub: publications kept in histories on this node, by namespace.
    pub pubsub_history_publications: Family<NamespaceLabel, Gauge>,
    /// pubsub: presence entries on this node (one per client and channel), by namespace.
    pub pubsub_presence_clients: Family<NamespaceLabel, Gauge>,
    /// pubsub: publications (from clients and the control API), by namespace.
    pub pubsub_publications: Family<NamespaceLabel, Counter>,
    /// pubsub: subscribes that asked to recover, by namespace and outcome.
    pub pubsub_recoveries: Family<NamespaceOutcomeLabel, Counter>,
    /// pubsub: tokens refused, by reason (`expired`, `invalid`, `missing`, `wrong_channel`).
    pub pubsub_token_failures: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `wsgate_` prefix.
    pub fn new() -> Self {
        // The root registry holds the unprefixed process collector; ours live under `wsgate_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector::new()));
        let registry = root.sub_registry_with_prefix("wsgate");
        let m = Metrics {
            connections_active: Family::default(),
            connections_total: Family::default(),
            handshake_failures: Family::default(),
            admin_refused: Family::default(),
            messages_received: Family::default(),
            messages_sent: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            multicast: Counter::default(),
            multicast_deliveries: Counter::default(),
            multicast_duration: Histogram::new(exponential_buckets(1e-6, 4.0, 12)),
            publish_backpressure: Histogram::new(exponential_buckets(1e-4, 2.0, 9)),
            slow_consumer_events: Family::default(),
            subscriptions_active: Gauge::default(),
            proxy_requests: Family::default(),
            proxy_request_duration: Histogram::new(exponential_buckets(1e-4, 2.5, 14)),
            upstream_errors: Family::default(),
            logview_lines: Counter::default(),
            config_reloads: Family::default(),
            tls_handshake_failures: Counter::default(),
            broker_errors: Counter::default(),
            broker_undelivered: Counter::default(),
            broker_connect_failures: Counter::default(),
            broker_missed: Counter::default(),
            pubsub_channels: Family::default(),
            pubsub_history_publications: Family::default(),
            pubsub_presence_clients: Family::default(),
            pubsub_publications: Family::default(),
            pubsub_recoveries: Family::default(),
            pubsub_token_failures: Family::default(),
            registry: Registry::default(),
        };
        let r = registry;
        r.register("connections_active", "Open WebSocket connections", m.connections_active.clone());
        r.register("connections", "WebSocket connections accepted", m.connections_total.clone());
        r.register("handshake_failures", "WebSocket handshakes refused", m.handshake_failures.clone());
        r.register("admin_requests_refused", "Admin requests refused by the Host rule", m.admin_refused.clone());
        r.register("messages_received", "WebSocket messages received from clients", m.messages_received.clone());
        r.register("messages_sent", "WebSocket messages sent to clients", m.messages_sent.clone());
        r.register("bytes_received", "WebSocket payload bytes received from clients", m.bytes_received.clone());
        r.register("bytes_sent", "Bytes written to WebSocket clients", m.bytes_sent.clone());
        r.register("multicast", "Multicasts performed", m.multicast.clone());
        r.register("multicast_deliveries", "Frames queued to members by multicasts", m.multicast_deliveries.clone());
        r.register(
            "multicast_duration_seconds",
            "Time to queue one multicast to every member",
            m.multicast_duration.clone(),
        );
        r.register(
            "publish_backpressure_seconds",
            "Time control-API publishes waited for the subscription's writers to catch up (publishes that waited)",
            m.publish_backpressure.clone(),
        );
        r.register("slow_consumer_events", "Slow-consumer policy actions", m.slow_consumer_events.clone());
        r.register("subscriptions_active", "Subscriptions with at least one member", m.subscriptions_active.clone());
        r.register("proxy_requests", "Requests proxied to the upstream", m.proxy_requests.clone());
        r.register(
            "proxy_request_duration_seconds",
            "Time to the upstream's response head",
            m.proxy_request_duration.clone(),
        );
        r.register("upstream_errors", "Upstream failures", m.upstream_errors.clone());
        r.register("logview_lines", "Lines sent by log-view", m.logview_lines.clone());
        r.register("config_reloads", "Configuration reloads", m.config_reloads.clone());
        r.register("tls_handshake_failures", "Failed TLS handshakes", m.tls_handshake_failures.clone());
        r.register(
            "broker_errors",
            "Broker errors: messages not relayed plus failed connection attempts",
            m.broker_errors.clone(),
        );
        r.register(
            "broker_undelivered",
            "Messages that could not be relayed to the other nodes",
            m.broker_undelivered.clone(),
        );
        r.register(
            "broker_connect_failures",
            "Failed attempts to connect or reconnect to the broker",
            m.broker_connect_failures.clone(),
        );
        r.register(
            "broker_missed",
            "Messages other nodes relayed that this node never received (its subscription lapsed)",
            m.broker_missed.clone(),
        );
        r.register("pubsub_channels", "pubsub channels with state on this node", m.pubsub_channels.clone());
        r.register(
            "pubsub_history_publications",
            "pubsub publications kept in histories on this node",
            m.pubsub_history_publications.clone(),
        );
        r.register(
            "pubsub_presence_clients",
            "pubsub presence entries on this node",
            m.pubsub_presence_clients.clone(),
        );
        r.register("pubsub_publications", "pubsub publications", m.pubsub_publications.clone());
        r.register("pubsub_recoveries", "pubsub recoveries asked for, by outcome", m.pubsub_recoveries.clone());
        r.register("pubsub_token_failures", "pubsub tokens refused, by reason", m.pubsub_token_failures.clone());
        r.register("build", "Build information", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        Metrics { registry: root, ..m }
    }

    /// The per-app counters a WebSocket session updates, resolved once per app (not per
    /// message): cloning a counter shares its value.
    pub fn app_counters(&self, app: &str) -> AppCounters {
        let label = AppLabel { app: app.to_owned() };
        AppCounters {
            messages_received: self.messages_received.get_or_create(&label).clone(),
            messages_sent: self.messages_sent.get_or_create(&label).clone(),
            bytes_received: self.bytes_received.get_or_create(&label).clone(),
            bytes_sent: self.bytes_sent.get_or_create(&label).clone(),
            connections_total: self.connections_total.get_or_create(&label).clone(),
            connections_active: self.connections_active.get_or_create(&label).clone(),
        }
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The status-class label of an HTTP status.
    pub fn status_class(status: http::StatusCode) -> StatusClassLabel {
        let status_class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        StatusClassLabel { status_class }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_design_section_7() {
        let m = Metrics::new();
        m.connections_total.get_or_create(&AppLabel { app: "echo".into() }).inc();
        m.proxy_requests.get_or_create(&Metrics::status_class(http::StatusCode::BAD_GATEWAY)).inc();
        m.multicast_duration.observe(0.0001);
        let text = m.render();
        for name in [
            "wsgate_connections_total{app=\"echo\"} 1",
            "wsgate_proxy_requests_total{status_class=\"5xx\"} 1",
            "wsgate_multicast_duration_seconds_bucket",
            "wsgate_build_info{version=\"",
            "# TYPE wsgate_subscriptions_active gauge",
            "# TYPE process_cpu_seconds counter",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
