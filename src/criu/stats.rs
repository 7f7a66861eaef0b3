//! CRIU's `stats-dump` / `stats-restore` files: how long the freeze lasted, how many pages
//! were written. The schema is CRIU's `images/stats.proto`; ours is `proto/criu-stats.proto`
//! (only the fields read here). The message is flat, so a small varint reader decodes it.

use serde::Serialize;
use std::path::Path;

/// Every CRIU "service" image (stats, irmap cache) starts with this magic (`images/magic.h`).
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// The second magic, naming the stats image.
const STATS_MAGIC: u32 = 0x5709_3306;

/// What CRIU measured while dumping (`dump_stats_entry`). Times are microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DumpStats {
    /// From the first freeze request until every task was stopped.
    pub freezing_time_us: u64,
    /// How long the tasks stayed frozen: the downtime of a dump that leaves them running.
    pub frozen_time_us: u64,
    /// Collecting memory (into pipes).
    pub memdump_time_us: u64,
    /// Writing the collected memory to the images.
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    /// Pages unchanged since the parent (pre-dump) image, so not written again.
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    /// Pages left for the lazy-pages daemon to serve after restore.
    pub pages_lazy: u64,
}

/// What CRIU measured while restoring (`restore_stats_entry`). Times are microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    pub pages_compared: u64,
    pub pages_skipped_cow: u64,
    /// Creating the process tree.
    pub forking_time_us: u64,
    /// The whole restore, from start until the tasks were resumed.
    pub restore_time_us: u64,
    pub pages_restored: u64,
}

/// Why a stats file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StatsError {
    what: String,
}

fn bad(what: impl Into<String>) -> StatsError {
    StatsError { what: what.into() }
}

/// Reads `stats-dump` at `path`.
pub fn read_dump_stats(path: &Path) -> Result<DumpStats, StatsError> {
    let bytes = std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    decode_dump_stats(&bytes).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// Reads `stats-restore` at `path`.
pub fn read_restore_stats(path: &Path) -> Result<RestoreStats, StatsError> {
    let bytes = std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    decode_restore_stats(&bytes).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// Decodes the bytes of a `stats-dump` file.
pub fn decode_dump_stats(bytes: &[u8]) -> Result<DumpStats, StatsError> {
    let entry = stats_entry_field(bytes, 1)?.ok_or_else(|| bad("no dump entry in the stats"))?;
    let mut s = DumpStats::default();
    for field in Fields(entry) {
        let (number, value) = field?;
        let Value::Varint(v) = value else { continue };
        match number {
            1 => s.freezing_time_us = v,
            2 => s.frozen_time_us = v,
            3 => s.memdump_time_us = v,
            4 => s.memwrite_time_us = v,
            5 => s.pages_scanned = v,
            6 => s.pages_skipped_parent = v,
            7 => s.pages_written = v,
            9 => s.pages_lazy = v,
            _ => {}
        }
    }
    Ok(s)
}

/// Decodes the bytes of a `stats-restore` file.
pub fn decode_restore_stats(bytes: &[u8]) -> Result<RestoreStats, StatsError> {
    let entry = stats_entry_field(bytes, 2)?.ok_or_else(|| bad("no restore entry in the stats"))?;
    let mut s = RestoreStats::default();
    for field in Fields(entry) {
        let (number, value) = field?;
        let Value::Varint(v) = value else { continue };
        match number {
            1 => s.pages_compared = v,
            2 => s.pages_skipped_cow = v,
            3 => s.forking_time_us = v,
            4 => s.restore_time_us = v,
            5 => s.pages_restored = v,
            _ => {}
        }
    }
    Ok(s)
}

/// Checks the two magics, takes the one length-prefixed `stats_entry` that follows (CRIU's
/// `pb_write_one`: a little-endian u32 size, then the message) and returns its sub-message
/// `number` (1 = dump, 2 = restore).
fn stats_entry_field(bytes: &[u8], number: u64) -> Result<Option<&[u8]>, StatsError> {
    let word = |at: usize| -> Result<u32, StatsError> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| bad(format!("truncated: {} bytes", bytes.len())))
    };
    if word(0)? != IMG_SERVICE_MAGIC || word(4)? != STATS_MAGIC {
        return Err(bad(format!(
            "not a CRIU stats image (magic {:#010x} {:#010x})",
            word(0)?,
            word(4)?
        )));
    }
    let len = word(8)? as usize;
    let entry = bytes
        .get(12..12 + len)
        .ok_or_else(|| bad(format!("entry of {len} bytes is truncated")))?;
    let mut found = None;
    for field in Fields(entry) {
        if let (n, Value::Bytes(b)) = field?
            && n == number
        {
            found = Some(b);
        }
    }
    Ok(found)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message: (field number, value).
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), StatsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let item = self.read_field();
        if item.is_err() {
            self.0 = &[]; // stop after the first error
        }
        Some(item)
    }
}

