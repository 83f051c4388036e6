use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tower::BoxError;

/// Where the resume position lives: the `event_id` of the last event handled in order,
/// which the next connection sends as `last_event_id` so that OpenMail replays what came
/// after it.
///
/// The client [`load`](Self::load)s it once, before its first connection, and
/// [`save`](Self::save)s it each time it advances (saves are made one at a time, newest
/// last; a burst of advances saves only the latest). Keep it where a restarted process
/// finds it: in memory ([`MemoryResumeStore`], the default), a restart forgets it, and the
/// events that occur while the process is down are not replayed.
///
/// Give each process (each replica, each subscription) its own position: two processes
/// sharing one would each resume from wherever the other got to.
///
/// Its futures are boxed, `Send` and `'static`, like the deduplication stores' futures.
pub trait ResumeStore: Send + Sync + 'static {
    /// The stored position, if any.
    fn load(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<String>, BoxError>> + Send + 'static>>;

    /// Stores `event_id` as the position.
    fn save(
        &self,
        event_id: &str,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;
}

impl<T: ResumeStore + ?Sized> ResumeStore for Arc<T> {
    fn load(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<String>, BoxError>> + Send + 'static>> {
        (**self).load()
    }

    fn save(
        &self,
        event_id: &str,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>> {
        (**self).save(event_id)
    }
}

/// The position in memory: the default. It survives reconnections, not a restart.
/// Clones share the position, so a test or the application can read it.
#[derive(Clone, Default)]
pub struct MemoryResumeStore {
    position: Arc<Mutex<Option<String>>>,
}

impl MemoryResumeStore {
    /// No position yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from `event_id`, as if it had been saved.
    pub fn starting_at(event_id: impl Into<String>) -> Self {
        Self {
            position: Arc::new(Mutex::new(Some(event_id.into()))),
        }
    }

    /// The position saved last.
    pub fn position(&self) -> Option<String> {
        self.position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResumeStore for MemoryResumeStore {
    fn load(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<String>, BoxError>> + Send + 'static>> {
        let position = self.position();
        Box::pin(async move { Ok(position) })
    }

    fn save(
        &self,
        event_id: &str,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>> {
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = Some(event_id.to_owned());
        Box::pin(async { Ok(()) })
    }
}

impl fmt::Debug for MemoryResumeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryResumeStore")
            .field(
                "position",
                &self.position().as_deref().map(crate::LogSafe::new),
            )
            .finish()
    }
}

#[cfg(feature = "redis")]
pub use redis_store::RedisResumeStore;

#[cfg(feature = "redis")]
mod redis_store {
    use std::fmt;
    use std::sync::Arc;
    use std::time::Duration;

    use redis::Client;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use tower::BoxError;

    use std::future::Future;
    use std::pin::Pin;

    use super::ResumeStore;

    /// The position in Redis, under one key (`openmail:ws:last_event_id` unless
    /// [`key`](Self::key) changes it): it survives a restart, and a replacement process
    /// on another machine resumes where the old one stopped. Give each replica or
    /// subscription its own key.
    ///
    /// `load` is a `GET`, `save` a `SET` without expiry. Connecting takes the same
    /// settings as the Redis deduplication store: 1 s to connect, 1 s per command, two
    /// reconnection retries. Cloning shares the connection.
    ///
    /// ```no_run
    /// use openmail_webhooks::websocket::{RedisResumeStore, WebSocketClient};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let resume = RedisResumeStore::connect("redis://127.0.0.1:6379/")
    ///     .await?
    ///     .key("myapp:openmail:ws:replica-1");
    /// let client = WebSocketClient::new("om_live_...")?.resume_store(resume);
    /// # Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct RedisResumeStore {
        connection: ConnectionManager,
        key: Arc<str>,
    }

    impl RedisResumeStore {
        /// Connects to the Redis at `url` (`redis://[:password@]host:port/db`), and fails
        /// if it cannot be reached now.
        pub async fn connect(url: &str) -> Result<Self, BoxError> {
            let client = Client::open(url)?;
            let connection =
                ConnectionManager::new_with_config(client, Self::connection_config()).await?;
            Ok(Self::from_manager(connection))
        }

        /// A store over a connection you configured yourself.
        pub fn from_manager(connection: ConnectionManager) -> Self {
            Self {
                connection,
                key: Arc::from("openmail:ws:last_event_id"),
            }
        }

        /// The key the position is kept under.
        pub fn key(self, key: impl Into<Arc<str>>) -> Self {
            Self {
                key: key.into(),
                ..self
            }
        }

        fn connection_config() -> ConnectionManagerConfig {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500))
        }
    }

    impl ResumeStore for RedisResumeStore {
        fn load(
            &self,
        ) -> Pin<Box<dyn Future<Output = Result<Option<String>, BoxError>> + Send + 'static>>
        {
            let mut connection = self.connection.clone();
            let key = Arc::clone(&self.key);
            Box::pin(async move {
                let position: Option<String> = redis::cmd("GET")
                    .arg(&*key)
                    .query_async(&mut connection)
                    .await?;
                Ok(position)
            })
        }

        fn save(
            &self,
            event_id: &str,
        ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>> {
            let mut connection = self.connection.clone();
            let key = Arc::clone(&self.key);
            let event_id = event_id.to_owned();
            Box::pin(async move {
                let () = redis::cmd("SET")
                    .arg(&*key)
                    .arg(event_id)
                    .query_async(&mut connection)
                    .await?;
                Ok(())
            })
        }
    }

    impl fmt::Debug for RedisResumeStore {
        // The connection's own Debug shows its address, which may carry a password.
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedisResumeStore")
                .field("key", &self.key)
                .finish_non_exhaustive()
        }
    }
}
