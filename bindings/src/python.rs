//! Entering Python from native threads, and Rust futures as asyncio awaitables (settled
//! on their loop's thread through a [`LoopWaker`], so that a tokio worker hands a result
//! over without taking the GIL; a future that only waits is even polled there, see
//! [`polled_on_loop`]).
//!
//! A tokio worker that holds the GIL may have to give it up in the middle of a Python
//! call (a socket write waking the event loop, a long handler); if the interpreter
//! starts finalizing meanwhile, that thread can no longer take the GIL back and the
//! process aborts. So every native-thread entry into Python goes through
//! [`with_python`], which counts itself, and an `atexit` hook ([`shutdown`]) stops new
//! entries and waits (with the GIL released) for the running ones before
//! finalization begins.

use std::cell::Cell;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use pyo3::BoundObject;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::convert;

static EXITING: AtomicBool = AtomicBool::new(false);
static INFLIGHT: Mutex<usize> = Mutex::new(0);
static IDLE: Condvar = Condvar::new();
static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static WAKER_ATTR: PyOnceLock<Py<pyo3::types::PyString>> = PyOnceLock::new();

/// How long interpreter exit waits for callbacks that are still running.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The text of callbacks refused because the interpreter is exiting.
pub(crate) const EXITING_TEXT: &str = "the Python interpreter is shutting down";

struct Entry;

impl Entry {
    fn enter() -> Option<Entry> {
        *INFLIGHT.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let entry = Entry;
        if EXITING.load(Ordering::Acquire) {
            return None; // dropping `entry` gives the count back
        }
        Some(entry)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut inflight = INFLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        *inflight = inflight.saturating_sub(1);
        if *inflight == 0 {
            IDLE.notify_all();
        }
    }
}

/// Runs `f` with the GIL from any thread; `None` once the interpreter is exiting.
pub(crate) fn with_python<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    let _entry = Entry::enter()?;
    // Only a thread Python does not know yet gets its state kept: a Python thread's
    // state belongs to Python, which deletes it when the thread ends.
    let keep = KEPT.with(|k| !k.kept.get()) && !has_thread_state();
    Some(Python::attach(|py| {
        if keep {
            KEPT.with(KeptThreadState::keep);
        }
        f(py)
    }))
}

/// Whether this thread has a Python thread state (created by Python or kept by us).
fn has_thread_state() -> bool {
    // SAFETY: `PyGILState_GetThisThreadState` only reads this thread's slot and needs
    // neither the GIL nor an attached thread; the interpreter is initialized while this
    // module is loaded.
    #[allow(unsafe_code)]
    let state = unsafe { pyo3::ffi::PyGILState_GetThisThreadState() };
    !state.is_null()
}

thread_local! {
    static KEPT: KeptThreadState = const { KeptThreadState { kept: Cell::new(false) } };
}

/// Keeps this native thread's Python thread state from one entry to the next.
///
/// Entering Python from a thread Python did not start creates a thread state, and leaving
/// destroys it again (with an mmap'd frame stack each time): about a tenth of a
/// tool-handler step's cost, paid twice per step (the handler, then the event that
/// resolves the consumer's awaitable). Holding one extra `PyGILState_Ensure` count for
/// the life of the thread keeps the state; the GIL itself is still released on leaving.
struct KeptThreadState {
    kept: Cell<bool>,
}

impl KeptThreadState {
    /// Called with the GIL held.
    fn keep(&self) {
        if self.kept.get() {
            return;
        }
        // SAFETY: this thread holds the GIL (inside `Python::attach`), so the interpreter
        // is initialized; the extra count is released exactly once, by `drop` below on
        // this same thread, and it is `PyGILState_LOCKED` because the GIL is held now.
        #[allow(unsafe_code)]
        let state = unsafe { pyo3::ffi::PyGILState_Ensure() };
        debug_assert!(matches!(
            state,
            pyo3::ffi::PyGILState_STATE::PyGILState_LOCKED
        ));
        self.kept.set(true);
    }
}

