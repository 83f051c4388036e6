//! An OpenMail receiver that runs one agent per inbox, as OpenMail users do.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_… PORT=3000 cargo run --example agents
//! ```
//!
//! Point the inbox or account webhook at `https://<your host>/webhooks/openmail`. Every
//! request is verified first; a forged, stale or oversized one is refused before this code
//! runs. Then each event goes to the agent of its `inbox_id`:
//!
//! - `message.received`: the inbox's agent (started on first sight) queues the email and
//!   works on it in its own task; the handler answers `200` at once, well inside OpenMail's
//!   15-second limit;
//! - `inbox.suspended` pauses that agent: OpenMail has blocked the inbox from sending, so
//!   replying would fail. Mail keeps queueing. `inbox.reactivated` resumes it;
//! - `pod.suspended` pauses every agent of the pod, `pod.reactivated` resumes those not
//!   paused on their own. `message.received` carries no `pod_id`, so the directory learns
//!   an inbox's pod from its `inbox.*` events; a real deployment would record it when it
//!   creates the inbox through OpenMail's API;
//! - anything else, including the dashboard's test event and malformed events, is logged
//!   and acknowledged: an error status would only make OpenMail send the same bytes again.
//!
//! Delivery is at least once, so the handler drops an `event_id` it has already seen.
//!
//! Every value printed here came from a request, so it is printed through [`shown`]:
//! escaped and cut short, so that a crafted id cannot forge or flood a log line.
//!
//! Environment: `OPENMAIL_WEBHOOK_SECRET` (required), `PORT` (default 3000) and `HOST`
//! (default `0.0.0.0`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use openmail_webhooks::event::{Lifecycle, MessageReceived};
use openmail_webhooks::{Event, VerifyOpenMailLayer};
use tokio::sync::{mpsc, watch};

/// How many recent event ids to remember for deduplication. OpenMail retries for about
/// eight minutes, so this only has to cover that window.
const REMEMBERED_EVENTS: usize = 10_000;

/// The agents, by inbox, and what is suspended.
#[derive(Clone, Default)]
struct Directory {
    inner: Arc<Mutex<Agents>>,
}

