//! Metrics: `metrics.jsonl` (one JSON object per log step, with `step`), TensorBoard event files
//! (so `tensorboard --logdir RUN` shows the curves), and a log line per step on stderr.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Result, TrainError};

pub struct MetricsLog {
    path: PathBuf,
    jsonl: File,
    events: EventWriter,
    /// Name of the step field: `step` (SFT, RM) or `iteration` (PPO).
    step_key: &'static str,
}

impl MetricsLog {
    /// Opens `RUN/metrics.jsonl` for appending. On resume from `resume_step`, entries after it
    /// (written by the interrupted run after its last checkpoint) are dropped first.
    pub fn open(run: &Path, step_key: &'static str, resume_step: Option<usize>) -> Result<Self> {
        let path = run.join("metrics.jsonl");
        truncate_jsonl(&path, step_key, resume_step)?;
        let jsonl = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { path, jsonl, events: EventWriter::create(run)?, step_key })
    }

    /// Appends one line `{"<step_key>": step, name: value, …}` and the same scalars to TensorBoard.
    pub fn log(&mut self, step: usize, values: &[(String, f64)]) -> Result<()> {
        let mut obj = Map::new();
        obj.insert(self.step_key.into(), step.into());
        for (k, v) in values {
            obj.insert(k.clone(), serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number));
        }
        let line = Value::Object(obj).to_string();
        writeln!(self.jsonl, "{line}").map_err(|e| TrainError::io(&self.path, e))?;
        self.events.scalars(step as i64, values)?;
        Ok(())
    }
}

/// Prepares a JSONL log for a (re)started run: with `resume_step`, lines whose `key` is past it
/// (written by the interrupted run after its last checkpoint) are dropped; without, the file is removed.
pub fn truncate_jsonl(path: &Path, key: &str, resume_step: Option<usize>) -> Result<()> {
    match resume_step {
        Some(keep) if path.exists() => {
            let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
            let kept: String = BufReader::new(file)
                .lines()
                .map_while(std::io::Result::ok)
                .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.get(key)?.as_u64()).is_some_and(|s| s as usize <= keep))
                .map(|l| format!("{l}\n"))
                .collect();
            Ok(rlhf_files::write_atomic(path, kept)?)
        }
        None if path.exists() => std::fs::remove_file(path).map_err(|e| TrainError::io(path, e)),
        _ => Ok(()),
    }
}

/// Reads a metrics file back (for reports and tests).
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    Ok(BufReader::new(file).lines().map_while(std::io::Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect())
}

/// The first logged value of `key` (metrics lines hold only the keys logged at that step).
pub fn first_value(rows: &[Value], key: &str) -> Option<f64> {
    rows.iter().find_map(|r| r.get(key)?.as_f64())
}

/// The last logged value of `key`.
pub fn last_value(rows: &[Value], key: &str) -> Option<f64> {
    rows.iter().rev().find_map(|r| r.get(key)?.as_f64())
}

/// A minimal TensorBoard event-file writer: TFRecord framing (length, masked CRC-32C) around
/// `Event` protos holding scalar summaries. Protobuf is encoded by hand: three message types.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = CRC32C.checksum(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

impl EventWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let path = dir.join(format!("events.out.tfevents.{secs}.rlhf-rs"));
        let file = File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut w = Self { path, file };
        // First event: the file version.
        let mut event = Vec::new();
        w.header(0, &mut event);
        field_bytes(3, b"brain.Event:2", &mut event);
        w.record(&event)?;
        Ok(w)
    }

    fn header(&self, step: i64, event: &mut Vec<u8>) {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        event.push(1 << 3 | 1); // wall_time: double
        event.extend_from_slice(&wall.to_le_bytes());
        event.push(2 << 3); // step: int64
        varint(step as u64, event);
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&buf).and_then(|()| self.file.flush()).map_err(|e| TrainError::io(&self.path, e))
    }

    /// One event with a `Summary` of scalar values.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            field_bytes(1, tag.as_bytes(), &mut value); // tag
            value.push(2 << 3 | 5); // simple_value: float
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            field_bytes(1, &value, &mut summary); // Summary.value
        }
        let mut event = Vec::new();
        self.header(step, &mut event);
        field_bytes(5, &summary, &mut event); // Event.summary
        self.record(&event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn resume_drops_entries_after_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = MetricsLog::open(tmp.path(), "step", None).unwrap();
        for s in 1..=5 {
            m.log(s, &[("loss".into(), s as f64)]).unwrap();
        }
        drop(m);
        let mut m = MetricsLog::open(tmp.path(), "step", Some(3)).unwrap();
        m.log(4, &[("loss".into(), 0.5)]).unwrap();
        let rows = read_metrics(&tmp.path().join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert_eq!(rows[3]["loss"], 0.5);
    }
}
