//! `echo`: every message goes back unchanged (text stays text, binary stays binary). It is the
//! conformance endpoint the Autobahn suite runs against.

use super::{App, Message};
use crate::pubsub::ChannelHandle;

/// The echo app.
#[derive(Debug, Default)]
pub(crate) struct Echo;

impl App for Echo {
    fn on_message(&self, channel: &ChannelHandle, message: Message) {
        // A full queue is handled by the channel's slow-consumer policy; nothing more to do here.
        let _ = channel.send(&message);
    }
}
