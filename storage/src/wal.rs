//! A redb storage backend that makes a commit one sequential write to a log file.
//!
//! redb commits copy-on-write: a one-record commit rewrites about eight 4 KiB pages spread
//! over the file, and each separate range is its own block request at the fdatasync. On a
//! virtualized disk that costs twice a sequential append of the same bytes (FORMAT.md has
//! the figures). This backend keeps the file the same redb file, but between checkpoints it
//! writes what redb writes into `<store>-wal` instead:
//!
//! - `write` and `set_len` change an in-memory image of the file (the pages changed since
//!   the last checkpoint over the file itself) and are remembered as pending;
//! - `sync_data` appends one *frame* with every byte range changed since the previous frame
//!   to the log, which is preallocated, and fdatasyncs the log: one sequential write;
//! - when the log is full (and at close) a *checkpoint* writes the image into the store
//!   file, fdatasyncs it, then starts a new log generation.
//!
//! A frame is valid only whole: its checksum chains from the previous frame's and from the
//! generation's random salt, so a torn frame, a frame of an older generation or bytes that
//! merely look like a frame end the log. After a crash, opening replays the valid frames
//! onto the image: redb sees its file exactly as of its last `sync_data`, which is what it
//! requires. Reading never changes either file; only a writer (after redb took its lock)
//! appends, checkpoints and, at close, removes the log.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Page-sized unit of the image (redb's page size).
const CHUNK: u64 = 4096;
/// Log header magic ([`HEADER_LEN`] has the layout). Frames start at [`FRAMES_START`].
const WAL_MAGIC: &[u8; 8] = b"FLOWAIWL";
/// Version 2 added journal frames, version 3 the fingerprint of the store file the
/// generation started over; logs of versions 1 and 2 are still read.
const WAL_VERSION: u32 = 3;
/// Header of versions 1 and 2: magic, version, 0, salt, checksum.
const HEADER_LEN_V2: usize = 8 + 4 + 4 + 8 + 16;
/// Header of version 3: magic, version, 0, salt, the store file's length and fingerprint
/// when the generation started, checksum.
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 16 + 16;
/// Written after the header (and fdatasynced) before a checkpoint first touches the store
/// file: magic, the generation's salt, checksum. From then on the store file may differ
/// from the header's fingerprint.
const CHECKPOINT_MARK_MAGIC: u32 = 0x464c_5743;
const CHECKPOINT_MARK_LEN: usize = 4 + 8 + 16;
const FRAMES_START: u64 = 4096;
const FRAME_MAGIC: u32 = 0x464c_5746;
/// A journal frame: appends the store acknowledged after a non-durable redb commit (see
/// [`WalBackend::append_journal`]), with the page frame's header layout.
const JOURNAL_FRAME_MAGIC: u32 = 0x464c_574a;
/// magic, body length, frame number, shortest length since the previous frame, length.
const FRAME_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8;
const CHECKSUM_LEN: usize = 16;
/// One range in a frame body: offset, length, bytes.
const RANGE_HEADER_LEN: usize = 8 + 4;

/// How big the log is. It is written full of zeros, so that appending a frame changes no
/// file metadata and the fdatasync writes only the frame; a checkpoint runs when a frame
/// would not fit. A new log starts small (a fresh store opens fast) and doubles at each
/// checkpoint up to `max` (checkpoints then come every ~240 one-step commits).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogSize {
    pub initial: u64,
    pub max: u64,
}

pub(crate) const DEFAULT_LOG_SIZE: LogSize = LogSize {
    initial: 1 << 20,
    max: 8 << 20,
};

/// The log of the store at `path`.
pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

type Checksum = [u8; CHECKSUM_LEN];

/// The generation a replayed log lets a writer continue: version, salt, last checksum,
/// next frame number, end.
type Recovered = (u32, u64, Checksum, u64, u64);

/// xxh3-128 seeded with the generation's salt. Not a MAC: the salt is what keeps bytes
/// that were never a frame of this generation (old frames, user data inside pages) from
/// passing, and the chaining what keeps frames in their order.
fn checksum(seed: u64, parts: &[&[u8]]) -> Checksum {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    for part in parts {
        hasher.update(part);
    }
    hasher.digest128().to_le_bytes()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The file as redb sees it: the store file up to `base_len`, zeros beyond it, with the
/// chunks changed since the last checkpoint on top.
#[derive(Default)]
struct Image {
    chunks: BTreeMap<u64, Box<[u8]>>,
    /// Bytes of the store file that still count; a shrink since the checkpoint lowers it.
    base_len: u64,
    len: u64,
}

impl Image {
    /// Fills `out` with the store file's bytes at `offset`, zeros past `base_len`.
    fn read_base(&self, main: &FileBackend, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let from_file = self.base_len.saturating_sub(offset).min(out.len() as u64) as usize;
        if from_file > 0 {
            main.read(offset, &mut out[..from_file])?;
        }
        out[from_file..].fill(0);
        Ok(())
    }

    fn read(&self, main: &FileBackend, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| *end <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} past the end ({})",
                        out.len(),
                        self.len
                    ),
                )
            })?;
        let first = offset / CHUNK;
        let last = end.div_ceil(CHUNK);
        let changed: Vec<_> = self.chunks.range(first..last).collect();
        // Whole range changed: no need to touch the file at all.
        if (changed.len() as u64) < last - first {
            self.read_base(main, offset, out)?;
        }
        for (index, chunk) in changed {
            let chunk_start = index * CHUNK;
            let from = offset.max(chunk_start);
            let to = end.min(chunk_start + CHUNK);
            out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                &chunk[(from - chunk_start) as usize..(to - chunk_start) as usize],
            );
        }
        Ok(())
    }

    /// Writes `data` at `offset`, extending the length like a file write does. Calls
    /// `touched(chunk, from, to)` for each changed byte range within a chunk.
    fn write(
        &mut self,
        main: &FileBackend,
        offset: u64,
        data: &[u8],
        mut touched: impl FnMut(u64, usize, usize),
    ) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| invalid(format!("write at {offset} overflows")))?;
        let mut pos = offset;
        while pos < end {
            let index = pos / CHUNK;
            let chunk_start = index * CHUNK;
            let to = end.min(chunk_start + CHUNK);
            if !self.chunks.contains_key(&index) {
                let mut fresh = vec![0u8; CHUNK as usize].into_boxed_slice();
                let whole = pos == chunk_start && to == chunk_start + CHUNK;
                if !whole {
                    let known = self.len.saturating_sub(chunk_start).min(CHUNK) as usize;
                    self.read_base(main, chunk_start, &mut fresh[..known])?;
                }
                self.chunks.insert(index, fresh);
            }
            let Some(chunk) = self.chunks.get_mut(&index) else {
                return Err(io::Error::other(format!("chunk {index} vanished")));
            };
            let (from_in, to_in) = ((pos - chunk_start) as usize, (to - chunk_start) as usize);
            chunk[from_in..to_in]
                .copy_from_slice(&data[(pos - offset) as usize..(to - offset) as usize]);
            touched(index, from_in, to_in);
            pos = to;
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// New positions read as zeros, as for a file.
    fn set_len(&mut self, len: u64) {
        if len < self.len {
            self.base_len = self.base_len.min(len);
            let first_gone = len.div_ceil(CHUNK);
            self.chunks.split_off(&first_gone);
            let cut = (len % CHUNK) as usize;
            if cut != 0
                && let Some(chunk) = self.chunks.get_mut(&(len / CHUNK))
            {
                chunk[cut..].fill(0);
            }
        }
        self.len = len;
    }
}

/// What changed since the last frame.
struct Pending {
    /// Chunk index → changed byte range within it.
    ranges: BTreeMap<u64, (usize, usize)>,
    /// The file's length at the last frame.
    framed_len: u64,
    /// The shortest length the file had since the last frame.
    min_len: u64,
    len_changed: bool,
}

