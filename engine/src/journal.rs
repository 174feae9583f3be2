//! A run's journal as the driver sees it: a cursor over what was recorded, and a
//! buffer of new records committed at the next side-effect boundary.
//!
//! DESIGN.md §3: every decision point first takes the next recorded record, and acts
//! live only when the cursor is exhausted. New records are buffered and committed in
//! one append before the next side effect (one fsync per step); their events reach the
//! consumer only after that commit is durable.

use std::collections::VecDeque;
use std::sync::Arc;

use flowai_storage::payloads::Payload;
use flowai_storage::{
    AppendRequest, Clock, IndexUpdate, Precondition, Record, RecordKind, RunAppend, RunId, Store,
    StoredRecord,
};
use tokio::sync::mpsc;

use crate::error::EngineError;
use crate::events::{Event, Projector};

/// How the driver treats the journal (DESIGN.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveMode {
    /// A new run: nothing is recorded yet.
    Live,
    /// Consume the journal, then continue live.
    Resume,
    /// Consume the journal, never act live, stop at its end.
    Verify,
}

/// Where a run's events go. A dropped receiver stops delivery, never the run.
///
/// Events travel in batches, one per commit: a consumer on another thread is woken
/// once per batch rather than once per event.
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: Option<mpsc::Sender<Vec<Event>>>,
}

impl EventSink {
    pub(crate) fn new(tx: mpsc::Sender<Vec<Event>>) -> EventSink {
        EventSink { tx: Some(tx) }
    }

    pub(crate) fn none() -> EventSink {
        EventSink { tx: None }
    }

    pub(crate) async fn send(&mut self, event: Event) {
        self.send_batch(vec![event]).await;
    }

    /// Delivers `events` like [`EventSink::send_batch`], calling `before_visible` once
    /// they have room in the channel, right before the consumer can see them: whatever it
    /// does then, no wait on the consumer comes between it and the consumer seeing them.
    pub(crate) async fn send_batch_then(
        &mut self,
        events: Vec<Event>,
        before_visible: impl FnOnce(),
    ) {
        let tx = match &self.tx {
            Some(tx) if !events.is_empty() => tx.clone(),
            _ => return before_visible(),
        };
        match tx.reserve().await {
            Ok(permit) => {
                before_visible();
                permit.send(events);
            }
            Err(_) => {
                before_visible();
                self.tx = None;
            }
        }
    }

    pub(crate) async fn send_batch(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            // Back-pressure: a live consumer paces the run. Once it is gone, events are
            // still in the journal and readable through replay.
            if tx.send(events).await.is_err() {
                self.tx = None;
            }
        }
    }
}

struct Pending {
    record: Record,
    /// Leading events of this record already delivered live (streamed provider text).
    already_emitted: usize,
}

pub(crate) struct RunJournal {
    store: Store,
    run_id: RunId,
    clock: Arc<dyn Clock>,
    mode: DriveMode,
    cursor: VecDeque<StoredRecord>,
    /// Records at or after this seq were appended by a host while no runtime drove the
    /// run; their events were never delivered, so resume delivers them.
    undelivered_from: u64,
    next_seq: u64,
    pending: Vec<Pending>,
    pending_updates: Vec<IndexUpdate>,
    first_precondition: Option<Precondition>,
    /// The precondition of the next commit, set by [`RunJournal::guard_from_here`]: the
    /// records pushed after it are written only if it holds.
    guard: Option<Precondition>,
    projector: Projector,
    sink: EventSink,
}

/// Whether a record kind can be written by host code or another process.
pub(crate) fn host_originated(kind: RecordKind, payload: &str) -> bool {
    match kind {
        RecordKind::ReferenceCreated => true,
        RecordKind::ApprovalDecided | RecordKind::RunCancelled => {
            payload.contains("\"origin\":\"host\"")
        }
        _ => false,
    }
}

/// A payload as a divergence message quotes it: whole when short, else cut at a character
/// boundary (a model turn or a plan can be hundreds of kilobytes).
fn shortened(payload: &str) -> String {
    const LIMIT: usize = 300;
    match payload.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}… ({} bytes)", &payload[..cut], payload.len()),
        None => payload.to_owned(),
    }
}

impl RunJournal {
    pub(crate) fn new_live(
        store: Store,
        run_id: RunId,
        clock: Arc<dyn Clock>,
        sink: EventSink,
    ) -> RunJournal {
        RunJournal {
            store,
            run_id,
            clock,
            mode: DriveMode::Live,
            cursor: VecDeque::new(),
            undelivered_from: u64::MAX,
            next_seq: 1,
            pending: Vec::new(),
            pending_updates: Vec::new(),
            first_precondition: Some(Precondition::RunAbsent(run_id)),
            guard: None,
            projector: Projector::new(),
            sink,
        }
    }

