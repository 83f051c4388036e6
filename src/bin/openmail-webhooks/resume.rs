//! `listen --resume-file`: the resume position in a file, so that a restarted `listen`
//! asks OpenMail for the events it missed while it was stopped.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openmail_webhooks::websocket::{ResumeFuture, ResumeStore};

/// The position as one line in a file: the `event_id` of the last event handled in order.
///
/// Each save writes a temporary file next to it and renames it over the file, so a crash
/// mid-write leaves the previous position, never half of one. The files are a few bytes,
/// written at most once per event, so the blocking writes stay on the runtime's thread.
#[derive(Clone)]
pub struct FileResume {
    path: Arc<Path>,
    temporary: Arc<Path>,
}

impl FileResume {
    /// The position kept in `path`. Reads it once now, so that an unreadable file stops
    /// `listen` at the start with a clear message rather than on every connection.
    pub fn open(path: PathBuf) -> Result<Self, String> {
        let mut temporary = path.clone().into_os_string();
        temporary.push(".tmp");
        let store = Self {
            path: path.into(),
            temporary: PathBuf::from(temporary).into(),
        };
        store.read().map_err(|error| {
            format!(
                "cannot read the resume file {}: {error}",
                store.path.display()
            )
        })?;
        Ok(store)
    }

    fn read(&self) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let id = text.strip_suffix('\n').unwrap_or(&text);
                Ok((!id.is_empty()).then(|| id.to_owned()))
            }
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn write(&self, event_id: &str) -> std::io::Result<()> {
        std::fs::write(&self.temporary, format!("{event_id}\n"))?;
        std::fs::rename(&self.temporary, &self.path)
    }
}

impl ResumeStore for FileResume {
    fn load(&self) -> ResumeFuture<Option<String>> {
        let result = self.read().map_err(Into::into);
        Box::pin(async move { result })
    }

    fn save(&self, event_id: &str) -> ResumeFuture<()> {
        let result = self.write(event_id).map_err(|error| {
            format!(
                "cannot write the resume file {}: {error}",
                self.path.display()
            )
            .into()
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_position_survives_a_new_store_and_a_missing_file_is_none() {
        let path = std::env::temp_dir().join(format!("openmail-resume-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = FileResume::open(path.clone()).unwrap();
        assert_eq!(store.load().await.unwrap(), None);
        store.save("evt_1").await.unwrap();
        store.save("evt_2 with\nnewline").await.unwrap();
        let again = FileResume::open(path.clone()).unwrap();
        assert_eq!(
            again.load().await.unwrap().as_deref(),
            Some("evt_2 with\nnewline")
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_unreadable_file_is_refused_at_the_start() {
        let directory = std::env::temp_dir();
        let error = FileResume::open(directory).err().unwrap();
        assert!(error.contains("cannot read the resume file"), "{error}");
    }
}