impl Drop for KeptThreadState {
    fn drop(&mut self) {
        if !self.kept.get() {
            return;
        }
        // While the interpreter exits, taking the GIL from this thread could hang or end
        // the thread; the process is going away, so the state is left to it.
        let Some(_entry) = Entry::enter() else {
            return;
        };
        // SAFETY: the thread is ending (thread-local destructor) and the interpreter is not
        // exiting (the `_shutdown` hook waits for counted entries like this one). The first
        // call takes the GIL with this thread's kept state; releasing the kept count (taken
        // while the GIL was held, hence LOCKED) leaves the GIL held, and releasing this
        // call's own count drops the thread state and the GIL.
        #[allow(unsafe_code)]
        unsafe {
            let this_call = pyo3::ffi::PyGILState_Ensure();
            pyo3::ffi::PyGILState_Release(pyo3::ffi::PyGILState_STATE::PyGILState_LOCKED);
            pyo3::ffi::PyGILState_Release(this_call);
        }
    }
}

/// Runs `f`, which may block (a synchronous Python callback), so that the tokio
/// worker it runs on hands its other tasks to another thread meanwhile.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The `atexit` hook: no new entries into Python from native threads, and wait for the
/// running ones (GIL released) so that none is inside Python when finalization starts.
#[pyfunction]
pub(crate) fn _shutdown(py: Python<'_>) {
    EXITING.store(true, Ordering::Release);
    py.detach(|| {
        let inflight = INFLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        let _ = IDLE.wait_timeout_while(inflight, EXIT_GRACE, |n| *n > 0);
    });
}

/// A Python exception value, or the value a future resolved to.
type Settled = Result<Py<PyAny>, PyErr>;

/// Cancels the Rust side when the asyncio future is cancelled.
#[pyclass(module = "flowai_harness._internal", frozen)]
pub(crate) struct AbortOnCancel {
    task: tokio::task::AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.task.abort();
        }
        Ok(())
    }
}

/// How a native future's outcome becomes a Python value, on the loop's thread.
type Settle = Box<dyn FnOnce(Python<'_>) -> Settled + Send>;

/// What a loop's [`LoopWaker`] has waiting for it.
enum Queued {
    /// An outcome for an asyncio future.
    Settle(Py<PyAny>, Settle),
    /// A [`LoopTask`] that was woken: poll it again.
    Poll(Arc<LoopTask>),
}

/// Settles asyncio futures of one event loop from native threads without taking the GIL
/// there: an outcome is queued here, and a byte written to a socket pair whose other end
/// the loop watches (`add_reader`) has the loop drain the queue on its own thread. A
/// tokio worker thus never waits for the GIL (held by the loop or a handler) just to
/// hand over an event, and the loop wakes once for however many outcomes queued.
struct LoopWaker {
    queue: Mutex<Vec<Queued>>,
    /// Something was queued since the last drain (what [`DrainLoopWaker::spin`] polls).
    queued_any: AtomicBool,
    poke: UnixStream,
    watched: UnixStream,
    /// Spinning state, touched only on the loop's thread: a spin is scheduled; spins in
    /// a row that found nothing; waits to let pass before spinning again.
    spin_scheduled: AtomicBool,
    spin_misses: AtomicU32,
    spin_skip: AtomicU32,
}

/// How long the loop polls for native results before it would sleep (see
/// [`DrainLoopWaker::spin`]).
const LOOP_SPIN: Duration = Duration::from_micros(100);

thread_local! {
    /// This (loop) thread started an async tool handler since its last wait for events.
    static REPLY_EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// Notes, on a loop's thread, that an async handler handed to it is starting: its reply
/// will have the engine answer with the next step soon, worth a spin ([`LoopWaker`]).
pub(crate) fn expect_reply_soon() {
    REPLY_EXPECTED.with(|expected| expected.set(true));
}

impl LoopWaker {
    fn push(&self, item: Queued) {
        let was_empty = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let was_empty = queue.is_empty();
            queue.push(item);
            was_empty
        };
        self.queued_any.store(true, Ordering::Release);
        if was_empty {
            // A full socket buffer means a wake-up is pending already.
            let _ = (&self.poke).write(&[1]);
        }
    }

    /// Whether a wait just made should have the loop spin before it sleeps: only when
    /// this thread started an async handler since its last wait (the worker answers that
    /// handler's reply with the next step within microseconds; a loop that only reads
    /// events would take CPU from the worker instead), not while a spin is scheduled
    /// already, nor for a while after spins found nothing (the results come slower than
    /// a spin lasts, e.g. behind an fsync).
    fn should_spin(&self) -> bool {
        if !REPLY_EXPECTED.with(|expected| expected.replace(false))
            || self.spin_scheduled.load(Ordering::Relaxed)
        {
            return false;
        }
        let skip = self.spin_skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.spin_skip.store(skip - 1, Ordering::Relaxed);
            return false;
        }
        self.spin_scheduled.store(true, Ordering::Relaxed);
        true
    }
}