impl Pending {
    /// Nothing pending over a file of `len` bytes.
    fn at(len: u64) -> Pending {
        Pending {
            ranges: BTreeMap::new(),
            framed_len: len,
            min_len: len,
            len_changed: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty() && !self.len_changed
    }

    /// Whether the file only grew since the last frame: no byte written, never shorter.
    fn only_grew(&self) -> bool {
        self.ranges.is_empty() && self.min_len >= self.framed_len
    }

    fn touch(&mut self, index: u64, from: usize, to: usize) {
        self.ranges
            .entry(index)
            .and_modify(|r| *r = (r.0.min(from), r.1.max(to)))
            .or_insert((from, to));
    }
}

/// The open log of a writer.
struct Log {
    /// Shared with [`UnsyncedFrame`]s, which fdatasync it without the state's lock.
    file: Arc<File>,
    /// The version in this generation's header: journal frames go only into a version 2
    /// generation (a version 1 reader would take one for the end of the log).
    version: u32,
    capacity: u64,
    salt: u64,
    /// Checksum of the last valid frame (of the header before the first).
    prev: Checksum,
    next_frame: u64,
    /// Where the next frame goes.
    end: u64,
}

struct State {
    image: Image,
    pending: Pending,
    /// The log frames are appended to: the one found at open when its generation is
    /// valid (a writer continues it), else created on the first sync.
    log: Option<Log>,
    /// redb wrote through this backend, so it holds redb's write lock.
    wrote: bool,
    closed: bool,
    /// Bodies of the journal frames not known to be covered by a durable redb commit: those
    /// found at open, then those appended since the store last reported a durable commit
    /// ([`WalBackend::mark_durable`]). A checkpoint writes them again into the new
    /// generation (redb also syncs outside durable commits, e.g. when it grows the file,
    /// so a checkpoint does not mean they are covered), and closing keeps the log while
    /// there are any.
    journal: Vec<Vec<u8>>,
}

pub(crate) struct WalBackend {
    main: FileBackend,
    path: PathBuf,
    wal_path: PathBuf,
    writable: bool,
    size: LogSize,
    /// Set once redb's open succeeded: this backend holds redb's write lock.
    owned: Arc<AtomicBool>,
    /// The log next to the store file does not belong to it ([`belongs_to`]): it was not
    /// replayed, and this backend neither writes nor removes anything.
    foreign: Option<ForeignLog>,
    state: RwLock<State>,
}

impl fmt::Debug for WalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalBackend")
            .field("path", &self.path)
            .field("writable", &self.writable)
            .finish()
    }
}

impl WalBackend {
    /// A backend over the store file at `path` (opened here), with the frames of its log
    /// replayed. Changes no file: writing starts only when redb writes, after its lock.
    pub(crate) fn open(path: &Path, writable: bool, size: LogSize) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let main = FileBackend::new(file).map_err(|e| io::Error::other(e.to_string()))?;
        let wal_path = wal_path(path);
        let base_len = main.len()?;
        let mut image = Image {
            chunks: BTreeMap::new(),
            base_len,
            len: base_len,
        };
        let mut journal = Vec::new();
        let mut foreign = None;
        let recovered = match std::fs::read(&wal_path) {
            Ok(bytes) => match parse_header(&bytes)? {
                Some(header) => match belongs_to(&bytes, &header, &main)? {
                    Some(why) => {
                        // Nothing is replayed, and nothing may write: the log stays as it is.
                        foreign = Some(why);
                        None
                    }
                    None => Some(replay(&bytes, &header, &mut image, &main, &mut journal)?),
                },
                None => None,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let recovered = match (recovered, writable) {
            (Some((version, salt, prev, next_frame, end)), true) => {
                let file = OpenOptions::new().read(true).write(true).open(&wal_path)?;
                let capacity = file.metadata()?.len();
                Some(Log {
                    file: Arc::new(file),
                    version,
                    capacity,
                    salt,
                    prev,
                    next_frame,
                    end,
                })
            }
            _ => None,
        };
        let len = image.len;
        Ok(WalBackend {
            main,
            path: path.to_path_buf(),
            wal_path,
            writable,
            size,
            owned: Arc::new(AtomicBool::new(false)),
            foreign,
            state: RwLock::new(State {
                image,
                pending: Pending::at(len),
                log: recovered,
                wrote: false,
                closed: false,
                journal,
            }),
        })
    }

    /// Opens a writable redb database over the store at `path`, with its log. The outer
    /// error is the log's (reading it), the inner one redb's.
    pub(crate) fn open_database(
        path: &Path,
        mode: redb::ConcurrencyMode,
        size: LogSize,
        on_repair: impl Fn(&mut redb::RepairSession) + 'static,
    ) -> io::Result<Result<(redb::Database, Arc<WalBackend>), redb::DatabaseError>> {
        let backend = Arc::new(WalBackend::open(path, true, size)?);
        let opened = redb::Builder::new()
            .set_concurrency_mode(mode)
            .set_repair_callback(on_repair)
            .create_with_backend(SharedWal(Arc::clone(&backend)));
        // Only once redb's lock is ours does the log say anything: a live writer of
        // another process may be checkpointing it, and that one is reported as locked.
        if let Some(why) = backend.foreign
            && !matches!(opened, Err(redb::DatabaseError::DatabaseAlreadyOpen))
        {
            return Err(why.into());
        }
        if opened.is_ok() {
            backend.owned.store(true, Ordering::Release);
        }
        Ok(opened.map(|db| (db, backend)))
    }

    /// Appends one journal frame (`body`: appends the caller committed to redb without
    /// durability) and fdatasyncs it. `Ok(false)`: it does not fit in the log (or the log
    /// continues a version 1 generation); make a durable commit instead, which covers
    /// those appends.
    #[cfg(test)]
    pub(crate) fn append_journal(&self, body: &[u8]) -> io::Result<bool> {
        match self.write_journal(body)? {
            Some(frame) => frame.sync().map(|()| true),
            None => Ok(false),
        }
    }

    /// Writes one journal frame (`body`: appends about to be committed to redb without
    /// durability) and starts its writeback, without waiting for it: the caller commits
    /// to redb meanwhile, then makes the frame durable with [`UnsyncedFrame::sync`], and
    /// acknowledges only after that. `None`: it does not fit in the log (or the log
    /// continues a version 1 generation); make a durable commit instead.
    ///
    /// From here on the frame is in the log: if the redb commit then fails, the store
    /// must take no other append (a restart would replay the frame's records).
    pub(crate) fn write_journal(&self, body: &[u8]) -> io::Result<Option<UnsyncedFrame>> {
        let mut state = self.write_state()?;
        let len = (FRAME_HEADER_LEN + body.len() + CHECKSUM_LEN) as u64;
        let mut log = match state.log.take() {
            Some(log) => log,
            None => self.new_log()?,
        };
        if log.end + len > log.capacity || log.version < 2 {
            state.log = Some(log);
            return Ok(None);
        }
        let mut frames = Frames::after(&log);
        let written = frames
            .journal(body, state.image.len)
            .and_then(|()| frames.write_unsynced(&mut log));
        let file = Arc::clone(&log.file);
        state.log = Some(log);
        let (offset, len) = written?;
        start_writeback(&file, offset, len);
        // From the write on, a checkpoint must carry the frame into the next generation.
        state.journal.push(body.to_vec());
        Ok(Some(UnsyncedFrame(file)))
    }

    /// The store made a durable redb commit: every journal frame so far is covered by it.
    ///
    /// A log that grew past its size while journal frames were outstanding (see `sync`)
    /// is checkpointed now, while none is, and cut back to its size: otherwise every time
    /// it filled up again it would double.
    pub(crate) fn mark_durable(&self) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.journal.clear();
        if state
            .log
            .as_ref()
            .is_none_or(|log| log.capacity <= self.size.max)
        {
            return;
        }
        // A failure leaves the log as it was, valid and oversized: the next durable
        // commit tries again.
        let shrunk = self.checkpoint(&mut state, usize::MAX).and_then(|()| {
            let Some(log) = state.log.as_mut() else {
                return Ok(());
            };
            log.file.set_len(self.size.max)?;
            log.capacity = self.size.max;
            Ok(())
        });
        if let Err(e) = shrunk {
            tracing::warn!(log = %self.wal_path.display(), error = %e, "checkpointing an oversized write-ahead log failed");
        }
    }

