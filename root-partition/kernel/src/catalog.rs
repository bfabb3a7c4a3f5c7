//! The devices a child's bus carries: the one place the root names device
//! types (the worker only sees `vsp::Device`s). Adding a device to every
//! child is one line in [`standard`].

use crate::ring_memory::FrameMemory;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use vsp::Device;

/// A child's devices, and the handle the shell drives its integration
/// services with.
pub struct ChildDevices {
    /// To offer, in order.
    pub devices: Vec<Box<dyn Device<FrameMemory>>>,
    /// Shutdown, time sync, heartbeat and KVP controls.
    pub integration: vsp_ic::Controls,
}

/// What `spec`'s child gets: the echo device (relid 1), the integration
/// services Hyper-V offers every guest (shutdown, time sync, heartbeat,
/// KVP); with `disk` (the child's disk on the root's block devices, from
/// `--disk`) or `--ramdisk` a synthetic SCSI controller with that disk; with
/// `--nic` a synthetic NIC (`seed` makes identities unique), which the
/// manager makes a port of the virtual switch.
pub fn for_child(
    spec: &mgmt::cli::CreateSpec,
    seed: u64,
    disk: Option<crate::storage::PartitionDisk>,
) -> Result<ChildDevices, String> {
    let mut c = standard();
    if let Some(backend) = disk {
        c.devices.push(scsi_controller(backend, &spec.name, seed)?);
    } else if let Some(bytes) = spec.ramdisk {
        let backend = crate::ramdisk::RamDisk::new(bytes)
            .ok_or_else(|| alloc::format!("no root memory for a {} MiB RAM disk", bytes >> 20))?;
        c.devices.push(scsi_controller(backend, &spec.name, seed)?);
    }
    if spec.nic {
        // Microsoft's OUI for Hyper-V synthetic NICs (00:15:5D), then three
        // bytes of the seed: the root assigns, the guest cannot change it
        // (RNDIS refuses "NetworkAddress").
        let s = seed.to_le_bytes();
        let mac = [0x00, 0x15, 0x5D, s[4], s[1], s[0]];
        let nic = netvsp::Netvsp::new(netvsp::NetvspConfig::new(mac))
            .map_err(|e| alloc::format!("synthetic NIC: {e:?}"))?;
        c.devices.push(Box::new(nic));
    }
    Ok(c)
}

/// A synthetic SCSI controller with one disk on `backend`.
/// `StorvspConfig::completion_spins` for the root's controllers.
const COMPLETION_SPINS: u32 = 128;

fn scsi_controller<B: scsi_disk::BlockBackend + 'static>(
    backend: B,
    child: &str,
    seed: u64,
) -> Result<Box<dyn Device<FrameMemory>>, String> {
    let serial = alloc::format!("hvrs-{child}-{seed}");
    // 1 MiB transfers (storvsp's limit), announced twice: storvsc sets the
    // host's max_sectors from QUERY_PROPERTIES, and sd sets the queue's
    // max_sectors from the disk's VPD 0xB0 MAXIMUM TRANSFER LENGTH (the
    // smaller wins; drivers/scsi/sd.c sd_revalidate_disk). With the disk's
    // default 256 KiB a 1 MiB read was four SRBs, four guest-to-root round
    // trips, instead of one.
    let max_transfer_blocks = storvsp::MAX_TRANSFER_BYTES_LIMIT / backend.sector_size().max(1);
    let disk_config = scsi_disk::DiskConfig {
        max_transfer_blocks,
        ..scsi_disk::DiskConfig::new(&serial, seed)
    };
    let disk = scsi_disk::ScsiDisk::new(backend, disk_config).map_err(|e| alloc::format!("disk: {e:?}"))?;
    // A poll waits briefly for the DMA it started (QEMU serves a small
    // read from its page cache in well under a dispatch round trip), so
    // depth-1 requests and Linux's batches complete in the poll that read
    // them; larger ones complete in a later poll, woken by the device's
    // completion interrupt, while the child runs (docs/storage-network.md
    // has the figures behind 128).
    let config = storvsp::StorvspConfig {
        max_transfer_bytes: storvsp::MAX_TRANSFER_BYTES_LIMIT,
        completion_spins: COMPLETION_SPINS,
        ..storvsp::StorvspConfig::default()
    };
    let controller =
        storvsp::Storvsp::new(disk, config).map_err(|e| alloc::format!("SCSI controller: {e:?}"))?;
    Ok(Box::new(controller))
}

/// What every child gets: the echo device (relid 1), then the integration
/// services Hyper-V offers every guest (shutdown, time sync, heartbeat, KVP).
pub fn standard() -> ChildDevices {
    // hv-core gives the root each child's reference time
    // (`hv::reference_time`), so time sync can offer version 4.0.
    let config = vsp_ic::IcConfig {
        timesync_reference_time: true,
        ..vsp_ic::IcConfig::default()
    };
    let (services, integration) = vsp_ic::IntegrationServices::new::<FrameMemory>(config);
    let mut devices = alloc::vec![echo()];
    devices.extend(services);
    ChildDevices { devices, integration }
}

/// Another echo device (the shell's `offer ID`).
pub fn echo() -> Box<dyn Device<FrameMemory>> {
    Box::new(vsp_echo::Echo::new())
}