/// The reader callback a loop runs when its [`LoopWaker`] is poked.
#[pyclass(module = "flowai_harness._internal", frozen)]
pub(crate) struct DrainLoopWaker {
    waker: Arc<LoopWaker>,
    /// The loop's queue of ready callbacks (`_ready` of asyncio's own loops), if it has
    /// one: spinning only makes sense when it is empty, i.e. the loop would sleep next.
    ready: Option<Py<PyAny>>,
}

#[pymethods]
impl DrainLoopWaker {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        self.drain(py)
    }

    /// Scheduled (`call_soon`) when a wait is left pending: if the loop has nothing else
    /// to run, polls for native results for up to [`LOOP_SPIN`] with the GIL released,
    /// and settles them at once. A loop that went to sleep in its selector takes tens of
    /// microseconds to be woken on a virtual machine's idle vCPU, longer than the engine
    /// takes to answer a step; spins that find nothing back off exponentially.
    fn spin(&self, py: Python<'_>) -> PyResult<()> {
        let waker = &self.waker;
        waker.spin_scheduled.store(false, Ordering::Relaxed);
        let Some(ready) = &self.ready else {
            return Ok(());
        };
        if ready.bind(py).len()? > 0 {
            return Ok(());
        }
        let arrived = waker.queued_any.load(Ordering::Acquire)
            || py.detach(|| {
                let start = Instant::now();
                loop {
                    for _ in 0..64 {
                        if waker.queued_any.load(Ordering::Acquire) {
                            return true;
                        }
                        std::hint::spin_loop();
                    }
                    if start.elapsed() >= LOOP_SPIN {
                        return false;
                    }
                }
            });
        if arrived {
            waker.spin_misses.store(0, Ordering::Relaxed);
            return self.drain(py);
        }
        let misses = waker.spin_misses.load(Ordering::Relaxed).saturating_add(1);
        waker.spin_misses.store(misses, Ordering::Relaxed);
        waker.spin_skip.store(1 << misses.min(6), Ordering::Relaxed);
        Ok(())
    }
}

impl DrainLoopWaker {
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        self.waker.queued_any.store(false, Ordering::Release);
        // Read the pokes first, then take the queue: an outcome queued in between leaves
        // a byte behind, and costs one more (empty) drain at worst.
        let mut bytes = [0u8; 64];
        while matches!((&self.waker.watched).read(&mut bytes), Ok(n) if n > 0) {}
        let queued =
            std::mem::take(&mut *self.waker.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let resolve = RESOLVE.import(py, "flowai_harness._stream", "resolve")?;
        // Every queued future is settled even if one fails to be (the first failure is
        // raised afterwards, to the loop's exception handler).
        let mut failed = None;
        for item in queued {
            let settled = match item {
                Queued::Settle(future, settle) => Some((future, settle(py))),
                Queued::Poll(task) => task.poll(py),
            };
            let Some((future, outcome)) = settled else {
                continue;
            };
            let (ok, value) = match outcome {
                Ok(value) => (true, value),
                Err(error) => (false, error.into_value(py).into_any()),
            };
            if let Err(e) = resolve.call1((future.bind(py), ok, value)) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// A native future that is polled on its loop's thread, with the GIL, rather than run
/// as a tokio task; its waker queues it on the loop's [`LoopWaker`]. For futures that
/// only wait (a stream's next event): the thread that makes the event ready pokes the
/// loop directly, where a tokio task would first have to be woken on a worker, only to
/// poke the loop in turn, and waiting would wake a worker to start that task.
struct LoopTask {
    future: Mutex<Option<Pin<Box<dyn Future<Output = Settle> + Send>>>>,
    /// The asyncio future to settle; set once the first poll found the future pending.
    target: Mutex<Option<Py<PyAny>>>,
    /// Queued on the loop's waker and not polled since (one queue entry is enough).
    queued: AtomicBool,
    waker: Arc<LoopWaker>,
}

impl LoopTask {
    /// Polls the future once (on the loop's thread); its outcome if it completed, after
    /// which the task holds no future. A task completed or cancelled before stays pending.
    fn poll_future(self: &Arc<Self>) -> Poll<Settle> {
        self.queued.store(false, Ordering::Release);
        let mut slot = self.future.lock().unwrap_or_else(|p| p.into_inner());
        let Some(future) = slot.as_mut() else {
            return Poll::Pending;
        };
        let waker = Waker::from(Arc::clone(self));
        let poll = future.as_mut().poll(&mut Context::from_waker(&waker));
        if poll.is_ready() {
            *slot = None;
        }
        poll
    }

    /// [`LoopTask::poll_future`] for a task the loop's waker queued: its asyncio future
    /// and outcome when it completed.
    fn poll(self: Arc<Self>, py: Python<'_>) -> Option<(Py<PyAny>, Settled)> {
        let Poll::Ready(settle) = self.poll_future() else {
            return None;
        };
        let target = self.forget_target()?;
        Some((target, settle(py)))
    }

    fn forget_target(&self) -> Option<Py<PyAny>> {
        self.target.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Drops the future (ending its wait: locks and guards it holds are released) and
    /// forgets the asyncio future, which is left as it is.
    fn abandon(&self) {
        let dropped = self.future.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(dropped);
        self.forget_target();
    }
}

impl Wake for LoopTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.waker.push(Queued::Poll(Arc::clone(self)));
        }
    }
}

/// Drops a [`LoopTask`]'s future when its asyncio future is cancelled.
#[pyclass(module = "flowai_harness._internal", frozen)]
struct DropOnCancel {
    task: Arc<LoopTask>,
}

#[pymethods]
impl DropOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.task.abandon();
        } else {
            self.task.forget_target();
        }
        Ok(())
    }
}

