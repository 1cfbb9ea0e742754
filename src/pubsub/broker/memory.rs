//! The in-process broker: hubs attached to one [`MemoryBus`] form a cluster inside one
//! process. wsgate's default (`[broker] kind = "memory"`) puts its single hub alone on a
//! bus, so nothing is relayed; several hubs on a bus exercise the cluster semantics (relay,
//! exclude across nodes, send by node prefix) without a network.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use super::{deliver_direct, Broker, BrokerError, Control, Envelope, Payload};
use crate::pubsub::channel::ChannelId;
use crate::pubsub::hub::{encode, Hub};
use crate::pubsub::Message;

/// Hubs that relay to each other, by node name.
#[derive(Default)]
pub(crate) struct MemoryBus {
    hubs: RwLock<HashMap<String, Weak<Hub>>>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus").finish_non_exhaustive()
    }
}

impl MemoryBus {
    /// An empty bus.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Attaches `hub` as node `node` and sets its broker. Returns the broker, or `None` when
    /// the hub already had one.
    pub(crate) fn attach(self: &Arc<Self>, node: &str, hub: &Arc<Hub>) -> Option<Arc<MemoryBroker>> {
        let broker = Arc::new(MemoryBroker { node: node.to_owned(), bus: self.clone() });
        if !hub.set_broker(broker.clone()) {
            return None;
        }
        self.hubs.write().unwrap_or_else(|p| p.into_inner()).insert(node.to_owned(), Arc::downgrade(hub));
        Some(broker)
    }

    fn others(&self, node: &str) -> Vec<Arc<Hub>> {
        let hubs = self.hubs.read().unwrap_or_else(|p| p.into_inner());
        hubs.iter().filter(|(n, _)| n.as_str() != node).filter_map(|(_, h)| h.upgrade()).collect()
    }

    fn hub(&self, node: &str) -> Option<Arc<Hub>> {
        self.hubs.read().unwrap_or_else(|p| p.into_inner()).get(node).and_then(Weak::upgrade)
    }
}

/// One hub's handle on a [`MemoryBus`].
#[derive(Debug)]
pub(crate) struct MemoryBroker {
    node: String,
    bus: Arc<MemoryBus>,
}

impl MemoryBroker {
    /// Hands a send or control operation to the hub of `node`. Unknown or closed channels
    /// there are not reported back (as with Redis).
    fn direct(&self, node: &str, id: &ChannelId, payload: Payload) -> Result<(), BrokerError> {
        let hub = self.bus.hub(node).ok_or_else(|| BrokerError::UnknownNode(node.to_owned()))?;
        let envelope = Envelope {
            origin: self.node.clone(),
            target: id.to_string(),
            exclude: Vec::new(),
            sequence: None,
            payload,
        };
        deliver_direct(&hub, &envelope);
        Ok(())
    }
}

impl Broker for MemoryBroker {
    fn node(&self) -> &str {
        &self.node
    }

    fn publish(&self, name: &str, message: &Message, exclude: &[ChannelId]) -> Option<bool> {
        let others = self.bus.others(&self.node);
        if others.is_empty() {
            return None;
        }
        // One encoding serves every node here; Redis nodes encode once per node instead.
        let frame = encode(message);
        for hub in others {
            hub.deliver_relayed(name, frame.clone(), message, exclude);
        }
        Some(true)
    }

    fn send(&self, node: &str, id: &ChannelId, message: &Message) -> Result<(), BrokerError> {
        self.direct(node, id, Payload::Message(message.clone()))
    }

    fn control(&self, node: &str, id: &ChannelId, op: &Control) -> Result<(), BrokerError> {
        self.direct(node, id, Payload::Control(op.clone()))
    }

    fn interest_changed(&self, _name: &str) {
        // Every hub on the bus sees every publish and filters by its own members.
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn errors(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::channel::{ChannelIdGenerator, ChannelQueue, Outbound};
    use crate::pubsub::hub::test_support::open;
    use crate::pubsub::HubError;
    use bytes::Bytes;

    fn count(queue: &mut ChannelQueue) -> usize {
        let mut n = 0;
        while let Some(_frame) = queue.rx.try_recv().ok().as_ref().and_then(Outbound::plain_frame) {
            n += 1;
        }
        n
    }

    #[test]
    fn hubs_on_one_bus_act_as_one_cluster() {
        let bus = MemoryBus::new();
        let hubs: Vec<Arc<Hub>> = (0..3).map(|_| Arc::new(Hub::new())).collect();
        let mut chans = Vec::new();
        for (i, hub) in hubs.iter().enumerate() {
            let node = format!("m{i}");
            assert!(bus.attach(&node, hub).is_some());
            assert!(bus.attach(&node, hub).is_none(), "one broker per hub");
            let ids = ChannelIdGenerator::new(node);
            for _ in 0..2 {
                let (h, q) = open(hub, &ids);
                hub.subscribe(h.id(), "room").unwrap();
                chans.push((h, q));
            }
        }
        // Exclude a channel of another node: every other member hears it exactly once.
        let excluded = chans[5].0.id().clone();
        let local = hubs[0].multicast("room", &Message::Text(Bytes::from_static(b"x")), &[excluded]);
        assert_eq!(local.delivered, 2, "the returned counts are the local node's");
        let got: Vec<usize> = chans.iter_mut().map(|(_, q)| count(q)).collect();
        assert_eq!(got, vec![1, 1, 1, 1, 1, 0]);

        // Send routes by the node prefix; an unknown local id stays an error.
        let target = chans[3].0.id().to_string();
        hubs[0].send(&target, &Message::Text(Bytes::from_static(b"dm"))).unwrap();
        assert_eq!(count(&mut chans[3].1), 1);
        assert!(matches!(
            hubs[0].send("m0-000000000099", &Message::Text(Bytes::new())),
            Err(HubError::UnknownChannel(_))
        ));
        assert!(
            matches!(hubs[0].send("zz-000000000001", &Message::Text(Bytes::new())), Err(HubError::UnknownChannel(_))),
            "a node nobody knows has no such channel"
        );

        // Control operations reach channels of other nodes.
        let far = chans[4].0.id().to_string();
        crate::pubsub::broker::control(&hubs[0], &far, &Control::Unsubscribe("room".into())).unwrap();
        assert_eq!(hubs[2].members("room").len(), 1);
        crate::pubsub::broker::control(&hubs[0], &far, &Control::Subscribe("side".into())).unwrap();
        assert_eq!(hubs[2].members("side"), vec![chans[4].0.id().clone()]);

        // `all` reaches every channel of every node.
        hubs[2].multicast(crate::pubsub::ALL, &Message::Binary(Bytes::from_static(&[1])), &[]);
        let got: Vec<usize> = chans.iter_mut().map(|(_, q)| count(q)).collect();
        assert_eq!(got, vec![1; 6]);
    }
}
