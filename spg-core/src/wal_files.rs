//! Names of PostgreSQL's WAL files: segments (`TTTTTTTTXXXXXXXXYYYYYYYY`) and timeline history
//! files (`TTTTTTTT.history`).

use crate::TimelineId;

/// The default WAL segment size (`initdb --wal-segsize` is not used by SPG).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// The name PostgreSQL gives segment `segno` of timeline `tli`.
pub fn segment_file_name(tli: TimelineId, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{:08X}{:08X}{:08X}", tli.0, segno / per_id, segno % per_id)
}

/// Parse a segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`) into timeline and segment number.
pub fn parse_segment_file_name(name: &str, segment_size: u64) -> Option<(TimelineId, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_id = 0x1_0000_0000 / segment_size;
    if lo >= per_id {
        return None;
    }
    Some((TimelineId(tli), hi.checked_mul(per_id)?.checked_add(lo)?))
}

/// The timeline of a history file name (`TTTTTTTT.history`).
pub fn parse_history_name(name: &str) -> Option<TimelineId> {
    let hex = name.strip_suffix(".history")?;
    (hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .map(TimelineId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let seg = DEFAULT_SEGMENT_SIZE;
        let n = segment_file_name(TimelineId(3), 0x1_05, seg);
        assert_eq!(n, "000000030000000100000005");
        assert_eq!(
            parse_segment_file_name(&n, seg),
            Some((TimelineId(3), 0x105))
        );
        assert_eq!(
            parse_segment_file_name("0000000300000001000001FF", seg),
            None
        );
        assert_eq!(parse_history_name("0000000A.history"), Some(TimelineId(10)));
        assert_eq!(parse_history_name("0000000A.partial"), None);
    }
}
