//! Verified chunks as the writer waits for them: the peer sends the chunks of a batch in
//! any order, the writer needs them in file order, so those that come early wait here
//! (bounded, or the peer is deemed misbehaving).

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::{ChunkMsg, ReceiveError, protocol};

/// Most chunk bytes held for out-of-order arrival before the peer is deemed misbehaving.
const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

pub(crate) struct Inbox {
    rx: mpsc::Receiver<Vec<ChunkMsg>>,
    pending: HashMap<(u64, u32), bytes::Bytes>,
    pending_bytes: usize,
    unavailable: HashMap<(u64, u32), String>,
    limit: usize,
}

impl Inbox {
    pub fn new(rx: mpsc::Receiver<Vec<ChunkMsg>>) -> Self {
        Self::with_limit(rx, MAX_PENDING_BYTES)
    }

    fn with_limit(rx: mpsc::Receiver<Vec<ChunkMsg>>, limit: usize) -> Self {
        Inbox { rx, pending: HashMap::new(), pending_bytes: 0, unavailable: HashMap::new(), limit }
    }

    /// Waits for chunk `(seq, idx)`: its data, or (`Err` inside `Ok`) why the peer could not
    /// read it.
    pub fn take(&mut self, seq: u64, idx: u32) -> Result<Result<bytes::Bytes, String>, ReceiveError> {
        loop {
            if let Some(d) = self.pending.remove(&(seq, idx)) {
                self.pending_bytes -= d.len();
                return Ok(Ok(d));
            }
            if let Some(r) = self.unavailable.remove(&(seq, idx)) {
                return Ok(Err(r));
            }
            let Some(batch) = self.rx.blocking_recv() else {
                return Err(ReceiveError::Stream("the transfer ended while chunks were due".into()));
            };
            for m in batch {
                match m {
                    ChunkMsg::Data { seq: s, index, data } => {
                        self.pending_bytes += data.len();
                        if self.pending_bytes > self.limit {
                            return Err(protocol("too many chunks sent out of order"));
                        }
                        self.pending.insert((s, index), data);
                    }
                    ChunkMsg::Unavailable { seq: s, index, reason } => {
                        self.unavailable.insert((s, index), reason);
                    }
                    ChunkMsg::Invalid(m) => return Err(protocol(m)),
                }
            }
        }
    }

    /// At the end of the pass: every chunk sent must have been asked for, even where no
    /// file waited for it (the verifier flags the others). Returns once the verifier is done
    /// (the reader stopped at Done, so that is promptly).
    pub fn drain(&mut self) -> Result<(), ReceiveError> {
        while let Some(batch) = self.rx.blocking_recv() {
            for m in batch {
                if let ChunkMsg::Invalid(m) = m {
                    return Err(protocol(m));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn data(seq: u64, index: u32, d: &'static [u8]) -> ChunkMsg {
        ChunkMsg::Data { seq, index, data: Bytes::from_static(d) }
    }

    #[test]
    fn chunks_out_of_order_wait_for_their_turn() {
        let (tx, rx) = mpsc::channel(4);
        let mut inbox = Inbox::new(rx);
        tx.try_send(vec![data(0, 2, b"two"), data(0, 1, b"one")]).unwrap();
        let gone = ChunkMsg::Unavailable { seq: 0, index: 3, reason: "changed".into() };
        tx.try_send(vec![gone]).unwrap();
        assert_eq!(inbox.take(0, 1).unwrap().unwrap(), "one");
        assert_eq!(inbox.take(0, 2).unwrap().unwrap(), "two");
        assert_eq!(inbox.take(0, 3).unwrap().unwrap_err(), "changed");
        drop(tx);
        assert!(matches!(inbox.take(0, 4), Err(ReceiveError::Stream(_))));
    }

    #[test]
    fn a_flood_or_an_invalid_chunk_is_refused() {
        let (tx, rx) = mpsc::channel(4);
        let mut inbox = Inbox::with_limit(rx, 5);
        tx.try_send(vec![data(0, 1, b"abc"), data(0, 2, b"def")]).unwrap();
        let e = inbox.take(0, 0).unwrap_err();
        assert_eq!(e.to_string(), "agent sent an invalid stream: too many chunks sent out of order");

        let (tx, rx) = mpsc::channel(4);
        let mut inbox = Inbox::new(rx);
        tx.try_send(vec![data(0, 1, b"abc")]).unwrap();
        tx.try_send(vec![ChunkMsg::Invalid("chunk 0/7 was not requested".into())]).unwrap();
        drop(tx);
        let e = inbox.drain().unwrap_err();
        assert_eq!(e.to_string(), "agent sent an invalid stream: chunk 0/7 was not requested");
    }
}