impl<'a> Fields<'a> {
    fn read_field(&mut self) -> Result<(u64, Value<'a>), StatsError> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = self.varint()? as usize;
                let b = self.0.get(..len).ok_or_else(|| bad("truncated field"))?;
                self.0 = &self.0[len..];
                Value::Bytes(b)
            }
            5 => self.skip(4)?,
            t => return Err(bad(format!("unsupported wire type {t}"))),
        };
        Ok((key >> 3, value))
    }

    fn skip(&mut self, n: usize) -> Result<Value<'a>, StatsError> {
        self.0 = self.0.get(n..).ok_or_else(|| bad("truncated field"))?;
        Ok(Value::Fixed)
    }

    fn varint(&mut self) -> Result<u64, StatsError> {
        let mut v = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(bad("bad varint"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Both files come from a real `criu dump` / `criu restore` (CRIU 4.1.1) of a small process.
    const DUMP: &[u8] = include_bytes!("testdata/stats-dump");
    const RESTORE: &[u8] = include_bytes!("testdata/stats-restore");

    #[test]
    fn decodes_a_real_dump_stats_file() {
        let s = decode_dump_stats(DUMP).unwrap();
        assert_eq!(
            s,
            DumpStats {
                freezing_time_us: 210,
                frozen_time_us: 11447,
                memdump_time_us: 445,
                memwrite_time_us: 126,
                pages_scanned: 23,
                pages_skipped_parent: 0,
                pages_written: 16,
                pages_lazy: 0,
            }
        );
    }

    #[test]
    fn decodes_a_real_restore_stats_file() {
        let s = decode_restore_stats(RESTORE).unwrap();
        assert_eq!(
            s,
            RestoreStats {
                pages_compared: 0,
                pages_skipped_cow: 0,
                forking_time_us: 17,
                restore_time_us: 11809,
                pages_restored: 16,
            }
        );
    }

    #[test]
    fn large_values_and_unknown_fields_decode() {
        // dump entry: frozen_time = 300 (two-byte varint), pages_written = 2^33,
        // an unknown fixed64 field 20 and an unknown length field 21.
        let mut dump = vec![0x10, 0xac, 0x02, 0x38, 0x80, 0x80, 0x80, 0x80, 0x20];
        dump.extend([0xa1, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0xaa, 0x01, 2, 9, 9]);
        let mut entry = vec![0x0a, dump.len() as u8];
        entry.extend(&dump);
        let mut file = Vec::new();
        file.extend(IMG_SERVICE_MAGIC.to_le_bytes());
        file.extend(STATS_MAGIC.to_le_bytes());
        file.extend((entry.len() as u32).to_le_bytes());
        file.extend(&entry);
        let s = decode_dump_stats(&file).unwrap();
        assert_eq!(s.frozen_time_us, 300);
        assert_eq!(s.pages_written, 1 << 33);
    }

    #[test]
    fn rejects_other_files_and_truncation() {
        assert!(decode_dump_stats(b"not a stats file at all").is_err());
        assert!(decode_dump_stats(&DUMP[..DUMP.len() - 3]).is_err());
        // A restore file has no dump entry.
        let e = decode_dump_stats(RESTORE).unwrap_err();
        assert!(e.to_string().contains("no dump entry"), "{e}");
    }
}
