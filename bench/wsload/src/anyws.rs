//! One connection of a subscriber or echo client, whichever client opened it: tungstenite by
//! default, the raw client (`raw`) when permessage-deflate is offered.

use std::time::Duration;

use crate::conn::{ws_connect, ConnOpts, Target, Ws};

/// A subscriber's or echo client's connection: tungstenite by default, or the raw client
/// when permessage-deflate is offered (tungstenite rejects compressed frames).
pub enum AnyWs {
    Tung(Box<Ws>),
    Raw(Box<crate::raw::RawWs>),
}

/// One received data message: bytes, and whether it arrived compressed.
pub type Data = (Vec<u8>, bool);

impl AnyWs {
    /// Opens a connection; with `deflate`, through the raw client offering permessage-deflate.
    pub async fn open(target: &Target, idx: usize, opts: &ConnOpts, deflate: bool) -> Result<AnyWs, String> {
        if deflate {
            crate::raw::open(target, idx, opts, true)
                .await
                .map(|(ws, _)| AnyWs::Raw(Box::new(ws)))
                .map_err(|e| e.to_string())
        } else {
            ws_connect(target, idx, opts).await.map(|ws| AnyWs::Tung(Box::new(ws)))
        }
    }

    /// Whether the server accepted permessage-deflate.
    pub fn deflate(&self) -> bool {
        matches!(self, AnyWs::Raw(r) if r.deflate())
    }

    pub async fn send_text(&mut self, text: String, binary: bool) -> Result<(), String> {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        match self {
            AnyWs::Tung(ws) => {
                let msg = if binary { Message::Binary(text.into_bytes().into()) } else { Message::Text(text.into()) };
                ws.send(msg).await.map_err(|e| format!("send: {e}"))
            }
            AnyWs::Raw(ws) => ws.send_text(&text).await.map_err(|e| format!("send: {e}")),
        }
    }

    /// Next data message; Ok(None) when the server closed (Close frame or EOF).
    pub async fn next_data(&mut self) -> Result<Option<Data>, String> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        match self {
            AnyWs::Tung(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(Some((t.as_bytes().to_vec(), false))),
                    Some(Ok(Message::Binary(b))) => return Ok(Some((b.to_vec(), false))),
                    Some(Ok(Message::Close(_))) | None => return Ok(None),
                    Some(Ok(_)) => continue, // ping/pong: tungstenite answers pings itself
                    Some(Err(e)) => return Err(e.to_string()),
                }
            },
            AnyWs::Raw(ws) => match ws.recv().await? {
                Some(crate::raw::Event::Data(m)) => Ok(Some((m.data, m.compressed))),
                Some(crate::raw::Event::Close(_)) => {
                    ws.answer_close().await;
                    Ok(None)
                }
                None => Ok(None),
            },
        }
    }

    /// Closing handshake, bounded.
    pub async fn close(&mut self, timeout: Duration) {
        match self {
            AnyWs::Tung(ws) => {
                let _ = tokio::time::timeout(timeout, ws.close(None)).await;
            }
            AnyWs::Raw(ws) => {
                let _ = ws.close(timeout).await;
            }
        }
    }
}
