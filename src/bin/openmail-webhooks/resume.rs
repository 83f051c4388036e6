//! `listen --resume-file`: the resume position in a file, so that a restarted `listen`
//! asks OpenMail for the events it missed while it was stopped.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openmail_webhooks::websocket::ResumeStore;

/// What a [`ResumeStore`] returns.
type ResumeFuture<T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<T, tower::BoxError>> + Send + 'static>,
>;

/// The position as one line in a file: the `event_id` of the last event handled in order.
///
/// Each save creates a new temporary file next to it, with a name no other save uses,
/// `create_new` (`O_EXCL`: it never opens an existing file, and never follows a symlink
/// planted under that name), writes and fsyncs it, renames it over the file, and fsyncs
/// the directory, so that a crash or a power loss leaves the previous position or the
/// new one, never half of one, and nothing else on the disk is written through the
/// path. The files are a few bytes, written at most once per event, so the blocking
/// writes stay on the runtime's thread.
#[derive(Clone)]
pub struct FileResume {
    path: Arc<Path>,
    /// The directory that holds it, fsynced after each rename.
    directory: Arc<Path>,
}

/// Numbers the temporary files of this process.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

impl FileResume {
    /// The position kept in `path`. Reads it once now, so that an unreadable file stops
    /// `listen` at the start with a clear message rather than on every connection.
    pub fn open(path: PathBuf) -> Result<Self, String> {
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let store = Self {
            path: path.into(),
            directory: directory.into(),
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
        let (temporary, mut file) = self.create_temporary()?;
        let written = file
            .write_all(format!("{event_id}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written?;
        // The rename is durable once the directory is. Not every system can open a
        // directory to fsync it; there, the rename alone is what can be done.
        if let Ok(directory) = File::open(&self.directory) {
            let _ = directory.sync_all();
        }
        Ok(())
    }

    /// A new file next to the resume file, created exclusively under a name of its own:
    /// `.<name>.<pid>.<n>.tmp`. A name that exists (left by a crash, or planted) is
    /// skipped, never opened.
    fn create_temporary(&self) -> std::io::Result<(PathBuf, File)> {
        let name = self
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut last = None;
        for _ in 0..100 {
            let number = TEMPORARY.fetch_add(1, Ordering::Relaxed);
            let temporary = self
                .directory
                .join(format!(".{name}.{}.{number}.tmp", std::process::id()));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(&temporary) {
                Ok(file) => return Ok((temporary, file)),
                Err(error) if error.kind() == ErrorKind::AlreadyExists => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| ErrorKind::AlreadyExists.into()))
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

    #[cfg(unix)]
    #[tokio::test]
    async fn a_save_writes_through_no_planted_name_and_leaves_no_temporary_file() {
        let directory =
            std::env::temp_dir().join(format!("openmail-resume-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir(&directory).unwrap();
        let path = directory.join("position");
        let victim = directory.join("victim");
        std::fs::write(&victim, "keep me\n").unwrap();
        // The names a save could use, planted as symlinks to another file: the fixed
        // `<path>.tmp` of before, and this process's next temporary names.
        std::os::unix::fs::symlink(&victim, directory.join("position.tmp")).unwrap();
        let next = TEMPORARY.load(Ordering::Relaxed);
        for number in next..next + 3 {
            let planted = directory.join(format!(".position.{}.{number}.tmp", std::process::id()));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        let store = FileResume::open(path.clone()).unwrap();
        store.save("evt_1").await.unwrap();
        store.save("evt_2").await.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "evt_2\n");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // Only the planted links and the position remain: no temporary file left behind.
        let mut names: Vec<String> = std::fs::read_dir(&directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| {
                !std::fs::symlink_metadata(directory.join(name))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["position", "victim"]);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn an_unreadable_file_is_refused_at_the_start() {
        let directory = std::env::temp_dir();
        let error = FileResume::open(directory).err().unwrap();
        assert!(error.contains("cannot read the resume file"), "{error}");
    }
}