#[derive(Default)]
struct Agents {
    by_inbox: HashMap<String, Agent>,
    suspended_pods: HashSet<String>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

struct Agent {
    pod_id: Option<String>,
    inbox_suspended: bool,
    jobs: mpsc::UnboundedSender<Job>,
    running: watch::Sender<bool>,
}

/// One email for an agent to work on.
struct Job {
    from: String,
    subject: String,
    /// The first line of the body: the text is decoded here, once, because the agent
    /// reads it. A handler that doesn't read `body_text` never pays for decoding it.
    first_line: String,
    attachments_with_text: usize,
}

/// A value from a request, made safe to print: control characters escaped, at most 120
/// characters.
fn shown(text: &str) -> String {
    let mut shown: String = text
        .chars()
        .take(120)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(120).is_some() {
        shown.push('…');
    }
    shown
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, Agents> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Agents {
    /// Returns `false` if the id was seen recently.
    fn first_time(&mut self, event_id: &str) -> bool {
        if self.seen.contains(event_id) {
            return false;
        }
        if self.seen_order.len() == REMEMBERED_EVENTS {
            if let Some(oldest) = self.seen_order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(event_id.to_owned());
        self.seen_order.push_back(event_id.to_owned());
        true
    }

    /// The inbox's agent, started if this is the first time the inbox is seen.
    fn agent(&mut self, inbox_id: &str) -> &mut Agent {
        self.by_inbox
            .entry(inbox_id.to_owned())
            .or_insert_with(|| Agent::start(inbox_id.to_owned()))
    }

    /// Tells every agent whether it may run, after a suspension changed.
    fn update_running(&self) {
        for agent in self.by_inbox.values() {
            let pod_suspended = agent
                .pod_id
                .as_ref()
                .is_some_and(|pod| self.suspended_pods.contains(pod));
            agent
                .running
                .send_replace(!agent.inbox_suspended && !pod_suspended);
        }
    }

    fn inbox(&mut self, lifecycle: &Lifecycle, suspended: bool) {
        let Some(inbox_id) = lifecycle.inbox_id() else {
            eprintln!(
                "inbox event {} without inbox_id",
                shown(lifecycle.event_id())
            );
            return;
        };
        let agent = self.agent(inbox_id);
        agent.inbox_suspended = suspended;
        if let Some(pod_id) = lifecycle.pod_id() {
            agent.pod_id = Some(pod_id.to_owned());
        }
        let reason = lifecycle.reason();
        let reason = reason.as_ref().map_or("-", |reason| reason.as_str());
        println!(
            "inbox {} {} (reason {})",
            shown(inbox_id),
            if suspended {
                "suspended"
            } else {
                "reactivated"
            },
            shown(reason),
        );
        self.update_running();
    }

    fn pod(&mut self, lifecycle: &Lifecycle, suspended: bool) {
        let Some(pod_id) = lifecycle.pod_id() else {
            eprintln!("pod event {} without pod_id", shown(lifecycle.event_id()));
            return;
        };
        if suspended {
            self.suspended_pods.insert(pod_id.to_owned());
        } else {
            self.suspended_pods.remove(pod_id);
        }
        let members = self
            .by_inbox
            .values()
            .filter(|agent| agent.pod_id.as_deref() == Some(pod_id))
            .count();
        println!(
            "pod {} {} ({members} known agents)",
            shown(pod_id),
            if suspended {
                "suspended"
            } else {
                "reactivated"
            }
        );
        self.update_running();
    }

    fn message(&mut self, received: &MessageReceived) {
        let Some(inbox_id) = received.inbox_id() else {
            eprintln!("message {} without inbox_id", shown(received.event_id()));
            return;
        };
        let message = &received.message;
        let job = Job {
            from: message
                .sender()
                .map_or_else(|| "unknown sender".to_owned(), |from| from.to_string()),
            subject: message.subject().unwrap_or_default().to_owned(),
            first_line: message
                .body_text()
                .and_then(|text| text.lines().next().map(str::to_owned))
                .unwrap_or_default(),
            attachments_with_text: message
                .attachments()
                .filter(|attachment| attachment.text_extracted())
                .count(),
        };
        // The agent's task only ends when its sender is dropped, so this cannot fail while
        // the agent is in the directory.
        let _ = self.agent(inbox_id).jobs.send(job);
    }
}

impl Agent {
    fn start(inbox_id: String) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let (running, state) = watch::channel(true);
        tokio::spawn(work(inbox_id, queue, state));
        Self {
            pod_id: None,
            inbox_suspended: false,
            jobs,
            running,
        }
    }
}

/// An agent: works through its inbox's mail, waiting whenever it is paused.
async fn work(
    inbox_id: String,
    mut queue: mpsc::UnboundedReceiver<Job>,
    mut running: watch::Receiver<bool>,
) {
    while let Some(job) = queue.recv().await {
        if running.wait_for(|running| *running).await.is_err() {
            return;
        }
        println!(
            "[{}] answering {} about \"{}\": \"{}\" ({} attachments with text)",
            shown(&inbox_id),
            shown(&job.from),
            shown(&job.subject),
            shown(&job.first_line),
            job.attachments_with_text
        );
    }
}

async fn receive(
    State(directory): State<Directory>,
    Extension(event): Extension<Arc<Event>>,
) -> StatusCode {
    let mut agents = directory.lock();
    if let Some(event_id) = event.event_id() {
        if !agents.first_time(event_id) {
            return StatusCode::OK;
        }
    }
    match &*event {
        Event::MessageReceived(received) => agents.message(received),
        Event::InboxSuspended(lifecycle) => agents.inbox(lifecycle, true),
        Event::InboxReactivated(lifecycle) => agents.inbox(lifecycle, false),
        Event::PodSuspended(lifecycle) => agents.pod(lifecycle, true),
        Event::PodReactivated(lifecycle) => agents.pod(lifecycle, false),
        Event::Malformed(malformed) => eprintln!(
            "{} {} did not fit: {}",
            shown(malformed.event_type()),
            shown(malformed.event_id().unwrap_or("-")),
            shown(malformed.error())
        ),
        other => println!("ignoring {} event", shown(other.event_type())),
    }
    StatusCode::OK
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("OPENMAIL_WEBHOOK_SECRET")
        .map_err(|_| "set OPENMAIL_WEBHOOK_SECRET to the webhook's signing secret")?;
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port} is not a port"))?,
        Err(_) => 3000,
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "0.0.0.0".to_owned());

    let verify = VerifyOpenMailLayer::new(secret)?
        .on_rejection(|rejection| eprintln!("rejected a delivery: {rejection}"));
    let app = Router::new()
        .route("/webhooks/openmail", post(receive))
        .layer(verify)
        .with_state(Directory::default());

    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
