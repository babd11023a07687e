//! The verdict feed `results/events.jsonl`: one line per early alert and per final verdict, each
//! exactly once, however often the daemon is killed. Each line has an `id` (`KEY:EARLY`,
//! `KEY:FINAL`); the controller appends (and fsyncs) a line after the journal records the event
//! and before the alert sinks get it, and at start re-appends (and re-sends) any event the journal
//! holds whose line is missing. Lines already present are never written twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The feed's file name in the results folder.
pub const FEED_FILE: &str = "events.jsonl";

/// The open feed.
pub struct Outbox {
    path: PathBuf,
    file: File,
    ids: HashSet<String>,
}

impl Outbox {
    /// Opens (creating) `dir/events.jsonl` and reads the ids it holds.
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        let path = dir.join(FEED_FILE);
        let mut ids = HashSet::new();
        let mut torn = false;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                match serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["id"].as_str().map(str::to_string)) {
                    Some(id) => {
                        ids.insert(id);
                    }
                    None => torn = !line.trim().is_empty(),
                }
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        if torn {
            // A line cut by a crash: end it so the next line starts clean.
            file.write_all(b"\n")?;
        }
        Ok(Outbox { path, file, ids })
    }

    /// Whether `id` is already in the feed.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Appends `event` unless its id is present; durable on return. Returns whether it was
    /// appended.
    pub fn append(&mut self, event: &crate::output::FeedEvent) -> std::io::Result<bool> {
        let id = event.id.clone();
        if self.ids.contains(&id) {
            return Ok(false);
        }
        let mut line = serde_json::to_string(event).expect("json");
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.ids.insert(id);
        Ok(true)
    }

    /// The feed's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
