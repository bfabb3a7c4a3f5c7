//! The root's child-disk image: a sparse raw file with a GUID Partition
//! Table (written by the same `disks` crate the root reads it with) and one
//! child disk per named child. `cargo xtask run` keeps it under `target/`
//! between runs, so what a child wrote is there next time; tests make their
//! own copies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use disks::{BlockDevice, DeviceError, DiskTable};

/// Bytes per sector (virtio-blk's).
const SECTOR: u64 = 512;

/// A raw image file as a block device.
pub struct FileDevice {
    file: File,
    blocks: u64,
}

impl FileDevice {
    /// Open `path` for reading and writing.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let blocks = file.metadata()?.len() / SECTOR;
        Ok(Self { file, blocks })
    }

    fn seek(&mut self, lba: u64, len: usize) -> Result<(), DeviceError> {
        if len == 0 || !(len as u64).is_multiple_of(SECTOR) {
            return Err(DeviceError::BadBuffer);
        }
        let end = lba
            .checked_add(len as u64 / SECTOR)
            .ok_or(DeviceError::OutOfRange)?;
        if end > self.blocks {
            return Err(DeviceError::OutOfRange);
        }
        self.file
            .seek(SeekFrom::Start(lba * SECTOR))
            .map(|_| ())
            .map_err(|_| DeviceError::Io)
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        SECTOR as u32
    }
    fn block_count(&self) -> u64 {
        self.blocks
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.seek(lba, buf.len())?;
        self.file.read_exact(buf).map_err(|_| DeviceError::Io)
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.seek(lba, buf.len())?;
        self.file.write_all(buf).map_err(|_| DeviceError::Io)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(|_| DeviceError::Io)
    }
}

/// Make sure `path` is a GPT image of at least `bytes` holding a child disk
/// for each `(name, bytes)` in `disks`: a missing file is created sparse and
/// formatted; an existing one keeps its table and data, and only missing
/// disks are added. Returns the names of the disks it created.
pub fn ensure_child_disks(path: &Path, bytes: u64, disks: &[(&str, u64)]) -> Result<Vec<String>, String> {
    let what = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| what(&e))?;
        }
        let f = File::create(path).map_err(|e| what(&e))?;
        // Sparse: only the table and what children write take space.
        f.set_len(bytes).map_err(|e| what(&e))?;
        let dev = FileDevice::open(path).map_err(|e| what(&e))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        DiskTable::format(dev, seed).map_err(|e| what(&e))?;
    }
    let dev = FileDevice::open(path).map_err(|e| what(&e))?;
    let mut table = DiskTable::open(dev).map_err(|e| {
        format!(
            "{}: not a child-disk image ({e}); move it aside and a new one is made",
            path.display()
        )
    })?;
    let mut created = Vec::new();
    for (name, size) in disks {
        if table.get(name).is_none() {
            table
                .create(name, *size)
                .map_err(|e| what(&format!("disk '{name}': {e}")))?;
            created.push((*name).to_string());
        }
    }
    table.device_mut().flush().map_err(|e| what(&e))?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_made_once_and_keeps_its_disks() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        let path = dir.join("disks.img");
        let _ = std::fs::remove_dir_all(&dir);
        let made = ensure_child_disks(&path, 256 << 20, &[("alpha", 16 << 20), ("linux", 64 << 20)]).unwrap();
        assert_eq!(made, ["alpha", "linux"]);
        // Sparse: the file's blocks are far fewer than its length.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 256 << 20);
        // A child's data survives the next run, which only adds what is missing.
        let mut dev = FileDevice::open(&path).unwrap();
        let table = DiskTable::open(FileDevice::open(&path).unwrap()).unwrap();
        let alpha = table.get("alpha").unwrap();
        dev.write_blocks(alpha.first_lba, &[0xA5; 512]).unwrap();
        let made = ensure_child_disks(&path, 256 << 20, &[("alpha", 16 << 20), ("beta", 16 << 20)]).unwrap();
        assert_eq!(made, ["beta"]);
        let mut back = [0u8; 512];
        dev.read_blocks(alpha.first_lba, &mut back).unwrap();
        assert_eq!(back, [0xA5; 512]);
        let table = DiskTable::open(FileDevice::open(&path).unwrap()).unwrap();
        let names: Vec<String> = table.list().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["alpha", "linux", "beta"]);
        // Not an image of ours: refused with the way out.
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let e = ensure_child_disks(&path, 1 << 20, &[("x", 1 << 20)]).unwrap_err();
        assert!(e.contains("move it aside"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
