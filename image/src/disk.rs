//! `basalt disk …` subcommands: glue over `basalt-disk` (layout, inventory, slot writes,
//! GPT-priority boot control).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use basalt_disk::gpt::CopyHealth;
use basalt_disk::slots::{self, SlotImage};
use basalt_disk::{
    BootControl, BootStatus, BootTarget, GptPrio, Inventory, LayoutSpec, RootHash, Slot,
};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::Refused;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sparse disk image with the Basalt GPT layout (both slots empty).
    Create {
        image: PathBuf,
        /// Total size (bytes, or with K/M/G/T suffix). Default 8G.
        #[arg(long)]
        size: Option<String>,
        /// ESP size. Default 256M.
        #[arg(long)]
        esp_size: Option<String>,
        /// Size of each slot's /usr partition. Default 1G.
        #[arg(long)]
        usr_size: Option<String>,
        /// Size of each slot's verity partition. Default 32M.
        #[arg(long)]
        verity_size: Option<String>,
        /// Unallocated room after each slot for later growth. Default 1G.
        #[arg(long)]
        reserve_size: Option<String>,
        /// Root partition size. Default: the rest of the disk.
        #[arg(long)]
        root_size: Option<String>,
        /// Partition alignment. Default 1M.
        #[arg(long)]
        align: Option<String>,
    },
    /// Show partitions, slots, GPT health and the next boot predicted by the GPT backend.
    Inspect {
        image: PathBuf,
        /// Kernel command line of the running system (decides the booted slot).
        #[arg(long)]
        cmdline: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write a /usr image and its verity tree into a slot, then name the slot.
    WriteSlot {
        image: PathBuf,
        #[arg(long, value_enum)]
        slot: SlotArg,
        /// The /usr filesystem image.
        #[arg(long)]
        data: PathBuf,
        /// Its verity hash tree (veritysetup format).
        #[arg(long)]
        verity: PathBuf,
        /// The verity root hash (64 hex digits).
        #[arg(long)]
        root_hash: String,
        /// OS version (goes into the partition label).
        #[arg(long)]
        version: String,
        /// OS name (goes into the partition label).
        #[arg(long, default_value = "basalt")]
        os: String,
        /// Kernel command line of the running system: its booted slot is refused.
        #[arg(long)]
        cmdline: Option<String>,
    },
    /// GPT-priority boot control (ChromeOS/Flatcar attribute bits).
    Gptprio {
        image: PathBuf,
        #[command(subcommand)]
        action: GptprioAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum GptprioAction {
    /// Show both slots' fields and the predicted next boot.
    Status,
    /// Make a slot the next boot with N tries.
    Stage {
        #[arg(long, value_enum)]
        slot: SlotArg,
        #[arg(long, default_value_t = 3)]
        tries: u32,
    },
    /// Mark a slot successful and the default.
    MarkGood {
        #[arg(long, value_enum)]
        slot: SlotArg,
    },
    /// Make a slot unbootable.
    MarkBad {
        #[arg(long, value_enum)]
        slot: SlotArg,
    },
    /// Withdraw a staged slot; the other slot is left as it is.
    Cancel {
        #[arg(long, value_enum)]
        slot: SlotArg,
    },
    /// Boot the good slot next and mark the other bad.
    Rollback {
        #[arg(long, value_enum)]
        to: SlotArg,
    },
    /// Simulate the boot loader: pick the next slot and consume a try.
    BootAttempt,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SlotArg {
    A,
    B,
}

impl From<SlotArg> for Slot {
    fn from(s: SlotArg) -> Slot {
        match s {
            SlotArg::A => Slot::A,
            SlotArg::B => Slot::B,
        }
    }
}

/// Turn policy refusals into exit code 3, everything else stays a plain failure.
fn refuse(err: basalt_disk::Error) -> anyhow::Error {
    match err {
        basalt_disk::Error::BootedSlot { .. }
        | basalt_disk::Error::IllegalTransition { .. }
        | basalt_disk::Error::SlotTooSmall { .. }
        | basalt_disk::Error::DuplicateRootHash { .. } => Refused(err.to_string()).into(),
        other => other.into(),
    }
}

fn size(arg: &Option<String>, default: u64) -> anyhow::Result<u64> {
    match arg {
        Some(text) => Ok(basalt_disk::layout::parse_size(text)?),
        None => Ok(default),
    }
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Create {
            image,
            size: total,
            esp_size,
            usr_size,
            verity_size,
            reserve_size,
            root_size,
            align,
        } => {
            let d = LayoutSpec::default();
            let spec = LayoutSpec {
                disk_size: size(&total, d.disk_size)?,
                esp_size: size(&esp_size, d.esp_size)?,
                usr_size: size(&usr_size, d.usr_size)?,
                verity_size: size(&verity_size, d.verity_size)?,
                slot_reserve: size(&reserve_size, d.slot_reserve)?,
                root_size: match &root_size {
                    Some(t) => Some(basalt_disk::layout::parse_size(t)?),
                    None => None,
                },
                align: size(&align, d.align)?,
            };
            basalt_disk::create_image(&image, &spec)?;
            println!("created {}", image.display());
            Ok(())
        }
        Command::Inspect {
            image,
            cmdline,
            json,
        } => inspect(&image, cmdline.as_deref(), json),
        Command::WriteSlot {
            image,
            slot,
            data,
            verity,
            root_hash,
            version,
            os,
            cmdline,
        } => {
            let root_hash = RootHash::parse(&root_hash)?;
            let open = |p: &Path| -> anyhow::Result<(File, u64)> {
                let f = File::open(p).with_context(|| format!("open {}", p.display()))?;
                let len = f.metadata()?.len();
                Ok((f, len))
            };
            let (mut df, dlen) = open(&data)?;
            let (mut vf, vlen) = open(&verity)?;
            let mut dev = slots::open_rw(&image)?;
            slots::write_slot(
                &mut dev,
                &image,
                slot.into(),
                cmdline.as_deref(),
                SlotImage {
                    data: &mut df,
                    data_path: &data,
                    data_len: dlen,
                    verity: &mut vf,
                    verity_path: &verity,
                    verity_len: vlen,
                    root_hash,
                    os: &os,
                    version: &version,
                },
            )
            .map_err(refuse)?;
            println!(
                "wrote slot {} of {}: {os} {version}",
                Slot::from(slot),
                image.display()
            );
            Ok(())
        }
        Command::Gptprio { image, action } => gptprio(&image, action),
    }
}

fn gptprio(image: &Path, action: GptprioAction) -> anyhow::Result<()> {
    let dev = slots::open_rw(image)?;
    let mut gp = GptPrio::new(dev, image);
    for w in gp.table_health()?.warnings() {
        eprintln!("warning: {w}; the next write repairs it");
    }
    let result = match action {
        GptprioAction::Status => Ok(()),
        GptprioAction::Stage { slot, tries } => {
            let inv = Inventory::read_path(image, None)?;
            let info = inv.slot(slot.into());
            let target = BootTarget {
                version: info.version.clone().unwrap_or_default(),
                usr_hash: info.root_hash.map(|h| h.to_hex()).unwrap_or_default(),
                kernel: None,
                initrd: None,
                options: String::new(),
            };
            gp.stage(slot.into(), &target, tries)
        }
        GptprioAction::MarkGood { slot } => gp.mark_good(slot.into()),
        GptprioAction::MarkBad { slot } => gp.mark_bad(slot.into()),
        GptprioAction::Cancel { slot } => gp.cancel(slot.into()),
        GptprioAction::Rollback { to } => gp.rollback(to.into()),
        GptprioAction::BootAttempt => match gp.boot_attempt() {
            Ok(Some(s)) => {
                println!("booted slot {s}");
                Ok(())
            }
            Ok(None) => {
                println!("nothing bootable");
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    result.map_err(refuse)?;
    let state = gp.status()?;
    let fields = gp.fields()?;
    for (sb, f) in state.slots.iter().zip(fields) {
        println!(
            "slot {}: priority {} tries {} successful {}  {}",
            sb.slot,
            f.priority,
            f.tries,
            u8::from(f.successful),
            status_text(sb.status)
        );
    }
    println!("next boot: {}", next_text(state.next));
    Ok(())
}

fn status_text(s: BootStatus) -> String {
    match s {
        BootStatus::Absent => "absent".into(),
        BootStatus::Trying { tries_left, .. } => format!("trying ({tries_left} left)"),
        BootStatus::Good => "good".into(),
        BootStatus::Bad => "bad".into(),
    }
}

fn next_text(s: Option<Slot>) -> String {
    s.map_or_else(|| "none".to_string(), |s| s.to_string())
}

fn health_text(h: &CopyHealth) -> String {
    match h {
        CopyHealth::Valid => "valid".into(),
        CopyHealth::Stale => "stale".into(),
        CopyHealth::Corrupt(why) => format!("corrupt: {why}"),
    }
}

fn inspect(image: &Path, cmdline: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let inv = Inventory::read_path(image, cmdline)?;
    let dev = File::open(image).with_context(|| format!("open {}", image.display()))?;
    let gp = GptPrio::new(dev, image);
    // `File` is read-only here: GptPrio only reads for status.
    let boot = gp.status()?;
    let fields = gp.fields()?;
    let esp = esp_view(image, &inv);
    let mut parts: Vec<_> = vec![("esp", &inv.esp), ("root", &inv.root)];
    for s in &inv.slots {
        parts.push((if s.slot == Slot::A { "usr-a" } else { "usr-b" }, &s.data));
        parts.push((
            if s.slot == Slot::A {
                "usr-a-verity"
            } else {
                "usr-b-verity"
            },
            &s.verity,
        ));
    }
    parts.sort_by_key(|(_, p)| p.number);
    if as_json {
        let partitions: Vec<_> = parts
            .iter()
            .map(|(role, p)| {
                json!({
                    "number": p.number, "role": role, "type": p.type_guid.to_string(),
                    "uuid": p.uuid.to_string(), "label": p.label, "offset": p.offset,
                    "size": p.size, "attributes": format!("{:#018x}", p.attributes),
                })
            })
            .collect();
        let slots: Vec<_> = inv
            .slots
            .iter()
            .zip(fields)
            .zip(&boot.slots)
            .map(|((s, f), b)| {
                json!({
                    "slot": s.slot.to_string(), "state": s.state.as_str(), "os": s.os,
                    "version": s.version, "root_hash": s.root_hash.map(|h| h.to_hex()),
                    "booted": s.booted,
                    "gptprio": {"priority": f.priority, "tries": f.tries,
                                "successful": f.successful, "status": status_text(b.status)},
                })
            })
            .collect();
        let out = json!({
            "path": image, "gpt": {
                "primary": health_text(&inv.health.primary),
                "backup": health_text(&inv.health.backup),
                "warnings": inv.health.warnings(),
            },
            "partitions": partitions, "slots": slots,
            "booted": inv.booted.map(|s| s.to_string()),
            "esp": esp.to_json(),
            "next_boot": {
                "gptprio": boot.next.map(|s| s.to_string()),
                "bls": esp.next_entry(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("disk {}", image.display());
    println!(
        "gpt: primary {}, backup {}",
        health_text(&inv.health.primary),
        health_text(&inv.health.backup)
    );
    for w in inv.health.warnings() {
        println!("warning: {w}");
    }
    for (role, p) in &parts {
        println!(
            "  #{:<2} {:<13} {:>12} B @ {:<12} {} {:<24} attrs {:#018x}",
            p.number, role, p.size, p.offset, p.uuid, p.label, p.attributes
        );
    }
    for ((s, f), b) in inv.slots.iter().zip(fields).zip(&boot.slots) {
        println!(
            "slot {}: {}{} {} {}  gptprio: priority {} tries {} successful {} ({})",
            s.slot,
            s.state.as_str(),
            if s.booted { " (booted)" } else { "" },
            s.version.as_deref().unwrap_or("-"),
            s.root_hash
                .map(|h| h.to_hex())
                .unwrap_or_else(|| "-".into()),
            f.priority,
            f.tries,
            u8::from(f.successful),
            status_text(b.status)
        );
    }
    println!("next boot (gptprio): {}", next_text(boot.next));
    esp.print();
    Ok(())
}

/// What the ESP says: systemd-boot's entries in its boot order, or why they cannot be read
/// (an ESP that was never formatted is normal for a disk made by `basalt disk create`).
enum EspView {
    Entries(Vec<basalt_disk::bls::EntryInfo>),
    Unreadable(String),
}

fn esp_view(image: &Path, inv: &slots::Inventory) -> EspView {
    let read = || -> Result<_, basalt_disk::Error> {
        let esp = basalt_disk::FatImageEsp::open(image, inv.esp.offset, inv.esp.size)?;
        let bls = basalt_disk::BlsBackend::new(esp);
        let mut entries = bls.boot_order()?;
        // Entries systemd-boot would skip still belong in an inspection, after the others.
        entries.extend(
            bls.entries()?
                .into_iter()
                .filter(|e| e.unloadable.is_some()),
        );
        Ok(entries)
    };
    match read() {
        Ok(entries) => EspView::Entries(entries),
        Err(e) => EspView::Unreadable(e.to_string()),
    }
}

impl EspView {
    /// The entry file systemd-boot boots next: the first loadable one in its order.
    fn next_entry(&self) -> Option<String> {
        match self {
            EspView::Entries(v) => v
                .iter()
                .find(|e| e.unloadable.is_none())
                .map(|e| e.file.clone()),
            EspView::Unreadable(_) => None,
        }
    }

    fn entry_status(e: &basalt_disk::bls::EntryInfo) -> &'static str {
        match (&e.unloadable, &e.name.counter) {
            (Some(_), _) => "unloadable",
            (None, None) => "good",
            (None, Some(c)) if c.left == 0 => "bad",
            (None, Some(_)) => "trying",
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            EspView::Entries(v) => json!({
                "entries": v.iter().map(|e| json!({
                    "file": e.file,
                    "title": e.content.title,
                    "version": e.basalt.as_ref().map(|b| b.version.clone()),
                    "slot": e.basalt.as_ref().map(|b| b.slot.to_string()),
                    "tries_left": e.name.counter.as_ref().map(|c| c.left),
                    "tries_done": e.name.counter.as_ref().map(|c| c.done),
                    "status": Self::entry_status(e),
                })).collect::<Vec<_>>(),
            }),
            EspView::Unreadable(why) => json!({ "error": why }),
        }
    }

    fn print(&self) {
        match self {
            EspView::Entries(v) if v.is_empty() => println!("esp: no boot entries"),
            EspView::Entries(v) => {
                println!("esp boot entries (systemd-boot's order; the first boots next):");
                for e in v {
                    println!(
                        "  {:<28} {:<10} slot {:<2} {}",
                        e.file,
                        Self::entry_status(e),
                        e.basalt.as_ref().map_or("-".into(), |b| b.slot.to_string()),
                        e.content.title.as_deref().unwrap_or("")
                    );
                }
                println!(
                    "next boot (systemd-boot): {}",
                    self.next_entry().as_deref().unwrap_or("none")
                );
            }
            EspView::Unreadable(why) => println!("esp: boot entries not readable: {why}"),
        }
    }
}
