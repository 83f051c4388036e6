//! The client's life: connect, subscribe, read, dispatch, reconnect; and stopping.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, Uri};
use tokio::sync::{Semaphore, watch};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tower::{BoxError, Service};

use super::client::Config;
use super::dispatch::{self, Handling, Outcome};
use super::message::{Control, Incoming, classify};
use super::status::{ClientStatus, GapReason, SkipReason};
use super::tracker::{Arrival, Finish, Key, Tracker};
use super::transport::{self, Transport};
use super::{MAX_BUFFERED_BYTES, MAX_TRACKED_EVENTS, REPLAY_LIMIT, WebSocketError};
use crate::Event;
use crate::body::VerifiedBody;

/// A replay counts as over once no event has arrived for this long after `subscribed`.
const REPLAY_QUIET: Duration = Duration::from_secs(1);

/// How long a frame may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many subscriptions in a row may carry the resume position and get an `error`
/// before the client drops the position. The server cannot tell "I don't know this
/// event" from a passing failure of its own, and dropping the position loses up to 100
/// events, so a few tries, across reconnections with backoff, come first.
pub(crate) const POSITION_TRIES: u32 = 5;

type Socket = WebSocketStream<Transport>;

/// `duration` from now; far in the future when that overflows the clock.
fn after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 60 * 60)))
        .unwrap_or(now)
}

/// How one connection ended.
enum Ended {
    Shutdown,
    Fatal(WebSocketError),
    /// `good`: its subscription was confirmed, so the backoff starts over.
    Lost {
        error: WebSocketError,
        good: bool,
    },
}

/// An event being handled.
struct Running {
    key: Key,
    event: Arc<Event>,
}

/// One connection's state.
struct Session {
    /// Waiting for `subscribed`: until when, and the position the `subscribe` resumed from.
    awaiting: Option<(Instant, Option<String>)>,
    good: bool,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    /// Counting the events of a replay: how many so far, and when it counts as over
    /// (none before `subscribed`).
    replay: Option<(usize, Option<Instant>)>,
}

impl Session {
    fn next_wake(&self) -> Instant {
        [
            self.awaiting.as_ref().map(|(deadline, _)| *deadline),
            self.pong_deadline,
            self.replay.as_ref().and_then(|(_, quiet)| *quiet),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_ping, Instant::min)
    }
}

struct Runner<S> {
    config: Arc<Config>,
    service: S,
    handling: Arc<Handling>,
    tracker: Tracker,
    tasks: JoinSet<Outcome>,
    running: HashMap<Id, Running>,
    /// Bytes of the events being handled.
    buffered: usize,
    positions: watch::Sender<Option<Arc<str>>>,
    stop: watch::Sender<bool>,
    loaded: bool,
    /// Subscriptions in a row that carried the position and got an `error`.
    position_refusals: u32,
}

