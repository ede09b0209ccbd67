//! The dead-letter file: one JSON line per event given up on (refused, too old, or left at
//! shutdown), with its idempotency key, ready to send again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::shared::Pending;
use crate::error::Error;
use crate::event::Event;

/// The dead-letter file: one JSON line per event given up on, opened on first use.
pub(crate) struct DeadLetter {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLine<'a> {
    dead_at: DateTime<Utc>,
    accepted_at: DateTime<Utc>,
    code: &'a str,
    field: Option<&'a str>,
    reason: String,
    event: &'a Event,
}

impl DeadLetter {
    pub fn new(path: PathBuf) -> Self {
        DeadLetter {
            path,
            file: Mutex::new(None),
        }
    }

    pub fn write(&self, pending: &Pending, error: &Error) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&DeadLine {
            dead_at: Utc::now(),
            accepted_at: pending.accepted_at,
            code: error.code(),
            field: error.field(),
            reason: error.to_string(),
            event: &pending.event,
        })?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        match file.as_mut() {
            Some(file) => file.write_all(&line),
            None => Ok(()),
        }
    }
}
