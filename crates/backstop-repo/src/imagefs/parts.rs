//! Partition tables: MBR (with logical partitions in an extended one) and
//! GPT (checked by its CRCs, the backup header when the primary is
//! damaged). Every number read from the disk is checked against the
//! disk's size before it is used; a damaged table is an error that says
//! so, never a panic.

use super::{DiskError, ReadAt, le16, le32, le64};

/// A partition: where it lies on the disk, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux names them: `p1`..`p4` primary (or GPT entry
    /// order), `p5` on the logical ones of an MBR's extended partition.
    pub number: u32,
    pub start: u64,
    pub len: u64,
    /// What the table says it holds, e.g. `Linux filesystem` or `MBR 0x83`.
    pub kind: String,
    /// A GPT partition's name (empty for MBR).
    pub name: String,
}

/// Which table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Mbr,
    Gpt,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Mbr => "MBR",
            Table::Gpt => "GPT",
        }
    }
}

const SECTOR: u64 = 512;
/// Logical partitions followed through an extended partition's chain.
const MAX_LOGICAL: usize = 256;
/// A GPT's entry array is read whole; real ones are 16 KiB.
const MAX_GPT_ENTRIES_BYTES: u64 = 1 << 20;

/// The disk's partition table, or `None` when it has none (a file system
/// may then fill the whole disk).
pub fn read(disk: &dyn ReadAt) -> Result<Option<(Table, Vec<Partition>)>, DiskError> {
    if disk.size() < SECTOR {
        return Ok(None);
    }
    let mut mbr = [0u8; SECTOR as usize];
    disk.read_exact_at(0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let entries: Vec<MbrEntry> = (0..4).map(|i| MbrEntry::parse(&mbr[446 + 16 * i..462 + 16 * i])).collect();
    // Every entry of a boot sector that is not a partition table (a file
    // system's, a boot loader's) would be garbage: status other than 0 or 0x80.
    if entries.iter().any(|e| e.status & 0x7f != 0) {
        return Ok(None);
    }
    if entries.iter().any(|e| e.kind == 0xEE) {
        return read_gpt(disk).map(|parts| Some((Table::Gpt, parts)));
    }
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        let (start, len) = e.span(0, disk.size(), i as u32 + 1)?;
        if matches!(e.kind, 0x05 | 0x0F | 0x85) {
            logical(disk, start, len, &mut parts)?;
        } else {
            parts.push(Partition {
                number: i as u32 + 1,
                start,
                len,
                kind: format!("MBR 0x{:02x}", e.kind),
                name: String::new(),
            });
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some((Table::Mbr, parts)))
}

struct MbrEntry {
    status: u8,
    kind: u8,
    first: u32,
    sectors: u32,
}

impl MbrEntry {
    fn parse(b: &[u8]) -> MbrEntry {
        MbrEntry { status: b[0], kind: b[4], first: le32(b, 8), sectors: le32(b, 12) }
    }

    /// Start and length in bytes, relative to `base` (bytes), inside the disk.
    fn span(&self, base: u64, disk: u64, number: u32) -> Result<(u64, u64), DiskError> {
        let start = base + self.first as u64 * SECTOR;
        let len = self.sectors as u64 * SECTOR;
        if start == 0 || start.checked_add(len).is_none_or(|end| end > disk) {
            return Err(DiskError::damaged(format!(
                "MBR partition {number} lies outside the disk (sectors {}+{} of a {}-byte disk)",
                self.first, self.sectors, disk
            )));
        }
        Ok((start, len))
    }
}

/// The logical partitions in the extended partition at `ext_start`: a
/// chain of boot records, each one partition and a link to the next.
fn logical(disk: &dyn ReadAt, ext_start: u64, ext_len: u64, parts: &mut Vec<Partition>) -> Result<(), DiskError> {
    let ext_end = ext_start + ext_len;
    let mut ebr_at = ext_start;
    let mut seen = Vec::new();
    for number in 5.. {
        if parts.len() >= MAX_LOGICAL || seen.contains(&ebr_at) {
            return Err(DiskError::damaged("the extended partition's chain of logical partitions loops"));
        }
        seen.push(ebr_at);
        let mut ebr = [0u8; SECTOR as usize];
        disk.read_exact_at(ebr_at, &mut ebr)?;
        if ebr[510..512] != [0x55, 0xAA] {
            return Err(DiskError::damaged(format!("the logical partitions' boot record at byte {ebr_at} is damaged")));
        }
        let this = MbrEntry::parse(&ebr[446..462]);
        let next = MbrEntry::parse(&ebr[462..478]);
        if this.kind != 0 && this.sectors != 0 {
            let (start, len) = this.span(ebr_at, ext_end, number)?;
            parts.push(Partition { number, start, len, kind: format!("MBR 0x{:02x}", this.kind), name: String::new() });
        }
        if next.kind == 0 || next.sectors == 0 {
            return Ok(());
        }
        ebr_at = next.span(ext_start, ext_end, number + 1)?.0;
    }
    Ok(())
}

/// The GPT of `disk`: the primary header at LBA 1, or the backup at the
/// disk's last sector when the primary's CRC does not match.
fn read_gpt(disk: &dyn ReadAt) -> Result<Vec<Partition>, DiskError> {
    let last = disk.size() / SECTOR - 1;
    let primary = gpt_header(disk, 1);
    let header = match primary {
        Ok(h) => h,
        Err(first) => gpt_header(disk, last)
            .map_err(|_| DiskError::damaged(format!("GPT: {first}, and the backup header is damaged too")))?,
    };
    let bytes = header.entries as u64 * header.entry_size as u64;
    if header.entry_size < 128 || header.entry_size % 8 != 0 || bytes > MAX_GPT_ENTRIES_BYTES {
        return Err(DiskError::damaged(format!(
            "GPT: {} entries of {} bytes is not a partition array",
            header.entries, header.entry_size
        )));
    }
    let at = header
        .entries_lba
        .checked_mul(SECTOR)
        .filter(|at| at.checked_add(bytes).is_some_and(|end| end <= disk.size()))
        .ok_or_else(|| DiskError::damaged("GPT: the partition array lies outside the disk"))?;
    let mut array = vec![0u8; bytes as usize];
    disk.read_exact_at(at, &mut array)?;
    if crc32(&array) != header.entries_crc {
        return Err(DiskError::damaged("GPT: the partition array's CRC does not match (damaged)"));
    }
    let mut parts = Vec::new();
    for (i, e) in array.chunks_exact(header.entry_size as usize).enumerate() {
        let kind: [u8; 16] = e[0..16].try_into().expect("16 bytes");
        if kind == [0; 16] {
            continue;
        }
        let (first, end) = (le64(e, 32), le64(e, 40));
        let number = i as u32 + 1;
        if first == 0 || end < first || end > last {
            return Err(DiskError::damaged(format!(
                "GPT partition {number} lies outside the disk (LBA {first}..={end})"
            )));
        }
        let name: Vec<u16> = (0..36).map(|k| le16(e, 56 + 2 * k)).take_while(|&c| c != 0).collect();
        parts.push(Partition {
            number,
            start: first * SECTOR,
            len: (end - first + 1) * SECTOR,
            kind: gpt_kind(&kind),
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(parts)
}

struct GptHeader {
    entries_lba: u64,
    entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn gpt_header(disk: &dyn ReadAt, lba: u64) -> Result<GptHeader, DiskError> {
    let mut h = [0u8; SECTOR as usize];
    disk.read_exact_at(lba * SECTOR, &mut h)?;
    if &h[0..8] != b"EFI PART" {
        return Err(DiskError::damaged(format!("no GPT header at LBA {lba}")));
    }
    let size = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return Err(DiskError::damaged(format!("the GPT header at LBA {lba} has a bad size ({size})")));
    }
    let stored = le32(&h, 16);
    h[16..20].fill(0);
    if crc32(&h[..size]) != stored {
        return Err(DiskError::damaged(format!("the GPT header at LBA {lba} is damaged (CRC)")));
    }
    Ok(GptHeader {
        entries_lba: le64(&h, 72),
        entries: le32(&h, 80),
        entry_size: le32(&h, 84),
        entries_crc: le32(&h, 88),
    })
}

/// A GPT partition type by its GUID (the common ones by name).
fn gpt_kind(guid: &[u8; 16]) -> String {
    let text = format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(guid, 0),
        le16(guid, 4),
        le16(guid, 6),
        guid[8],
        guid[9],
        guid[10..].iter().map(|b| format!("{b:02X}")).collect::<String>()
    );
    let name = match text.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        _ => return format!("GPT type {text}"),
    };
    name.to_string()
}

/// CRC-32 (IEEE), as GPT uses it.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_disk_without_a_boot_signature_has_no_table() {
        assert_eq!(read(&vec![0u8; 4096]).unwrap(), None);
    }

    #[test]
    fn an_mbr_partition_past_the_end_is_damage_not_a_panic() {
        let mut disk = vec![0u8; 8192];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk[446 + 4] = 0x83;
        disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        disk[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read(&disk).unwrap_err();
        assert!(err.to_string().contains("outside the disk"), "{err}");
    }

    #[test]
    fn a_looping_chain_of_logical_partitions_is_damage() {
        let mut disk = vec![0u8; 64 * 512];
        let entry = |disk: &mut Vec<u8>, at: usize, kind: u8, first: u32, sectors: u32| {
            disk[at + 4] = kind;
            disk[at + 8..at + 12].copy_from_slice(&first.to_le_bytes());
            disk[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        };
        for sector in [0usize, 8] {
            disk[sector * 512 + 510] = 0x55;
            disk[sector * 512 + 511] = 0xAA;
        }
        entry(&mut disk, 446, 0x05, 8, 40);
        // The extended partition's first record links back to itself.
        entry(&mut disk, 8 * 512 + 446, 0x83, 2, 4);
        entry(&mut disk, 8 * 512 + 462, 0x05, 0, 8);
        let err = read(&disk).unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
    }
}