pub(crate) async fn serve<S, B, F>(
    config: Arc<Config>,
    service: S,
    shutdown: F,
) -> Result<(), WebSocketError>
where
    S: Service<Request<VerifiedBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: 'static,
    F: Future<Output = ()>,
{
    let path: Uri = config
        .dispatch_path
        .parse()
        .ok()
        .filter(|uri: &Uri| {
            uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/')
        })
        .ok_or(WebSocketError::InvalidDispatchPath)?;
    let (stop, stopping) = watch::channel(false);
    let (positions, saved) = watch::channel(None);
    let saver = tokio::spawn(save_positions(Arc::clone(&config), saved));
    let handling = Arc::new(Handling {
        path,
        retries: config.retries,
        in_flight_retries: config.in_flight_retries,
        backoff: config.retry,
        permits: Arc::new(Semaphore::new(config.concurrency)),
        stopping,
    });
    let mut runner = Runner {
        config: Arc::clone(&config),
        service,
        handling,
        tracker: Tracker::default(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
        buffered: 0,
        positions,
        stop,
        loaded: false,
        position_refusals: 0,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let result = runner.run(shutdown.as_mut()).await;
    runner.stop().await;
    // The saver ends once it has saved the last position.
    let _ = timeout(config.shutdown_grace, saver).await;
    result
}

/// Saves each new position, one save at a time; a burst of advances saves the latest.
async fn save_positions(config: Arc<Config>, mut positions: watch::Receiver<Option<Arc<str>>>) {
    while positions.changed().await.is_ok() {
        let Some(position) = positions.borrow_and_update().clone() else {
            continue;
        };
        if let Err(error) = config.resume.save(&position).await {
            config.report(ClientStatus::ResumeSaveFailed {
                error: WebSocketError::ResumeStore {
                    source: Arc::from(error),
                },
            });
        }
    }
}

impl<S, B> Runner<S>
where
    S: Service<Request<VerifiedBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: 'static,
{
    fn report(&self, status: ClientStatus) {
        self.config.report(status);
    }

    async fn run<F>(&mut self, mut shutdown: Pin<&mut F>) -> Result<(), WebSocketError>
    where
        F: Future<Output = ()>,
    {
        // Consecutive connections that failed: the backoff's step.
        let mut failures: u32 = 0;
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            self.report(ClientStatus::Connecting { attempt });
            let (error, good) = match self.connection(shutdown.as_mut()).await {
                Ended::Shutdown => return Ok(()),
                Ended::Fatal(error) => return Err(error),
                Ended::Lost { error, good } => (error, good),
            };
            if good {
                failures = 0;
                attempt = 0;
            }
            let backoff = self.config.reconnect;
            let delay = match &error {
                // Another process may go away: retry slowly.
                WebSocketError::TooManyConnections => backoff.jittered(u32::MAX),
                // Send less: never the shortest delay.
                WebSocketError::RateLimited => backoff.jittered(failures.max(2)),
                _ => backoff.jittered(failures),
            };
            failures = failures.saturating_add(1);
            self.report(ClientStatus::Reconnecting {
                delay,
                reason: error,
            });
            let pause = sleep(delay);
            if self.drive(pause, shutdown.as_mut()).await.is_none() {
                return Ok(());
            }
        }
    }

    /// Runs `future` while the events being handled finish; `None` if `shutdown` came
    /// first.
    async fn drive<T, F>(
        &mut self,
        future: impl Future<Output = T>,
        mut shutdown: Pin<&mut F>,
    ) -> Option<T>
    where
        F: Future<Output = ()>,
    {
        let mut future = std::pin::pin!(future);
        loop {
            tokio::select! {
                biased;
                () = shutdown.as_mut() => return None,
                Some(joined) = self.tasks.join_next_with_id() => self.finished(joined),
                output = future.as_mut() => return Some(output),
            }
        }
    }

    /// One connection, from connecting to its end.
    async fn connection<F>(&mut self, mut shutdown: Pin<&mut F>) -> Ended
    where
        F: Future<Output = ()>,
    {
        if !self.loaded {
            let store = Arc::clone(&self.config.resume);
            let Some(loaded) = self.drive(store.load(), shutdown.as_mut()).await else {
                return Ended::Shutdown;
            };
            match loaded {
                Ok(position) => {
                    if position.is_none() {
                        self.report(ClientStatus::PossibleGap {
                            reason: GapReason::NoResumePosition,
                        });
                    }
                    self.tracker = Tracker::new(position);
                    self.loaded = true;
                }
                Err(error) => {
                    return Ended::Lost {
                        error: WebSocketError::ResumeStore {
                            source: Arc::from(error),
                        },
                        good: false,
                    };
                }
            }
        }

        let config = Arc::clone(&self.config);
        let connecting = timeout(config.connect_timeout, transport::connect(config.dial()));
        let mut socket = match self.drive(connecting, shutdown.as_mut()).await {
            None => return Ended::Shutdown,
            Some(Err(_elapsed)) => {
                return Ended::Lost {
                    error: WebSocketError::ConnectTimeout {
                        timeout: config.connect_timeout,
                    },
                    good: false,
                };
            }
            Some(Ok(Err(error))) if error.is_fatal() => return Ended::Fatal(error),
            Some(Ok(Err(error))) => return Ended::Lost { error, good: false },
            Some(Ok(Ok(socket))) => socket,
        };

        let beyond = self.tracker.reconnect();
        if beyond > 0 {
            self.report(ClientStatus::PossibleGap {
                reason: GapReason::BeyondReplay { unhandled: beyond },
            });
        }
        let mut session = Session {
            awaiting: None,
            good: false,
            next_ping: after(config.ping_interval),
            pong_deadline: None,
            replay: None,
        };
        let resume_from = self.tracker.position().map(str::to_owned);
        if let Err(error) = self.subscribe(&mut socket, &mut session, resume_from).await {
            return Ended::Lost { error, good: false };
        }

        loop {
            let wake = session.next_wake();
            let room =
                self.buffered < MAX_BUFFERED_BYTES && self.tracker.len() < MAX_TRACKED_EVENTS;
            tokio::select! {
                biased;
                () = shutdown.as_mut() => {
                    let close = socket.close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "client shutting down".into(),
                    }));
                    let _ = timeout(Duration::from_secs(1), close).await;
                    return Ended::Shutdown;
                }
                Some(joined) = self.tasks.join_next_with_id() => self.finished(joined),
                message = socket.next(), if room => {
                    let message = match message {
                        None => return Ended::Lost { error: WebSocketError::Ended, good: session.good },
                        Some(Err(error)) => {
                            return Ended::Lost {
                                error: WebSocketError::transport(error),
                                good: session.good,
                            }
                        }
                        Some(Ok(message)) => message,
                    };
                    if let Some(ended) = self.message(&mut socket, &mut session, message).await {
                        return ended;
                    }
                }
                () = sleep_until(wake) => {
                    if let Some(ended) = self.timers(&mut socket, &mut session).await {
                        return ended;
                    }
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        socket: &mut Socket,
        session: &mut Session,
        resume_from: Option<String>,
    ) -> Result<(), WebSocketError> {
        let message = self.config.subscription.message(resume_from.as_deref());
        send(socket, message).await?;
        session.replay = resume_from.as_ref().map(|_| (0, None));
        session.awaiting = Some((after(self.config.subscribe_timeout), resume_from));
        Ok(())
    }

    async fn timers(&mut self, socket: &mut Socket, session: &mut Session) -> Option<Ended> {
        let now = Instant::now();
        let good = session.good;
        if session
            .awaiting
            .as_ref()
            .is_some_and(|(deadline, _)| now >= *deadline)
        {
            let timeout = self.config.subscribe_timeout;
            return Some(Ended::Lost {
                error: WebSocketError::SubscribeTimeout { timeout },
                good,
            });
        }
        if session
            .pong_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            let timeout = self.config.pong_timeout;
            return Some(Ended::Lost {
                error: WebSocketError::PongTimeout { timeout },
                good,
            });
        }
        if now >= session.next_ping {
            session.next_ping = after(self.config.ping_interval);
            if session.pong_deadline.is_none() {
                session.pong_deadline = Some(after(self.config.pong_timeout));
            }
            if let Err(error) = send(socket, r#"{"type":"ping"}"#.to_owned()).await {
                return Some(Ended::Lost { error, good });
            }
        }
        if session
            .replay
            .as_ref()
            .and_then(|(_, quiet)| *quiet)
            .is_some_and(|quiet| now >= quiet)
        {
            session.replay = None;
        }
        None
    }

    async fn message(
        &mut self,
        socket: &mut Socket,
        session: &mut Session,
        message: Message,
    ) -> Option<Ended> {
        let text = match message {
            // A copy of its own: tungstenite hands the text on as a slice of the
            // connection's 128 KiB read buffer, which a handler that holds the event would
            // otherwise hold whole.
            Message::Text(text) => crate::verify::own(text.as_bytes()),
            Message::Binary(bytes) => {
                self.report(ClientStatus::SkippedMessage {
                    reason: SkipReason::Binary { len: bytes.len() },
                });
                return None;
            }
            Message::Close(frame) => {
                // Let tungstenite's answering close frame out before the socket goes.
                let _ = timeout(Duration::from_secs(1), socket.flush()).await;
                return Some(closed(frame, session.good));
            }
            // tungstenite answers protocol pings itself, as the socket is read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
        };
        match classify(text) {
            Incoming::Event(event) => self.event(event, session),
            Incoming::Skip(reason) => self.report(ClientStatus::SkippedMessage { reason }),
            Incoming::Control(Control::Pong) => session.pong_deadline = None,
            Incoming::Control(Control::Unsubscribed { inbox_ids }) => {
                self.report(ClientStatus::Unsubscribed { inbox_ids });
            }
            Incoming::Control(Control::Subscribed {
                inbox_ids,
                event_types,
            }) => {
                let resumed = session.awaiting.take().map(|(_, from)| from);
                self.report(ClientStatus::Subscribed {
                    inbox_ids,
                    event_types,
                });
                if let Some(resumed) = resumed {
                    session.good = true;
                    self.tracker.replayed();
                    if let Some(from) = resumed {
                        self.position_refusals = 0;
                        self.report(ClientStatus::Resumed { from });
                    }
                    if let Some((_, quiet)) = &mut session.replay {
                        *quiet = Some(after(REPLAY_QUIET));
                    }
                }
            }
            Incoming::Control(Control::Error { message }) => {
                self.report(ClientStatus::ServerError {
                    message: message.clone(),
                });
                // An error outside a subscription's answer is only reported.
                let (_, resume_from) = session.awaiting.take()?;
                let Some(last_event_id) = resume_from else {
                    return Some(Ended::Fatal(WebSocketError::SubscribeRefused { message }));
                };
                // The position may be unknown to the server, or the server failing for a
                // moment: keep the position for a few connections, then subscribe
                // without it (a refusal for another reason shows in the next answer).
                self.position_refusals = self.position_refusals.saturating_add(1);
                if self.position_refusals < POSITION_TRIES {
                    let close = socket.close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "retrying the resume position".into(),
                    }));
                    let _ = timeout(Duration::from_secs(1), close).await;
                    return Some(Ended::Lost {
                        error: WebSocketError::PositionRefused {
                            last_event_id,
                            message,
                            tries: self.position_refusals,
                        },
                        good: false,
                    });
                }
                self.position_refusals = 0;
                self.report(ClientStatus::PossibleGap {
                    reason: GapReason::PositionUnknown { last_event_id },
                });
                self.tracker.forget_position();
                if let Err(error) = self.subscribe(socket, session, None).await {
                    return Some(Ended::Lost {
                        error,
                        good: session.good,
                    });
                }
            }
        }
        None
    }

    fn event(&mut self, event: Event, session: &mut Session) {
        if let Some((count, quiet)) = &mut session.replay {
            *count = count.saturating_add(1);
            if *count >= REPLAY_LIMIT {
                let replayed = *count;
                session.replay = None;
                self.report(ClientStatus::PossibleGap {
                    reason: GapReason::ReplayLimitReached { replayed },
                });
            } else if let Some(quiet) = quiet {
                *quiet = after(REPLAY_QUIET);
            }
        }
        let event = Arc::new(event);
        match self.tracker.arrive(event.event_id()) {
            Arrival::Dispatch(key) => {
                let task = dispatch::handle(
                    self.service.clone(),
                    Arc::clone(&event),
                    Arc::clone(&self.handling),
                );
                let handle = self.tasks.spawn(task);
                self.buffered = self.buffered.saturating_add(event.raw().len());
                self.running.insert(handle.id(), Running { key, event });
            }
            Arrival::Running => {}
            Arrival::GaveUp => self.advance(),
            Arrival::AlreadyHandled => {
                if let Some(event_id) = event.event_id() {
                    self.report(ClientStatus::AlreadyHandled {
                        event_id: event_id.to_owned(),
                    });
                }
                self.advance();
            }
        }
    }

    fn finished(&mut self, joined: Result<(Id, Outcome), JoinError>) {
        let (id, outcome) = match joined {
            Ok(joined) => joined,
            // Panics are caught in the task; this is an abort at shutdown.
            Err(error) => (error.id(), Outcome::Stopped),
        };
        let Some(Running { key, event }) = self.running.remove(&id) else {
            return;
        };
        self.buffered = self.buffered.saturating_sub(event.raw().len());
        let finish = match outcome {
            Outcome::Handled { status, attempts } => {
                self.report(ClientStatus::EventHandled {
                    event_id: event.event_id().map(str::to_owned),
                    event_type: event.event_type().to_owned(),
                    status,
                    attempts,
                });
                Finish::Handled
            }
            Outcome::Failed { attempts, failure } => {
                self.report(ClientStatus::HandlerFailed {
                    event,
                    attempts,
                    failure,
                });
                Finish::GaveUp
            }
            Outcome::Stopped => Finish::Interrupted,
        };
        self.tracker.finish(&key, finish);
        self.advance();
    }

    fn advance(&mut self) {
        if let Some(position) = self.tracker.advance() {
            self.positions.send_replace(Some(position));
        }
    }

    /// Stops: no new attempt starts; the events being handled get the grace to finish.
    async fn stop(mut self) {
        self.stop.send_replace(true);
        let grace = sleep(self.config.shutdown_grace);
        let mut grace = std::pin::pin!(grace);
        loop {
            tokio::select! {
                biased;
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(joined) => self.finished(joined),
                    None => break,
                },
                () = grace.as_mut() => {
                    self.tasks.abort_all();
                    while let Some(joined) = self.tasks.join_next_with_id().await {
                        self.finished(joined);
                    }
                    break;
                }
            }
        }
    }
}

/// Sends a text frame, within [`WRITE_TIMEOUT`].
async fn send(socket: &mut Socket, text: String) -> Result<(), WebSocketError> {
    match timeout(WRITE_TIMEOUT, socket.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(WebSocketError::transport(error)),
        Err(elapsed) => Err(WebSocketError::transport(elapsed)),
    }
}

/// What a close frame means (OPENMAIL-WEBSOCKETS.md, "Connection management").
fn closed(frame: Option<CloseFrame>, good: bool) -> Ended {
    let (code, reason) = frame.map_or((1005, String::new()), |frame| {
        (u16::from(frame.code), frame.reason.to_string())
    });
    let error = match code {
        4001 => return Ended::Fatal(WebSocketError::Unauthorized),
        4008 => WebSocketError::TooManyConnections,
        4029 => WebSocketError::RateLimited,
        _ => WebSocketError::Closed { code, reason },
    };
    Ended::Lost { error, good }
}