    /// Whether some journal frame is not known to be covered by a durable commit.
    pub(crate) fn has_journal(&self) -> bool {
        !self.read_state().journal.is_empty()
    }

    /// The bytes of the journal frames not known to be covered by a durable commit.
    pub(crate) fn journal_bytes(&self) -> usize {
        self.read_state().journal.iter().map(Vec::len).sum()
    }

    /// The journal frames not known to be covered by a durable commit (all of them, in
    /// order, right after open: applying one already covered is a no-op).
    pub(crate) fn journal_tail(&self) -> Vec<Vec<u8>> {
        self.read_state().journal.clone()
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the log next to the store file was left alone, if it does not belong to it.
    pub(crate) fn foreign(&self) -> Option<ForeignLog> {
        self.foreign
    }

    fn write_state(&self) -> io::Result<RwLockWriteGuard<'_, State>> {
        if let Some(why) = self.foreign {
            return Err(why.into());
        }
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is open read-only", self.path.display()),
            ));
        }
        let state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            return Err(io::Error::other(format!(
                "{} is closed",
                self.path.display()
            )));
        }
        Ok(state)
    }

    fn new_log(&self) -> io::Result<Log> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&self.wal_path)?;
        let have = file.metadata()?.len();
        let capacity = have.max(self.size.initial).max(FRAMES_START + CHUNK);
        extend_with_zeros(&file, have, capacity)?;
        let mut log = Log {
            file: Arc::new(file),
            version: WAL_VERSION,
            capacity,
            salt: 0,
            prev: [0; CHECKSUM_LEN],
            next_frame: 0,
            end: FRAMES_START,
        };
        start_generation(&mut log, fingerprint(&self.main)?)?;
        if have < capacity {
            // The log's directory entry must outlive a crash, or so would not its frames.
            sync_parent_dir(&self.wal_path)?;
        }
        Ok(log)
    }

    /// Appends the pending changes as one frame and fdatasyncs it; checkpoints instead when
    /// the frame does not fit in the log, unless journal frames are outstanding.
    ///
    /// Journal frames not yet covered by a durable redb commit hold records that may be
    /// nowhere else on disk (redb keeps a non-durable commit's pages in memory, and a sync
    /// outside a durable commit, when redb grows the file, does not flush them). A
    /// checkpoint's new generation would end the frames' validity one fdatasync before
    /// writing them again into it, and a crash in between would lose acknowledged records.
    /// So while they are outstanding the log grows past its size instead; the next durable
    /// commit covers them, and the first frame that does not fit after it checkpoints.
    ///
    /// A file that only grew since the last frame gets no frame of its own: the growth waits
    /// in `pending` for the next frame, which carries the length with the bytes written
    /// into it. redb syncs after growing its file only so that the growth is durable before
    /// any header describing the larger file is (`TransactionalMemory::grow`); that header
    /// is written into the file, so it reaches the log in a later frame together with the
    /// length, or not at all. Until then a crash leaves the file as of the last frame, as
    /// short as the header that frame holds expects. A grown file's fdatasync was ≈ 0.2–0.4
    /// ms, twice at the start of a fresh store's first run and again at each growth.
    fn sync(&self, state: &mut State) -> io::Result<()> {
        if state.pending.is_empty() || state.pending.only_grew() {
            return Ok(());
        }
        let len = frame_len(&state.pending, &state.image);
        let may_checkpoint = state.journal.is_empty();
        if FRAMES_START + len > self.size.max && may_checkpoint {
            return self.checkpoint(state, usize::MAX);
        }
        let mut log = match state.log.take() {
            Some(log) => log,
            None => self.new_log()?,
        };
        if log.end + len > log.capacity {
            if may_checkpoint {
                state.log = Some(log);
                return self.checkpoint(state, usize::MAX);
            }
            // Only past the frame, and not zero-filled in advance: the durable commit that
            // covers the journal frames (usually the one writing this frame) cuts the log
            // back to its size, so the space is written once. Filling the doubled log with
            // zeros first cost 10-20 ms at a run's start (BENCHMARKS.md).
            log.capacity = log.end + len;
        }
        let result = append_frame(&mut log, &state.image, &state.pending, len);
        state.log = Some(log);
        result?;
        state.pending = Pending::at(state.image.len);
        Ok(())
    }

    /// Writes the image into the store file and fdatasyncs it, then starts a new log
    /// generation, after which the old frames no longer count. `chunk_limit` stops after
    /// that many chunk writes, as a crash would (tests only pass less than `usize::MAX`).
    fn checkpoint(&self, state: &mut State, chunk_limit: usize) -> io::Result<()> {
        self.write_image(state, chunk_limit)?;
        self.start_next_generation(state)
    }

    /// A checkpoint's first half: the image into the store file, fdatasynced. The log's
    /// frames still count, and replayed over the file they give the same image again.
    fn write_image(&self, state: &mut State, chunk_limit: usize) -> io::Result<()> {
        if let Some(log) = state.log.as_mut()
            && log.version >= 3
        {
            mark_checkpoint(log)?;
        }
        let image = &mut state.image;
        let file_len = self.main.len()?;
        if file_len > image.base_len {
            self.main.set_len(image.base_len)?;
        }
        if image.len != image.base_len.min(file_len) {
            self.main.set_len(image.len)?;
        }
        // Adjacent chunks go out as one write.
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        for (written, (index, chunk)) in image.chunks.iter().enumerate() {
            if written == chunk_limit {
                return Err(io::Error::other("checkpoint stopped (test)"));
            }
            let start = index * CHUNK;
            let n = image.len.saturating_sub(start).min(CHUNK) as usize;
            if !run.is_empty() && run_start + run.len() as u64 != start {
                self.main.write(run_start, &run)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = start;
            }
            run.extend_from_slice(&chunk[..n]);
            if chunk_limit != usize::MAX {
                self.main.write(run_start, &run)?;
                run.clear();
            }
        }
        if !run.is_empty() {
            self.main.write(run_start, &run)?;
        }
        self.main.sync_data()?;
        image.chunks.clear();
        image.base_len = image.len;
        state.pending = Pending::at(image.len);
        Ok(())
    }

    /// A checkpoint's second half, once the store file holds all the old frames said.
    fn start_next_generation(&self, state: &mut State) -> io::Result<()> {
        if let Some(log) = state.log.as_mut() {
            if log.capacity < self.size.max {
                let grown = (log.capacity * 2).min(self.size.max);
                extend_with_zeros(&log.file, log.capacity, grown)?;
                log.capacity = grown;
            }
            start_generation(log, fingerprint(&self.main)?)?;
            // One write and one fdatasync for all of them: up to 255 frames, which one by
            // one made a checkpoint's longest part.
            let mut frames = Frames::after(log);
            for body in &state.journal {
                frames.journal(body, state.image.len)?;
            }
            if log.end + frames.len() > log.capacity {
                let grown = (log.end + frames.len()).next_power_of_two();
                extend_with_zeros(&log.file, log.capacity, grown)?;
                log.capacity = grown;
            }
            frames.write(log)?;
        }
        Ok(())
    }

    /// Test hook: a crash in the middle of a checkpoint.
    #[cfg(test)]
    pub(crate) fn checkpoint_partially(&self, chunks: usize) -> io::Result<()> {
        let mut state = self.write_state()?;
        self.checkpoint(&mut state, chunks)
    }

    /// Test hook: a crash after closing wrote the store file, before the log was removed.
    #[cfg(test)]
    pub(crate) fn write_image_then_crash(&self) -> io::Result<()> {
        let mut state = self.write_state()?;
        self.write_image(&mut state, usize::MAX)
    }

    /// Test hook: how many chunks the image holds over the store file.
    #[cfg(test)]
    pub(crate) fn image_chunks(&self) -> usize {
        self.read_state().image.chunks.len()
    }
}

