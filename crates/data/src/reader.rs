//! Streaming JSON record reader: JSONL (one value per line) or a JSON array file, each record with
//! the line it starts on. Neither reads the whole file into one string; a record may be many MB.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use crate::error::{DataError, Result};

/// Why a record could not even be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseIssue {
    pub line: usize,
    pub message: String,
    /// Category used in skip reports.
    pub reason: &'static str,
}

/// One record or the reason it is unreadable.
pub type RawRecord = std::result::Result<(usize, Value), ParseIssue>;

/// Calls `f` on every record of a JSONL or JSON-array stream, in order. `f` returning an error
/// stops the reading (strict mode); I/O errors stop it too.
pub fn for_each_json_record<R: Read>(
    reader: R,
    path: &Path,
    mut f: impl FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let io = |e| DataError::io(path, e);
    // Peek at the first line to tell a JSON array file from JSONL (whose lines may be arrays too).
    let mut first = Vec::new();
    reader.read_until(b'\n', &mut first).map_err(io)?;
    let trimmed = trim_ascii(&first);
    let is_array_file = trimmed.first() == Some(&b'[') && !is_jsonl_array_line(trimmed);
    if is_array_file {
        let chained = std::io::Cursor::new(first).chain(reader);
        return read_array(BufReader::new(chained), path, f);
    }
    let mut line_no = 1;
    let mut line = first;
    loop {
        if line.is_empty() {
            return Ok(()); // EOF
        }
        let text = trim_ascii(&line);
        if !text.is_empty() {
            f(parse_record(text, line_no))?;
        }
        line.clear();
        reader.read_until(b'\n', &mut line).map_err(io)?;
        line_no += 1;
    }
}

/// A JSONL line holding a bare list of messages (`[{"role":..},..]`) rather than the start of an
/// array file.
fn is_jsonl_array_line(line: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Array(items)) => items.first().is_none_or(|m| {
            m.get("role").is_some() || m.get("from").is_some() || m.get("content").is_some()
        }),
        _ => false,
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

fn parse_record(bytes: &[u8], line: usize) -> RawRecord {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ParseIssue { line, message: format!("invalid UTF-8 at byte {}", e.valid_up_to()), reason: "invalid UTF-8" });
    }
    serde_json::from_slice::<Value>(bytes).map(|v| (line, v)).map_err(|e| {
        // serde's "at line L column C" is relative to the record: report the file line instead.
        let text = e.to_string();
        let what = text.split(" at line ").next().unwrap_or(&text);
        ParseIssue {
            line: line + e.line().saturating_sub(1),
            message: format!("invalid JSON: {what} (column {})", e.column()),
            reason: "invalid JSON",
        }
    })
}

/// Splits a top-level JSON array into its elements by scanning brackets and strings, so each
/// element is parsed on its own and reported with the line it starts on.
fn read_array<R: BufRead>(mut reader: R, path: &Path, mut f: impl FnMut(RawRecord) -> Result<()>) -> Result<()> {
    let mut line = 1usize;
    let mut byte = [0u8; 1];
    let mut next = |reader: &mut R, line: &mut usize| -> Result<Option<u8>> {
        match reader.read(&mut byte) {
            Ok(0) => Ok(None),
            Ok(_) => {
                if byte[0] == b'\n' {
                    *line += 1;
                }
                Ok(Some(byte[0]))
            }
            Err(e) => Err(DataError::io(path, e)),
        }
    };
    let unterminated = |line| ParseIssue { line, message: "invalid JSON: the array is not closed".into(), reason: "invalid JSON" };
    // Opening bracket.
    loop {
        match next(&mut reader, &mut line)? {
            Some(c) if c.is_ascii_whitespace() => continue,
            Some(b'[') => break,
            _ => return f(Err(ParseIssue { line, message: "invalid JSON: expected `[`".into(), reason: "invalid JSON" })),
        }
    }
    let mut element = Vec::new();
    loop {
        // Skip to the next element.
        let c = loop {
            match next(&mut reader, &mut line)? {
                Some(c) if c.is_ascii_whitespace() || c == b',' => continue,
                Some(b']') => return Ok(()),
                Some(c) => break c,
                None => return f(Err(unterminated(line))),
            }
        };
        let start = line;
        element.clear();
        element.push(c);
        let (mut depth, mut in_string, mut escaped) = (0i64, c == b'"', false);
        if c == b'{' || c == b'[' {
            depth = 1;
        }
        // Scan to the end of the element.
        while depth > 0 || in_string {
            let Some(b) = next(&mut reader, &mut line)? else { return f(Err(unterminated(start))) };
            element.push(b);
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
            }
        }
        if !matches!(c, b'{' | b'[' | b'"') {
            // A bare number/literal: read until a delimiter.
            loop {
                let Some(b) = next(&mut reader, &mut line)? else { return f(Err(unterminated(start))) };
                if b == b',' || b == b']' || b.is_ascii_whitespace() {
                    f(parse_record(&element, start))?;
                    if b == b']' {
                        return Ok(());
                    }
                    break;
                }
                element.push(b);
            }
            continue;
        }
        f(parse_record(&element, start))?;
    }
}

/// Opens `path` and streams its records.
pub fn for_each_json_record_in(path: &Path, f: impl FnMut(RawRecord) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    for_each_json_record(file, path, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Vec<RawRecord> {
        let mut out = Vec::new();
        for_each_json_record(text.as_bytes(), Path::new("x"), |r| {
            out.push(r);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn jsonl_records_carry_their_line_numbers_and_skip_blank_lines() {
        let got = records("{\"a\":1}\n\n{\"a\":2}\r\n{bad\n");
        assert_eq!(got[0], Ok((1, serde_json::json!({"a":1}))));
        assert_eq!(got[1], Ok((3, serde_json::json!({"a":2}))));
        let e = got[2].clone().unwrap_err();
        assert_eq!((e.line, e.reason), (4, "invalid JSON"));
    }

    #[test]
    fn jsonl_lines_may_be_bare_message_lists() {
        let got = records("[{\"role\":\"user\",\"content\":\"hi\"}]\n[{\"role\":\"user\",\"content\":\"yo\"}]\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().unwrap().0, 2);
    }

    #[test]
    fn array_files_report_the_line_each_record_starts_on() {
        let text = "[\n  {\"instruction\": \"a [x] \\\"q\\\" {\",\n   \"output\": \"b\"},\n  {\"instruction\": \"c\"},\n  {\"broken\": }\n]";
        let got = records(text);
        assert_eq!(got[0].as_ref().unwrap().0, 2);
        assert_eq!(got[0].as_ref().unwrap().1["instruction"], "a [x] \"q\" {");
        assert_eq!(got[1].as_ref().unwrap().0, 4);
        assert_eq!(got[2].as_ref().unwrap_err().line, 5);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn invalid_utf8_is_reported_not_panicked() {
        let mut bytes = b"{\"a\":\"".to_vec();
        bytes.extend([0xff, 0xfe]);
        bytes.extend(b"\"}\n");
        let mut out = Vec::new();
        for_each_json_record(&bytes[..], Path::new("x"), |r| {
            out.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(out[0].as_ref().unwrap_err().reason, "invalid UTF-8");
    }

    #[test]
    fn a_ten_megabyte_line_is_read() {
        let big = "字".repeat(4 << 20);
        let text = format!("{{\"text\":\"{big}\"}}\n");
        let got = records(&text);
        assert_eq!(got[0].as_ref().unwrap().1["text"].as_str().unwrap().len(), big.len());
    }
}