/// A wait made by [`polled_on_loop`], pending when it was made (held weakly: a wait
/// that ended is dropped).
pub(crate) struct LoopWait(std::sync::Weak<LoopTask>);

impl LoopWait {
    /// Ends the wait without settling its asyncio future: for a wait whose loop stopped
    /// running with it pending (a `KeyboardInterrupt` in `run_until_complete`), which
    /// nothing would ever poll again while it keeps what it waits on.
    pub(crate) fn abandon(&self) {
        if let Some(task) = self.0.upgrade() {
            task.abandon();
        }
    }
}

/// Turns a future's outcome into the function that makes it a Python value.
fn settle_later<T>(outcome: PyResult<T>) -> Settle
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    Box::new(move |py: Python<'_>| -> Settled {
        outcome.and_then(|value| {
            value
                .into_pyobject(py)
                .map(|v| v.into_any().unbind())
                .map_err(Into::into)
        })
    })
}

/// The running asyncio loop; `RuntimeError` without one.
pub(crate) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP
        .import(py, "asyncio", "get_running_loop")?
        .call0()
}

/// An awaitable of `fut`, polled on the thread of `event_loop`, the running loop (see
/// [`LoopTask`]): a [`Ready`](crate::stream::Ready) one if the first poll completes it,
/// else an asyncio future. `fut` must only wait (no blocking work): it is polled with
/// the GIL held. Loops without a [`LoopWaker`] get [`awaitable`]. A [`LoopWait`] comes
/// with the asyncio future of a wait this loop polls.
pub(crate) fn polled_on_loop<'py, F, T>(
    event_loop: &Bound<'py, PyAny>,
    fut: F,
) -> PyResult<(Bound<'py, PyAny>, Option<LoopWait>)>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let py = event_loop.py();
    let Some(drain) = loop_waker(event_loop)? else {
        return Ok((awaitable(py, fut)?, None));
    };
    let waker = Arc::clone(&drain.get().waker);
    let task = Arc::new(LoopTask {
        future: Mutex::new(Some(Box::pin(async move { settle_later(fut.await) }))),
        target: Mutex::new(None),
        queued: AtomicBool::new(false),
        waker,
    });
    if let Poll::Ready(settle) = task.poll_future() {
        let ready = Bound::new(py, crate::stream::Ready::new(settle(py)))?.into_any();
        return Ok((ready, None));
    }
    // Past this point a failure must end the wait too: left registered, it could take an
    // event for a future nobody awaits.
    let pending = || -> PyResult<Bound<'py, PyAny>> {
        let future = event_loop.call_method0("create_future")?;
        *task.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(future.clone().unbind());
        let cancel = DropOnCancel {
            task: Arc::clone(&task),
        };
        future.call_method1("add_done_callback", (cancel,))?;
        if drain.get().waker.should_spin() {
            let scheduled = drain
                .getattr("spin")
                .and_then(|spin| event_loop.call_method1("call_soon", (spin,)));
            if let Err(e) = scheduled {
                drain
                    .get()
                    .waker
                    .spin_scheduled
                    .store(false, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(future)
    };
    match pending() {
        Ok(future) => Ok((future, Some(LoopWait(Arc::downgrade(&task))))),
        Err(e) => {
            task.abandon();
            Err(e)
        }
    }
}

/// The waker of `event_loop`, made and registered on first use; `None` for a loop that
/// cannot watch a file descriptor or keep an attribute (then `call_soon_threadsafe`).
fn loop_waker<'py>(event_loop: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, DrainLoopWaker>>> {
    let py = event_loop.py();
    let attr = WAKER_ATTR.get_or_init(py, || {
        pyo3::types::PyString::intern(py, "_flowai_waker").unbind()
    });
    if let Ok(existing) = event_loop.getattr(attr.bind(py)) {
        return Ok(existing.cast_into::<DrainLoopWaker>().ok());
    }
    // `None` until the waker is registered, and for good if it cannot be. A loop that
    // takes no attributes (uvloop's) is asked nothing more.
    if event_loop.setattr(attr.bind(py), py.None()).is_err() {
        return Ok(None);
    }
    let Ok((poke, watched)) = UnixStream::pair() else {
        return Ok(None);
    };
    if poke.set_nonblocking(true).is_err() || watched.set_nonblocking(true).is_err() {
        return Ok(None);
    }
    let fd = watched.as_raw_fd();
    let waker = Arc::new(LoopWaker {
        queue: Mutex::new(Vec::new()),
        queued_any: AtomicBool::new(false),
        poke,
        watched,
        spin_scheduled: AtomicBool::new(false),
        spin_misses: AtomicU32::new(0),
        spin_skip: AtomicU32::new(0),
    });
    let ready = event_loop
        .getattr("_ready")
        .ok()
        .filter(|ready| ready.len().is_ok())
        .map(Bound::unbind);
    let drain = Bound::new(py, DrainLoopWaker { waker, ready })?;
    if event_loop.call_method1("add_reader", (fd, &drain)).is_err() {
        return Ok(None);
    }
    event_loop.setattr(attr.bind(py), &drain)?;
    Ok(Some(drain))
}

/// An asyncio future on the running loop that `fut` (run on the native runtime)
/// resolves; cancelling the asyncio future drops `fut`. Raises `RuntimeError` without
/// a running loop.
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = running_loop(py)?;
    let future = event_loop.call_method0("create_future")?;
    /// Where the outcome goes: the loop's waker, or (without one) the loop itself, with
    /// the function that settles the future there.
    enum Deliver {
        Waker(Arc<LoopWaker>),
        Threadsafe(Py<PyAny>, Py<PyAny>),
    }
    let deliver = match loop_waker(&event_loop)? {
        Some(drain) => Deliver::Waker(Arc::clone(&drain.get().waker)),
        None => Deliver::Threadsafe(
            event_loop.unbind(),
            RESOLVE
                .import(py, "flowai_harness._stream", "resolve")?
                .clone()
                .unbind(),
        ),
    };
    let future_ref = future.clone().unbind();
    let task = convert::tokio_runtime().spawn(async move {
        let settle = settle_later(fut.await);
        match deliver {
            Deliver::Waker(waker) => waker.push(Queued::Settle(future_ref, settle)),
            Deliver::Threadsafe(loop_ref, resolve) => {
                with_python(|py| {
                    let (ok, value) = match settle(py) {
                        Ok(value) => (true, value),
                        Err(error) => (false, error.into_value(py).into_any()),
                    };
                    let scheduled = loop_ref.bind(py).call_method1(
                        "call_soon_threadsafe",
                        (resolve.bind(py), future_ref.bind(py), ok, value),
                    );
                    // A closed loop: nobody waits for this result any more.
                    drop(scheduled);
                });
            }
        }
    });
    future.call_method1(
        "add_done_callback",
        (AbortOnCancel {
            task: task.abort_handle(),
        },),
    )?;
    Ok(future)
}
