//! The serial line protocol (DESIGN.md; field tables in README.md):
//!
//! `$CTSEN,<seq>,<EVENT>,<field>,...*<CS>\r\n`, where CS is the XOR of every byte between `$`
//! and `*`, as two upper-case hex digits. The receiver may acknowledge with `$CTACK,<seq>*<CS>`.
//! Messages are formatted into a fixed-capacity [`Line`]: no heap allocation on the alert path.

use core::fmt::Write;

use super::{Cleared, Event, Health, Stage};

/// Longest message, `\r\n` included.
pub const MAX_LINE: usize = 96;

/// One formatted message.
pub type Line = heapless::String<MAX_LINE>;

/// XOR checksum of `body` (the bytes between `$` and `*`).
pub fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0, |a, b| a ^ b)
}

/// Formats `event` with sequence number `seq` into `out` (cleared first). `version` is sent in
/// READY (e.g. `0.1.0;densenet121-covid-1.0.0`; commas and `*` are replaced). Returns `None` for
/// events that are not sent on the line (LED-only ones).
pub fn format(seq: u32, event: &Event, version: &str, out: &mut Line) -> Option<()> {
    out.clear();
    let body = |out: &mut Line| -> core::fmt::Result {
        write!(out, "CTSEN,{seq},")?;
        match event {
            Event::Ready { latched } => {
                out.push_str("READY,").map_err(|_| core::fmt::Error)?;
                for c in version.chars().take(40) {
                    out.push(if c == ',' || c == '*' || c == '$' || !c.is_ascii_graphic() { '_' } else { c }).map_err(|_| core::fmt::Error)?;
                }
                write_latch(out, latched)
            }
            Event::Heartbeat { health, latched } => {
                let h = match health {
                    Health::Ok => "OK",
                    Health::Degraded => "DEGRADED",
                    Health::Fault => "FAULT",
                };
                write!(out, "HEARTBEAT,{h}")?;
                write_latch(out, latched)
            }
            Event::Alert { key, positives, slices, max_prob, stage } => {
                write!(out, "ALERT,{key},{positives},{slices},{max_prob:.3},{}", if *stage == Stage::Early { "EARLY" } else { "FINAL" })
            }
            Event::Negative { key, positives, slices, max_prob } => write!(out, "NEGATIVE,{key},{positives},{slices},{max_prob:.3},FINAL"),
            Event::Fault { kind } => write!(out, "FAULT,{}", kind.name()),
            Event::Clear { what } => match what {
                Cleared::Ack => write!(out, "CLEAR,ACK"),
                Cleared::Fault(k) => write!(out, "CLEAR,{}", k.name()),
            },
            Event::Drift { on } => write!(out, "{},DRIFT", if *on { "DEGRADED" } else { "CLEAR" }),
            Event::Stopping => write!(out, "STOPPING"),
            Event::Reject { why } => write!(out, "REJECT,{}", why.name()),
            Event::Scoring { .. } | Event::Degraded { .. } => Err(core::fmt::Error),
        }
    };
    let mut b = Line::new();
    body(&mut b).ok()?;
    let cs = checksum(b.as_bytes());
    write!(out, "${b}*{cs:02X}\r\n").ok()?;
    Some(())
}

/// `,LATCHED,<key>` or `,CLEAR`.
fn write_latch(out: &mut Line, latched: &Option<super::SeriesKey>) -> core::fmt::Result {
    match latched {
        Some(key) => write!(out, ",LATCHED,{key}"),
        None => write!(out, ",CLEAR"),
    }
}

/// Formats an acknowledgement of `seq` (what a receiver sends back).
pub fn format_ack(seq: u32, out: &mut Line) {
    out.clear();
    let mut b = Line::new();
    let _ = write!(b, "CTACK,{seq}");
    let _ = write!(out, "${b}*{:02X}\r\n", checksum(b.as_bytes()));
}

/// Why a line is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No `$` start or `*CS` end.
    Framing,
    /// The checksum does not match.
    Checksum {
        /// As received.
        got: u8,
        /// As computed.
        want: u8,
    },
}