fn frame_len(pending: &Pending, image: &Image) -> u64 {
    let body: u64 = pending
        .ranges
        .iter()
        .map(|(index, (from, to))| {
            RANGE_HEADER_LEN as u64
                + clip(*index, *from, *to, image.len).map_or(0, |(f, t)| (t - f) as u64)
        })
        .sum();
    (FRAME_HEADER_LEN + CHECKSUM_LEN) as u64 + body
}

/// The part of a chunk's byte range that lies below `len`.
fn clip(index: u64, from: usize, to: usize, len: u64) -> Option<(usize, usize)> {
    let in_chunk = len.saturating_sub(index * CHUNK).min(CHUNK) as usize;
    let to = to.min(in_chunk);
    (from < to).then_some((from, to))
}

/// Frames sealed one after another past a log's last frame, written with one write and
/// one fdatasync ([`Frames::write`]).
struct Frames {
    salt: u64,
    /// Checksum of the last frame sealed (or of the log's last frame).
    prev: Checksum,
    next_frame: u64,
    bytes: Vec<u8>,
}

impl Frames {
    fn after(log: &Log) -> Frames {
        Frames {
            salt: log.salt,
            prev: log.prev,
            next_frame: log.next_frame,
            bytes: Vec::new(),
        }
    }

    /// Starts a frame: magic, body length (set by [`Frames::seal`]), frame number.
    fn begin(&mut self, magic: u32) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&magic.to_le_bytes());
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.bytes.extend_from_slice(&self.next_frame.to_le_bytes());
        start
    }

    /// Sets the body length of the frame begun at `start` and appends its chained checksum.
    fn seal(&mut self, start: usize) -> io::Result<()> {
        let body_len = self.bytes.len() - start - FRAME_HEADER_LEN;
        let body_len = u32::try_from(body_len)
            .map_err(|_| invalid(format!("frame body of {body_len} bytes")))?;
        self.bytes[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
        let sum = checksum(self.salt, &[&self.prev, &self.bytes[start..]]);
        self.bytes.extend_from_slice(&sum);
        self.prev = sum;
        self.next_frame += 1;
        Ok(())
    }

    /// A page frame of `len` bytes: the `pending` ranges of `image`.
    fn page(&mut self, image: &Image, pending: &Pending, len: u64) -> io::Result<()> {
        self.bytes.reserve(len as usize);
        let start = self.begin(FRAME_MAGIC);
        self.bytes.extend_from_slice(&pending.min_len.to_le_bytes());
        self.bytes.extend_from_slice(&image.len.to_le_bytes());
        for (index, (from, to)) in &pending.ranges {
            let Some((from, to)) = clip(*index, *from, *to, image.len) else {
                continue;
            };
            let chunk = image.chunks.get(index).ok_or_else(|| {
                io::Error::other(format!("changed chunk {index} missing from the image"))
            })?;
            self.bytes
                .extend_from_slice(&(index * CHUNK + from as u64).to_le_bytes());
            self.bytes
                .extend_from_slice(&((to - from) as u32).to_le_bytes());
            self.bytes.extend_from_slice(&chunk[from..to]);
        }
        self.seal(start)
    }

    /// A journal frame with `body`; `len` is the file's length.
    fn journal(&mut self, body: &[u8], len: u64) -> io::Result<()> {
        let start = self.begin(JOURNAL_FRAME_MAGIC);
        // The file's length, twice, as a page frame that changes nothing would say.
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(body);
        self.seal(start)
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Writes the frames at the log's end and fdatasyncs; only then do they count.
    fn write(self, log: &mut Log) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        // The log moves on only once the frames are durable: after a failed fdatasync the
        // next frame goes to the same place, and the chain never runs through bytes the
        // kernel may have dropped.
        log.file.write_all_at(&self.bytes, log.end)?;
        log.file.sync_data()?;
        self.follow(log);
        Ok(())
    }

    /// Writes the frames at the log's end, without fdatasync; returns where they went
    /// (offset, length). The next frame follows them, whether or not they are synced yet,
    /// so a failed fdatasync of these must stop the log's writer (see
    /// [`UnsyncedFrame::sync`]).
    fn write_unsynced(self, log: &mut Log) -> io::Result<(u64, u64)> {
        let (at, len) = (log.end, self.len());
        log.file.write_all_at(&self.bytes, at)?;
        self.follow(log);
        Ok((at, len))
    }

    /// Moves the log past these frames: the next frame chains from the last of them.
    fn follow(self, log: &mut Log) {
        log.prev = self.prev;
        log.next_frame = self.next_frame;
        log.end += self.len();
    }
}

fn append_frame(log: &mut Log, image: &Image, pending: &Pending, len: u64) -> io::Result<()> {
    let mut frames = Frames::after(log);
    frames.page(image, pending, len)?;
    frames.write(log)
}

/// A journal frame in the log whose fdatasync is still to come.
#[must_use = "a journal frame counts only once it is synced"]
pub(crate) struct UnsyncedFrame(Arc<File>);

impl UnsyncedFrame {
    /// Makes the frame (and everything written to the log before it) durable. A failure
    /// leaves the frame's bytes in doubt while later frames would chain after them: the
    /// store takes no other append then.
    pub(crate) fn sync(self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to the device now,
/// so that the fdatasync which follows the caller's other work (a redb commit, ≈ 35 µs
/// of CPU) finds the write under way: measured here, a 1.5 KB frame's write + fdatasync
/// with 35 µs of work between them cost what they cost without it. Only a hint: the
/// fdatasync is what makes the frame durable, so a failure here is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes a descriptor and integers and touches no memory of
    // ours; the descriptor stays open for the call, as `file` is borrowed.
    #[allow(unsafe_code)]
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Real zeros, not fallocate: writing into unwritten extents would make every frame's
/// fdatasync update the extent tree too. Synced by the caller's next fdatasync.
fn extend_with_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; (to.saturating_sub(from) as usize).min(1 << 20)];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The store file's length and a checksum of its first page: what a generation's frames
/// were written over. redb rewrites that page (its commit slots) at every commit, so
/// another store file, or another state of the same one (a backup put back), differs.
type Fingerprint = (u64, Checksum);

fn fingerprint(main: &FileBackend) -> io::Result<Fingerprint> {
    let len = main.len()?;
    let mut first = vec![0u8; len.min(CHUNK) as usize];
    main.read(0, &mut first)?;
    Ok((len, checksum(len, &[&first])))
}

/// A new salt in the log header, with the fingerprint of the store file the generation
/// starts over, made durable: every frame before it stops counting.
fn start_generation(log: &mut Log, base: Fingerprint) -> io::Result<()> {
    let salt = new_salt(log.salt);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(WAL_MAGIC);
    header.extend_from_slice(&WAL_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&salt.to_le_bytes());
    header.extend_from_slice(&base.0.to_le_bytes());
    header.extend_from_slice(&base.1);
    let sum = checksum(0, &[&header]);
    header.extend_from_slice(&sum);
    log.file.write_all_at(&header, 0)?;
    log.file.sync_data()?;
    log.salt = salt;
    log.version = WAL_VERSION;
    log.prev = sum;
    log.next_frame = 0;
    log.end = FRAMES_START;
    Ok(())
}

/// Records, durably, that a checkpoint of the current generation is about to write the
/// store file: after a crash the file may then hold part of the image, and no longer
/// match the header's fingerprint.
fn mark_checkpoint(log: &mut Log) -> io::Result<()> {
    let mut mark = Vec::with_capacity(CHECKPOINT_MARK_LEN);
    mark.extend_from_slice(&CHECKPOINT_MARK_MAGIC.to_le_bytes());
    mark.extend_from_slice(&log.salt.to_le_bytes());
    let sum = checksum(log.salt, &[&mark]);
    mark.extend_from_slice(&sum);
    log.file.write_all_at(&mark, HEADER_LEN as u64)?;
    log.file.sync_data()
}

/// Whether `bytes` (a log) holds this generation's checkpoint mark.
fn checkpoint_marked(bytes: &[u8], salt: u64) -> bool {
    let Some(mark) = bytes.get(HEADER_LEN..HEADER_LEN + CHECKPOINT_MARK_LEN) else {
        return false;
    };
    let body = &mark[..CHECKPOINT_MARK_LEN - CHECKSUM_LEN];
    read_u32(body, 0) == CHECKPOINT_MARK_MAGIC
        && read_u64(body, 4) == salt
        && checksum(salt, &[body])[..] == mark[CHECKPOINT_MARK_LEN - CHECKSUM_LEN..]
}

/// Random, so that no bytes redb wrote (which include user data) can pass for a frame of
/// the current generation.
fn new_salt(previous: u64) -> u64 {
    let mut bytes = [0u8; 8];
    let random = File::open("/dev/urandom").and_then(|f| f.read_exact_at(&mut bytes, 0));
    if random.is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let hash = checksum(
            previous,
            &[&now.to_le_bytes(), &std::process::id().to_le_bytes()],
        );
        bytes.copy_from_slice(&hash[..8]);
    }
    u64::from_le_bytes(bytes).max(1) ^ u64::from(previous == u64::from_le_bytes(bytes))
}

fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A log's header.
struct Header {
    version: u32,
    salt: u64,
    /// The header's checksum, which frame 0's chains from.
    sum: Checksum,
    /// The store file the generation started over (version 3 on).
    base: Option<Fingerprint>,
}

/// The header at the start of a log; `None` when the log holds no generation: an empty
/// file, or a header torn while a new generation started (the store file already held
/// everything then: the checkpoint synced it first).
fn parse_header(bytes: &[u8]) -> io::Result<Option<Header>> {
    if bytes.len() < 12 || &bytes[..8] != WAL_MAGIC {
        return Ok(None);
    }
    let sound = |len: usize| {
        bytes.len() >= len
            && checksum(0, &[&bytes[..len - CHECKSUM_LEN]])[..] == bytes[len - CHECKSUM_LEN..len]
    };
    let version = read_u32(bytes, 8);
    let header_len = match version {
        1 | 2 => HEADER_LEN_V2,
        WAL_VERSION => HEADER_LEN,
        _ if sound(HEADER_LEN_V2) || sound(HEADER_LEN) => {
            return Err(invalid(format!(
                "write-ahead log version {version} (this build reads version {WAL_VERSION})"
            )));
        }
        _ => return Ok(None),
    };
    if !sound(header_len) {
        return Ok(None);
    }
    let mut sum = [0u8; CHECKSUM_LEN];
    sum.copy_from_slice(&bytes[header_len - CHECKSUM_LEN..header_len]);
    let base = (version >= 3).then(|| {
        let mut fingerprint = [0u8; CHECKSUM_LEN];
        fingerprint.copy_from_slice(&bytes[32..32 + CHECKSUM_LEN]);
        (read_u64(bytes, 24), fingerprint)
    });
    Ok(Some(Header {
        version,
        salt: read_u64(bytes, 16),
        sum,
        base,
    }))
}

/// `None` when the log's generation was written over the store file as it is now (or over
/// an earlier state of it that a checkpoint of the generation was turning into this one),
/// else why not. Logs without a fingerprint (versions 1 and 2) are taken as they are.
fn belongs_to(bytes: &[u8], header: &Header, main: &FileBackend) -> io::Result<Option<ForeignLog>> {
    let base = match header.base {
        None => return Ok(None),
        Some(_) if checkpoint_marked(bytes, header.salt) => return Ok(None),
        Some(base) => base,
    };
    let now = fingerprint(main)?;
    if now == base {
        return Ok(None);
    }
    // The same first page over another length: this file, cut or extended since (a crash
    // never changes the file's length under a generation; only a checkpoint does).
    let (expected, found) = (base.0, now.0);
    let page = expected.min(CHUNK);
    if expected != found && found >= page {
        let mut first = vec![0u8; page as usize];
        main.read(0, &mut first)?;
        if checksum(expected, &[&first]) == base.1 {
            return Ok(Some(if found > expected {
                ForeignLog::Grown { expected, found }
            } else {
                ForeignLog::Cut { expected, found }
            }));
        }
    }
    Ok(Some(ForeignLog::Other))
}

/// Why an open left the log next to a store file alone: replaying it over the file as it is
/// would corrupt the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForeignLog {
    /// The file the log was written over, with bytes appended since.
    #[error(
        "the store file has {} bytes more than when this log was written over it \
         ({expected} bytes, with the same first page): bytes were appended to it. Cut it \
         back to {expected} bytes to open it with its log (moving the log away would lose \
         the commits it holds)",
        found - expected
    )]
    Grown { expected: u64, found: u64 },
    /// The file the log was written over, cut short since.
    #[error(
        "the store file has {} bytes less than when this log was written over it \
         ({expected} bytes, with the same first page): it was cut, and the log's commits \
         cannot be replayed over what is left. Restore the file from a backup",
        expected - found
    )]
    Cut { expected: u64, found: u64 },
    /// Another file, or another state of this one.
    #[error(
        "it was written over another store file (or over another state of this one, such \
         as a backup put back), and replaying it would corrupt the store: move the log away \
         to open the store file as it is, or put back the store file it belongs to"
    )]
    Other,
}

impl From<ForeignLog> for io::Error {
    fn from(why: ForeignLog) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, why)
    }
}

/// Whether `e` (from opening a store over its log) is [`ForeignLog`].
pub(crate) fn is_foreign_log(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<ForeignLog>())
}

/// Replays the valid frames of a log (whose header is `header`) onto `image`. Returns the
/// generation to continue (version, salt, last checksum, next frame number, end).
fn replay(
    bytes: &[u8],
    header: &Header,
    image: &mut Image,
    main: &FileBackend,
    journal: &mut Vec<Vec<u8>>,
) -> io::Result<Recovered> {
    let (version, salt, mut prev) = (header.version, header.salt, header.sum);
    let mut pos = FRAMES_START as usize;
    let mut number = 0u64;
    while pos + FRAME_HEADER_LEN <= bytes.len() {
        let header = &bytes[pos..pos + FRAME_HEADER_LEN];
        let magic = read_u32(header, 0);
        if (magic != FRAME_MAGIC && magic != JOURNAL_FRAME_MAGIC) || read_u64(header, 8) != number {
            break;
        }
        let body_len = read_u32(header, 4) as usize;
        let end = pos + FRAME_HEADER_LEN + body_len + CHECKSUM_LEN;
        if end > bytes.len() {
            break;
        }
        let frame = &bytes[pos..end - CHECKSUM_LEN];
        let sum = checksum(salt, &[&prev, frame]);
        if sum[..] != bytes[end - CHECKSUM_LEN..end] {
            break;
        }
        if magic == JOURNAL_FRAME_MAGIC {
            journal.push(frame[FRAME_HEADER_LEN..].to_vec());
            prev = sum;
            number += 1;
            pos = end;
            continue;
        }
        let (min_len, len) = (read_u64(header, 16), read_u64(header, 24));
        image.set_len(min_len.min(image.len));
        let body = &frame[FRAME_HEADER_LEN..];
        let mut at = 0;
        while at < body.len() {
            if at + RANGE_HEADER_LEN > body.len() {
                return Err(invalid(format!(
                    "frame {number} of the write-ahead log is malformed"
                )));
            }
            let offset = read_u64(body, at);
            let n = read_u32(body, at + 8) as usize;
            let data_at = at + RANGE_HEADER_LEN;
            let data = body.get(data_at..data_at + n).ok_or_else(|| {
                invalid(format!(
                    "frame {number} of the write-ahead log is malformed"
                ))
            })?;
            image.write(main, offset, data, |_, _, _| {})?;
            at = data_at + n;
        }
        image.set_len(len);
        prev = sum;
        number += 1;
        pos = end;
    }
    Ok((version, salt, prev, number, pos as u64))
}