    pub(crate) fn new_recorded(
        store: Store,
        run_id: RunId,
        clock: Arc<dyn Clock>,
        mode: DriveMode,
        recorded: Vec<StoredRecord>,
        sink: EventSink,
    ) -> RunJournal {
        let next_seq = recorded.last().map_or(1, |r| r.seq + 1);
        let mut undelivered_from = next_seq;
        for r in recorded.iter().rev() {
            if host_originated(r.record.kind, &r.record.payload) {
                undelivered_from = r.seq;
            } else {
                break;
            }
        }
        RunJournal {
            store,
            run_id,
            clock,
            mode,
            cursor: recorded.into(),
            undelivered_from: if mode == DriveMode::Resume {
                undelivered_from
            } else {
                u64::MAX
            },
            next_seq,
            pending: Vec::new(),
            pending_updates: Vec::new(),
            first_precondition: None,
            guard: None,
            projector: Projector::new(),
            sink,
        }
    }

    pub(crate) fn run_id(&self) -> RunId {
        self.run_id
    }

    pub(crate) fn mode(&self) -> DriveMode {
        self.mode
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The seq the next new record will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether recorded records remain to be consumed.
    pub(crate) fn replaying(&self) -> bool {
        !self.cursor.is_empty()
    }

    /// The seq of the next recorded record, if any.
    pub(crate) fn next_recorded_seq(&self) -> u64 {
        self.cursor.front().map_or(self.next_seq, |r| r.seq)
    }

    pub(crate) fn peek_kind(&self) -> Option<RecordKind> {
        self.cursor.front().map(|r| r.record.kind)
    }

    /// Verifying, whether the run was cancelled at this point: from outside while no
    /// runtime drove it (a handler possibly in doubt), or by its driver at a check between
    /// steps. Its journal ends wherever the driver stands; nothing is left to compare.
    pub(crate) fn cancelled_here(&self) -> bool {
        self.mode == DriveMode::Verify && self.peek_kind() == Some(RecordKind::RunCancelled)
    }

    /// Takes the next recorded record, which must be of kind `P`. `Ok(None)` means the
    /// journal is exhausted and the caller acts live (Verify stops instead).
    pub(crate) async fn take<P: Payload>(&mut self) -> Result<Option<(u64, P)>, EngineError> {
        let Some(front) = self.cursor.front() else {
            return match self.mode {
                DriveMode::Verify => Err(EngineError::JournalEnd),
                DriveMode::Live | DriveMode::Resume => Ok(None),
            };
        };
        if P::KIND != RecordKind::RunCancelled && self.cancelled_here() {
            return Err(EngineError::JournalEnd);
        }
        if front.record.kind != P::KIND {
            return Err(EngineError::NonDeterminism {
                run: self.run_id.to_string(),
                seq: front.seq,
                recorded: format!(
                    "{} {}",
                    front.record.kind.name(),
                    shortened(&front.record.payload)
                ),
                actual: format!("a record of kind {}", P::KIND.name()),
            });
        }
        let Some(stored) = self.cursor.pop_front() else {
            return Ok(None);
        };
        let payload: P = serde_json::from_str(&stored.record.payload).map_err(|e| {
            EngineError::CorruptPayload {
                seq: stored.seq,
                kind: P::KIND.name(),
                reason: e.to_string(),
            }
        })?;
        let events =
            self.projector
                .project(stored.seq, stored.record.kind, &stored.record.payload)?;
        if stored.seq >= self.undelivered_from {
            self.sink.send_batch(events).await;
        }
        Ok(Some((stored.seq, payload)))
    }

    /// Buffers a new record; returns its seq. Committed by the next [`flush`].
    pub(crate) fn push<P: Payload>(
        &mut self,
        payload: &P,
        updates: Vec<IndexUpdate>,
    ) -> Result<u64, EngineError> {
        self.push_streamed(payload, updates, 0)
    }

    /// Like [`push`], for a record whose first `already_emitted` events were delivered
    /// live before it was recorded.
    pub(crate) fn push_streamed<P: Payload>(
        &mut self,
        payload: &P,
        updates: Vec<IndexUpdate>,
        already_emitted: usize,
    ) -> Result<u64, EngineError> {
        if self.mode == DriveMode::Verify {
            return Err(EngineError::JournalEnd);
        }
        let text = serde_json::to_string(payload)
            .map_err(|e| EngineError::Internal(format!("cannot encode {}: {e}", P::KIND.name())))?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(Pending {
            record: Record {
                kind: P::KIND,
                version: P::VERSION,
                at_ms: self.clock.now_ms(),
                payload: text,
            },
            already_emitted,
        });
        self.pending_updates.extend(updates);
        Ok(seq)
    }

    /// Moves into the cursor the records a host appended after this run's last one
    /// (a decision journaled while the run was being started); their events are
    /// delivered when they are taken. Call with nothing buffered.
    pub(crate) fn catch_up(&mut self) -> Result<(), EngineError> {
        if !self.pending.is_empty() {
            return Err(EngineError::Internal(String::from(
                "catch_up with uncommitted records",
            )));
        }
        for stored in self.store.records(self.run_id, self.next_seq)? {
            self.undelivered_from = self.undelivered_from.min(stored.seq);
            self.next_seq = stored.seq + 1;
            self.cursor.push_back(stored);
        }
        Ok(())
    }

    /// Adds index updates to the next commit without a record.
    pub(crate) fn push_updates(&mut self, updates: Vec<IndexUpdate>) {
        self.pending_updates.extend(updates);
    }

    /// Sends an event that has no record yet (live provider deltas, DESIGN.md §3 rule 6).
    pub(crate) async fn emit_unrecorded(&mut self, event: Event) {
        self.sink.send(event).await;
    }

    /// Commits the buffered records in one append, then delivers their events.
    pub(crate) async fn flush(&mut self) -> Result<(), EngineError> {
        let events = self.commit().await?;
        self.deliver(events).await;
        Ok(())
    }

    /// [`RunJournal::flush`], calling `before_visible` right before the consumer can see
    /// the committed events (see [`EventSink::send_batch_then`]).
    pub(crate) async fn flush_then(
        &mut self,
        before_visible: impl FnOnce(),
    ) -> Result<(), EngineError> {
        let events = self.commit().await?;
        self.sink.send_batch_then(events, before_visible).await;
        Ok(())
    }

    /// Commits what is buffered, then makes `precondition` the condition of the next
    /// commit, so that it covers exactly the records pushed from here on. Commit that
    /// with [`RunJournal::flush_guarded`], which reports a failed guard to the caller.
    ///
    /// Flushing first keeps records that do not depend on the guard (the model turn, the
    /// tool call) out of a commit that may be refused, and lets a run's first commit keep
    /// its own `RunAbsent` precondition.
    pub(crate) async fn guard_from_here(
        &mut self,
        precondition: Precondition,
    ) -> Result<(), EngineError> {
        self.flush().await?;
        if self.first_precondition.is_some() || self.guard.is_some() {
            return Err(EngineError::Internal(String::from(
                "a guarded commit must follow the run's first commit and no other guard",
            )));
        }
        self.guard = Some(precondition);
        Ok(())
    }

    /// Commits the records pushed since [`RunJournal::guard_from_here`] under its
    /// precondition. `Ok(Err(why))` means the precondition failed: nothing was written,
    /// those records are dropped and their seqs will be given to the next records, so the
    /// journal reads as if they had never been pushed.
    pub(crate) async fn flush_guarded(&mut self) -> Result<Result<(), String>, EngineError> {
        let first_seq = self.next_seq - self.pending.len() as u64;
        let committed = self.commit().await;
        // A guard covers one commit only, even one that found nothing to write.
        self.guard = None;
        match committed {
            Ok(events) => {
                self.deliver(events).await;
                Ok(Ok(()))
            }
            Err(EngineError::Store(flowai_storage::StoreError::PreconditionFailed { what })) => {
                self.next_seq = first_seq;
                Ok(Err(what))
            }
            Err(e) => Err(e),
        }
    }

    /// Commits the buffered records in one append and returns their events, not yet
    /// delivered: a caller can acknowledge the commit before waiting on the consumer.
    pub(crate) async fn commit(&mut self) -> Result<Vec<Event>, EngineError> {
        if self.pending.is_empty() && self.pending_updates.is_empty() {
            return Ok(Vec::new());
        }
        let pending = std::mem::take(&mut self.pending);
        let updates = std::mem::take(&mut self.pending_updates);
        let first_seq = self.next_seq - pending.len() as u64;
        // Projected before the append so the records move into it without a copy; if the
        // append fails the run ends with that error and these events are never delivered.
        let mut events = Vec::new();
        let mut records = Vec::with_capacity(pending.len());
        for (offset, p) in pending.into_iter().enumerate() {
            let seq = first_seq + offset as u64;
            let projected = self
                .projector
                .project(seq, p.record.kind, &p.record.payload)?;
            events.extend(projected.into_iter().skip(p.already_emitted));
            records.push(p.record);
        }
        let count = records.len();
        let request = AppendRequest {
            run: if records.is_empty() {
                None
            } else {
                Some(RunAppend {
                    run_id: self.run_id,
                    expected_first_seq: Some(first_seq),
                    records,
                })
            },
            index_updates: updates,
            precondition: self
                .first_precondition
                .take()
                .or_else(|| self.guard.take())
                .unwrap_or(Precondition::None),
        };
        tracing::debug!(run_id = %self.run_id, first_seq, records = count, "journal commit");
        self.store.append(request).await?;
        Ok(events)
    }

    /// Delivers committed events to the consumer (back-pressure applies here).
    pub(crate) async fn deliver(&mut self, events: Vec<Event>) {
        self.sink.send_batch(events).await;
    }
}