/// Checks framing and checksum of one line (with or without `\r\n`) and returns its fields
/// (talker first, e.g. `CTSEN`, `12`, `ALERT`, ...).
pub fn parse(line: &str) -> Result<heapless::Vec<&str, 16>, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line.strip_prefix('$').ok_or(ParseError::Framing)?;
    let (body, cs) = rest.rsplit_once('*').ok_or(ParseError::Framing)?;
    let got = u8::from_str_radix(cs, 16).map_err(|_| ParseError::Framing)?;
    if cs.len() != 2 {
        return Err(ParseError::Framing);
    }
    let want = checksum(body.as_bytes());
    if got != want {
        return Err(ParseError::Checksum { got, want });
    }
    let mut v = heapless::Vec::new();
    for f in body.split(',') {
        v.push(f).map_err(|_| ParseError::Framing)?;
    }
    Ok(v)
}

/// The sequence number of a valid `$CTACK,<seq>*CS` line.
pub fn parse_ack(line: &str) -> Option<u32> {
    let f = parse(line).ok()?;
    (f.len() == 2 && f[0] == "CTACK").then(|| f[1].parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{FaultKind, SeriesKey};

    #[test]
    fn messages_have_the_documented_fields_and_checksum() {
        let mut l = Line::new();
        let key = SeriesKey { hash: *b"1a2b3c4d", part: 1 };
        format(7, &Event::Alert { key, positives: 3, slices: 40, max_prob: 0.91234, stage: Stage::Early }, "", &mut l).unwrap();
        let body = "CTSEN,7,ALERT,1a2b3c4d,3,40,0.912,EARLY";
        assert_eq!(l.as_str(), format!("${body}*{:02X}\r\n", checksum(body.as_bytes())));
        assert_eq!(parse(&l).unwrap().as_slice(), &["CTSEN", "7", "ALERT", "1a2b3c4d", "3", "40", "0.912", "EARLY"]);
        // Hand-computed checksum of a short body.
        assert_eq!(checksum(b"CTACK,5"), b"CTACK,5".iter().fold(0u8, |a, b| a ^ b));
        format(8, &Event::Fault { kind: FaultKind::Disk }, "", &mut l).unwrap();
        assert!(l.starts_with("$CTSEN,8,FAULT,DISK*"));
        format(9, &Event::Ready { latched: Some(key) }, "0.1.0;model,x*", &mut l).unwrap();
        assert!(l.starts_with("$CTSEN,9,READY,0.1.0;model_x_,LATCHED,1a2b3c4d*"), "{l}");
        format(9, &Event::Heartbeat { health: Health::Ok, latched: None }, "", &mut l).unwrap();
        assert!(l.starts_with("$CTSEN,9,HEARTBEAT,OK,CLEAR*"), "{l}");
        format(9, &Event::Reject { why: super::super::RejectKind::Content }, "", &mut l).unwrap();
        assert!(l.starts_with("$CTSEN,9,REJECT,CONTENT*"), "{l}");
        format(9, &Event::Stopping, "", &mut l).unwrap();
        assert!(l.starts_with("$CTSEN,9,STOPPING*"), "{l}");
        assert!(format(10, &Event::Scoring { busy: true }, "", &mut l).is_none());
        let key2 = SeriesKey { part: 2, ..key };
        format(11, &Event::Negative { key: key2, positives: 1, slices: 150, max_prob: 0.5 }, "", &mut l).unwrap();
        assert_eq!(&parse(&l).unwrap()[2..], &["NEGATIVE", "1a2b3c4d.2", "1", "150", "0.500", "FINAL"]);
    }

    #[test]
    fn corrupt_lines_are_refused() {
        let mut l = Line::new();
        format_ack(42, &mut l);
        assert_eq!(parse_ack(&l), Some(42));
        let bad = l.replace("42", "43");
        assert!(matches!(parse(&bad), Err(ParseError::Checksum { .. })));
        assert_eq!(parse("CTACK,1*00"), Err(ParseError::Framing));
        assert_eq!(parse_ack("$CTSEN,1,READY*00"), None);
    }
}