impl StorageBackend for WalBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.read_state().image.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.read_state().image.read(&self.main, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.write_state()?;
        state.wrote = true;
        let State { image, pending, .. } = &mut *state;
        image.set_len(len);
        pending.min_len = pending.min_len.min(len);
        pending.len_changed = true;
        let first_gone = len.div_ceil(CHUNK);
        pending.ranges.split_off(&first_gone);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.write_state()?;
        self.sync(&mut state)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.write_state()?;
        state.wrote = true;
        let State { image, pending, .. } = &mut *state;
        image.write(&self.main, offset, data, |index, from, to| {
            pending.touch(index, from, to)
        })
    }

    fn close(&self) -> Result<(), io::Error> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            return Ok(());
        }
        state.closed = true;
        // Only a writer holding redb's lock may touch the files: a failed open also closes,
        // and must leave a live writer's log alone. A writer that holds it folds in even a
        // log it only recovered (redb need not write when the replayed file is clean).
        let holds_lock =
            self.foreign.is_none() && (state.wrote || self.owned.load(Ordering::Acquire));
        let has_log = state.log.is_some();
        let mut result = Ok(());
        // Journal frames nobody committed yet must stay in the log for the next open.
        let tail_pending = !state.journal.is_empty();
        if self.writable && holds_lock && (state.wrote || has_log) && !tail_pending {
            // No next generation: the log goes. Until it has gone, its frames replay onto
            // the file as it now is, which changes nothing.
            result =
                self.write_image(&mut state, usize::MAX)
                    .and_then(|()| match std::fs::remove_file(&self.wal_path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                        _ => sync_parent_dir(&self.wal_path),
                    });
        }
        result.and(self.main.close())
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.main.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.main.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.main.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.main.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.main.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.main.query_lock_range(start, end)
    }
}

/// The backend handed to redb, sharing the [`WalBackend`] with the store (which appends
/// journal frames to the same log).
#[derive(Debug)]
pub(crate) struct SharedWal(pub(crate) Arc<WalBackend>);

impl StorageBackend for SharedWal {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: LogSize = LogSize {
        initial: 16 << 10,
        max: 48 << 10,
    };

    fn new_store_file(dir: &Path) -> PathBuf {
        let path = dir.join("s.redb");
        File::create(&path).expect("create");
        path
    }

    #[test]
    fn journal_frames_outlive_checkpoints_until_a_durable_commit_covers_them() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.write(0, &[1; 100]).expect("write");
        assert!(backend.append_journal(b"first").expect("append"));
        assert!(backend.append_journal(b"second").expect("append"));
        // A sync outside a durable commit may checkpoint and start a new generation: the
        // frames are written again into it.
        backend
            .checkpoint_partially(usize::MAX)
            .expect("checkpoint");
        drop(backend); // a crash: no close
        let reopened = WalBackend::open(&path, false, SMALL).expect("reopen");
        assert_eq!(
            reopened.journal_tail(),
            vec![b"first".to_vec(), b"second".to_vec()]
        );
        drop(reopened);

        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.mark_durable();
        backend
            .checkpoint_partially(usize::MAX)
            .expect("checkpoint");
        drop(backend);
        let reopened = WalBackend::open(&path, false, SMALL).expect("reopen");
        assert!(
            reopened.journal_tail().is_empty(),
            "covered frames are gone"
        );
    }

    #[test]
    fn a_frame_that_does_not_fit_grows_the_log_while_journal_frames_are_outstanding() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let salt_of = |backend: &WalBackend| backend.read_state().log.as_ref().map(|l| l.salt);
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.write(0, &[1; 100]).expect("write");
        backend.sync_data().expect("sync");
        let salt = salt_of(&backend);
        assert!(backend.append_journal(b"outstanding").expect("append"));
        // A frame bigger than the whole log, synced outside a durable commit (as redb does
        // when it grows the file): a new generation now would drop the journal frame
        // until it is written again.
        backend.write(4096, &[7; 64 << 10]).expect("write");
        backend.sync_data().expect("sync");
        assert_eq!(salt_of(&backend), salt, "the generation went on");
        drop(backend); // a crash: no close
        let reopened = WalBackend::open(&path, false, SMALL).expect("reopen");
        assert_eq!(reopened.journal_tail(), vec![b"outstanding".to_vec()]);
        let mut page = vec![0; 4096];
        reopened.read(4096, &mut page).expect("read");
        assert!(page.iter().all(|&b| b == 7), "the big frame is in the log");
        drop(reopened);

        // Once a durable commit covers the journal frame, the oversized log is folded into
        // the store file and cut back to its size; a frame too big for it checkpoints.
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.mark_durable();
        assert_ne!(
            salt_of(&backend),
            salt,
            "a checkpoint started a new generation"
        );
        let log_len = || std::fs::metadata(wal_path(&path)).expect("log").len();
        assert_eq!(log_len(), SMALL.max, "the log is back to its size");
        let salt = salt_of(&backend);
        backend.write(8192, &[9; 64 << 10]).expect("write");
        backend.sync_data().expect("sync");
        assert_ne!(
            salt_of(&backend),
            salt,
            "a checkpoint started a new generation"
        );
        assert_eq!(log_len(), SMALL.max);
        drop(backend);
        let reopened = WalBackend::open(&path, false, SMALL).expect("reopen");
        let mut page = vec![0; 4096];
        reopened.read(4096, &mut page).expect("read");
        assert!(page.iter().all(|&b| b == 7), "the first big write survived");
        reopened.read(8192 + 4096, &mut page).expect("read");
        assert!(
            page.iter().all(|&b| b == 9),
            "the second big write survived"
        );
    }

    #[test]
    fn closing_keeps_a_log_whose_journal_frames_nobody_applied() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        assert!(backend.append_journal(b"unapplied").expect("append"));
        drop(backend);
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.owned.store(true, Ordering::Release);
        backend.close().expect("close");
        assert!(
            wal_path(&path).exists(),
            "the log stays for the next writer"
        );
        let reopened = WalBackend::open(&path, false, SMALL).expect("reopen");
        assert_eq!(reopened.journal_tail(), vec![b"unapplied".to_vec()]);
    }

    fn contents(backend: &WalBackend) -> Vec<u8> {
        let len = backend.len().expect("len") as usize;
        let mut out = vec![0u8; len];
        backend.read(0, &mut out).expect("read");
        out
    }

    /// What a file does: the model the image must match.
    fn model_write(model: &mut Vec<u8>, offset: usize, data: &[u8]) {
        if model.len() < offset + data.len() {
            model.resize(offset + data.len(), 0);
        }
        model[offset..offset + data.len()].copy_from_slice(data);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            offset: usize,
            len: usize,
            byte: u8,
        },
        SetLen(usize),
        Sync,
        /// The process dies: nothing more reaches either file.
        Crash,
        /// The process dies during a checkpoint made right after a sync.
        CrashInCheckpoint(usize),
        Close,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..40_000, 1usize..9_000, any::<u8>())
                .prop_map(|(offset, len, byte)| Op::Write { offset, len, byte }),
            1 => (0usize..48_000).prop_map(Op::SetLen),
            4 => Just(Op::Sync),
            1 => Just(Op::Crash),
            1 => (0usize..12).prop_map(Op::CrashInCheckpoint),
            1 => Just(Op::Close),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whatever the interleaving of writes, syncs, checkpoints (forced often by a small
        /// log) and crashes, reopening shows the file as of its last sync, and a read-only
        /// open shows the same without changing a byte of either file. A sync after which
        /// the file only grew waits for the next one that writes (see `WalBackend::sync`);
        /// only a checkpoint cut short may then leave the growth in the file, as zeros.
        #[test]
        fn a_reopened_file_is_the_file_as_of_its_last_sync(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().expect("dir");
            let path = new_store_file(dir.path());
            let mut backend = WalBackend::open(&path, true, SMALL).expect("open");
            let mut current: Vec<u8> = Vec::new();
            let mut durable: Vec<u8> = Vec::new();
            // Since the last sync that made `current` durable: the chunks written (a write the
            // file was then cut short of is gone), and the shortest the file was.
            let mut touched = std::collections::BTreeSet::new();
            let mut shortest = 0usize;
            // A writer that wrote nothing leaves a recovered log for the next writer.
            let mut wrote = false;
            for op in ops {
                match op {
                    Op::Write { offset, len, byte } => {
                        let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                        backend.write(offset as u64, &data).expect("write");
                        wrote = true;
                        touched.extend(offset / CHUNK as usize..(offset + len).div_ceil(CHUNK as usize));
                        model_write(&mut current, offset, &data);
                    }
                    Op::SetLen(len) => {
                        backend.set_len(len as u64).expect("set_len");
                        wrote = true;
                        shortest = shortest.min(len);
                        touched.split_off(&len.div_ceil(CHUNK as usize));
                        current.resize(len, 0);
                    }
                    Op::Sync => {
                        backend.sync_data().expect("sync");
                        if !touched.is_empty() || shortest < durable.len() {
                            durable = current.clone();
                            touched.clear();
                            shortest = current.len();
                        }
                    }
                    Op::Crash | Op::CrashInCheckpoint(_) | Op::Close => {
                        // What a checkpoint cut short may leave besides `durable`: the grown
                        // file that waited for a frame, the growth as zeros.
                        let mut grown = None;
                        match op {
                            Op::CrashInCheckpoint(chunks) => {
                                backend.sync_data().expect("sync");
                                if !touched.is_empty() || shortest < durable.len() {
                                    durable = current.clone();
                                } else {
                                    grown = Some(current.clone());
                                }
                                prop_assert!(backend.checkpoint_partially(chunks).is_err() || backend.image_chunks() == 0);
                            }
                            Op::Close => {
                                backend.close().expect("close");
                                durable = current.clone();
                                prop_assert!(!wrote || !wal_path(&path).exists(), "a clean close removes the log");
                            }
                            _ => {}
                        }
                        drop(backend);
                        let before = (std::fs::read(&path).expect("main"), std::fs::read(wal_path(&path)).ok());
                        let reader = WalBackend::open(&path, false, SMALL).expect("read-only open");
                        if grown.as_ref() == Some(&contents(&reader)) {
                            durable = contents(&reader);
                        }
                        prop_assert_eq!(contents(&reader), durable.clone());
                        prop_assert!(reader.write(0, b"x").is_err());
                        drop(reader);
                        let after = (std::fs::read(&path).expect("main"), std::fs::read(wal_path(&path)).ok());
                        prop_assert!(before == after, "a read-only open changed a file");
                        backend = WalBackend::open(&path, true, SMALL).expect("reopen");
                        prop_assert_eq!(contents(&backend), durable.clone());
                        current = durable.clone();
                        touched.clear();
                        shortest = current.len();
                        wrote = false;
                    }
                }
                prop_assert_eq!(contents(&backend), current.clone());
            }
        }
    }

    fn frames_end(path: &Path) -> usize {
        let bytes = std::fs::read(wal_path(path)).expect("log");
        let mut image = Image::default();
        let main = FileBackend::new(File::open(path).expect("main")).expect("backend");
        let Some(header) = parse_header(&bytes).expect("header") else {
            return 0;
        };
        let (_, _, _, _, end) =
            replay(&bytes, &header, &mut image, &main, &mut Vec::new()).expect("replay");
        end as usize
    }

    #[test]
    fn a_log_left_behind_by_a_close_replays_onto_the_written_file_unchanged() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        let mut expected = Vec::new();
        for round in 0..6u8 {
            let data = vec![round + 1; 7_000];
            let offset = usize::from(round) * 3_000;
            backend.write(offset as u64, &data).expect("write");
            model_write(&mut expected, offset, &data);
            backend.sync_data().expect("sync");
        }
        backend.set_len(15_000).expect("shrink");
        expected.truncate(15_000);
        backend.sync_data().expect("sync");
        backend.write_image_then_crash().expect("write the image");
        drop(backend);
        assert!(wal_path(&path).exists());
        assert_eq!(std::fs::read(&path).expect("store file"), expected);

        let reader = WalBackend::open(&path, false, SMALL).expect("read-only open");
        assert_eq!(contents(&reader), expected);
        drop(reader);
        let writer = WalBackend::open(&path, true, SMALL).expect("reopen");
        assert_eq!(contents(&writer), expected);
        writer.write(0, &[9]).expect("write");
        expected[0] = 9;
        writer.close().expect("close");
        assert!(
            !wal_path(&path).exists(),
            "the writer folded the log and removed it"
        );
        assert_eq!(std::fs::read(&path).expect("store file"), expected);
    }

    #[test]
    fn a_file_that_only_grew_waits_for_the_next_frame() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, DEFAULT_LOG_SIZE).expect("open");
        backend.write(0, &[1u8; 100]).expect("write");
        backend.sync_data().expect("sync");
        let first_end = frames_end(&path);

        backend.set_len(50_000).expect("grow");
        backend.sync_data().expect("sync");
        assert_eq!(
            frames_end(&path),
            first_end,
            "a growth alone writes no frame"
        );
        drop(backend);
        let reopened = WalBackend::open(&path, true, DEFAULT_LOG_SIZE).expect("reopen");
        assert_eq!(
            contents(&reopened),
            vec![1u8; 100],
            "the crash left the file as of the frame"
        );

        // The next frame that writes carries the growth with it.
        reopened.set_len(50_000).expect("grow");
        reopened.write(49_000, &[2u8; 10]).expect("write");
        reopened.sync_data().expect("sync");
        drop(reopened);
        let reopened = WalBackend::open(&path, false, DEFAULT_LOG_SIZE).expect("reopen");
        let mut expected = vec![1u8; 100];
        expected.resize(50_000, 0);
        expected[49_000..49_010].fill(2);
        assert_eq!(contents(&reopened), expected);

        // A shrink is not a growth: it gets its frame at once.
        let writer = WalBackend::open(&path, true, DEFAULT_LOG_SIZE).expect("reopen");
        writer.set_len(60).expect("shrink");
        writer.sync_data().expect("sync");
        drop(writer);
        let reopened = WalBackend::open(&path, false, DEFAULT_LOG_SIZE).expect("reopen");
        assert_eq!(contents(&reopened), vec![1u8; 60]);
    }

    #[test]
    fn a_damaged_last_frame_ends_the_log_and_earlier_frames_still_count() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, DEFAULT_LOG_SIZE).expect("open");
        backend.write(0, &[1u8; 5000]).expect("write");
        backend.sync_data().expect("sync");
        let first_end = frames_end(&path);
        backend.write(100, &[2u8; 300]).expect("write");
        backend.sync_data().expect("sync");
        let second_end = frames_end(&path);
        assert!(second_end > first_end);
        drop(backend);

        // Flip one byte of the second frame's data: its checksum no longer holds.
        let log = wal_path(&path);
        let mut bytes = std::fs::read(&log).expect("log");
        bytes[second_end - CHECKSUM_LEN - 10] ^= 0xff;
        std::fs::write(&log, &bytes).expect("write log");
        let reopened = WalBackend::open(&path, false, DEFAULT_LOG_SIZE).expect("reopen");
        assert_eq!(contents(&reopened), vec![1u8; 5000]);
    }

    /// A store file of 6,000 bytes of 1s, written through its log and checkpointed into
    /// it, and its writer.
    fn checkpointed_store(dir: &Path) -> (PathBuf, WalBackend) {
        let path = new_store_file(dir);
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.write(0, &[1u8; 6000]).expect("write");
        backend.sync_data().expect("sync");
        backend
            .checkpoint_partially(usize::MAX)
            .expect("checkpoint");
        (path, backend)
    }

    /// After a crash, a store file whose length changed under its log: the error says
    /// which way, and cutting appended bytes off opens it with every commit.
    #[test]
    fn a_store_file_cut_or_extended_under_its_log_is_named_as_such() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, backend) = checkpointed_store(dir.path());
        backend.write(100, &[3u8; 10]).expect("write");
        backend.sync_data().expect("sync");
        drop(backend); // the crash
        let mut expected = vec![1u8; 6000];
        expected[100..110].fill(3);
        let original = std::fs::read(&path).expect("main");
        let len = original.len() as u64;

        let mut grown = original.clone();
        grown.extend_from_slice(&[7u8; 5000]);
        std::fs::write(&path, &grown).expect("append");
        let why = WalBackend::open(&path, true, SMALL)
            .expect("open")
            .foreign();
        assert_eq!(
            why,
            Some(ForeignLog::Grown {
                expected: len,
                found: len + 5000
            })
        );
        let err = io::Error::from(why.expect("foreign"));
        assert!(is_foreign_log(&err), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("5000 bytes more") && text.contains(&format!("back to {len} bytes")),
            "{text}"
        );

        std::fs::write(&path, &original[..original.len() - 1000]).expect("cut");
        let why = WalBackend::open(&path, false, SMALL)
            .expect("open")
            .foreign();
        assert_eq!(
            why,
            Some(ForeignLog::Cut {
                expected: len,
                found: len - 1000
            })
        );
        let text = io::Error::from(why.expect("foreign")).to_string();
        assert!(
            text.contains("1000 bytes less") && text.contains("backup"),
            "{text}"
        );

        // Following the first message: the file as it was, and the log's commit replayed.
        std::fs::write(&path, &original).expect("restore");
        let reopened = WalBackend::open(&path, false, SMALL).expect("reopen");
        assert_eq!(contents(&reopened), expected);
    }

    #[test]
    fn frames_of_an_older_generation_do_not_count() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.write(0, &[1u8; 8000]).expect("write");
        backend.sync_data().expect("sync");
        let old = std::fs::read(wal_path(&path)).expect("log");
        // Forces a checkpoint, which starts a new generation; the old frame stays in the file.
        backend.write(0, &[2u8; 30_000]).expect("write");
        backend.sync_data().expect("sync");
        backend.write(0, &[3u8; 10]).expect("write");
        backend.sync_data().expect("sync");
        drop(backend);
        let new = std::fs::read(wal_path(&path)).expect("log");
        assert_ne!(old[..HEADER_LEN], new[..HEADER_LEN], "a new salt");
        let mut expected = vec![2u8; 30_000];
        expected[..10].fill(3);
        let reopened = WalBackend::open(&path, false, SMALL).expect("reopen");
        assert_eq!(contents(&reopened), expected);
    }

    /// A backup of the store file put back next to the log of a later state: the log is
    /// neither replayed nor changed, and the backend writes nothing.
    #[test]
    fn a_log_over_another_state_of_the_store_file_is_left_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, backend) = checkpointed_store(dir.path());
        let backup = std::fs::read(&path).expect("main");
        backend.write(0, &[2u8; 6000]).expect("write");
        backend.sync_data().expect("sync");
        backend
            .checkpoint_partially(usize::MAX)
            .expect("checkpoint");
        backend.write(100, &[3u8; 10]).expect("write");
        backend.sync_data().expect("sync");
        drop(backend); // the crash

        std::fs::write(&path, &backup).expect("put the backup back");
        let log_before = std::fs::read(wal_path(&path)).expect("log");
        for writable in [false, true] {
            let reopened = WalBackend::open(&path, writable, SMALL).expect("open");
            assert_eq!(reopened.foreign(), Some(ForeignLog::Other));
            assert_eq!(contents(&reopened), vec![1u8; 6000], "the backup, as it is");
            assert!(reopened.write(0, b"x").is_err());
            assert!(reopened.sync_data().is_err());
            reopened.owned.store(true, Ordering::Release);
            reopened.close().expect("close");
        }
        assert_eq!(std::fs::read(&path).expect("main"), backup);
        assert_eq!(std::fs::read(wal_path(&path)).expect("log"), log_before);
    }

    /// A crash in the middle of a checkpoint leaves the store file part old, part new: the
    /// checkpoint's mark keeps that from passing for another file.
    #[test]
    fn a_store_file_a_checkpoint_was_writing_still_takes_its_log() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.write(0, &[1u8; 3000]).expect("write");
        backend.sync_data().expect("sync");
        backend.write(20_000, &[2u8; 3000]).expect("write");
        backend.sync_data().expect("sync");
        assert!(backend.image_chunks() > 1);
        assert!(
            backend.checkpoint_partially(1).is_err(),
            "stopped after one chunk"
        );
        drop(backend);
        assert_eq!(std::fs::read(&path).expect("main")[..3000], [1u8; 3000]);
        let reopened = WalBackend::open(&path, false, SMALL).expect("open");
        assert_eq!(reopened.foreign(), None);
        let mut expected = vec![1u8; 23_000];
        expected[3000..20_000].fill(0);
        expected[20_000..].fill(2);
        assert_eq!(contents(&reopened), expected);
    }

    #[test]
    fn a_log_of_an_unknown_version_is_refused_not_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.write(0, &[1u8; 100]).expect("write");
        backend.sync_data().expect("sync");
        drop(backend);
        let log = wal_path(&path);
        let mut bytes = std::fs::read(&log).expect("log");
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let sum = checksum(0, &[&bytes[..HEADER_LEN - CHECKSUM_LEN]]);
        bytes[HEADER_LEN - CHECKSUM_LEN..HEADER_LEN].copy_from_slice(&sum);
        std::fs::write(&log, &bytes).expect("write log");
        let err = WalBackend::open(&path, true, SMALL).expect_err("refused");
        assert!(
            err.to_string().contains("write-ahead log version 7"),
            "{err}"
        );
    }

    /// After a crash, a writer whose open succeeded folds the recovered log in at close even
    /// if redb wrote nothing; a backend whose open failed (another process holds the store)
    /// leaves the log alone.
    #[test]
    fn only_the_lock_holder_folds_a_recovered_log() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        backend.write(0, &[5u8; 6000]).expect("write");
        backend.sync_data().expect("sync");
        drop(backend); // the crash

        let failed_open = WalBackend::open(&path, true, SMALL).expect("open");
        failed_open.close().expect("close");
        assert!(
            wal_path(&path).exists(),
            "a backend without the lock removed the log"
        );
        assert_eq!(std::fs::metadata(&path).expect("main").len(), 0);

        let holder = WalBackend::open(&path, true, SMALL).expect("open");
        holder.owned.store(true, Ordering::Release);
        holder.close().expect("close");
        assert!(
            !wal_path(&path).exists(),
            "the lock holder left the log behind"
        );
        assert_eq!(std::fs::read(&path).expect("main"), vec![5u8; 6000]);
    }

    #[test]
    fn the_log_grows_at_checkpoints_up_to_its_maximum() {
        let dir = tempfile::tempdir().expect("dir");
        let path = new_store_file(dir.path());
        let backend = WalBackend::open(&path, true, SMALL).expect("open");
        for round in 0..12u8 {
            backend.write(0, &[round; 9000]).expect("write");
            backend.sync_data().expect("sync");
        }
        let size = std::fs::metadata(wal_path(&path)).expect("log").len();
        assert_eq!(size, SMALL.max);
    }
}
