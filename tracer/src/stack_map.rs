//! The stacks a tool's key fields name: its kernel stack store (`STACKS`, filled by
//! tracer-ebpf's stacks.rs: frames by id) and the user stacks unwound in userspace
//! (`StackMap::intern`), read back as `Frames` for symbolization (stacks.rs).

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
};

use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use tracer_common::stacks::{STACK_NONE, StackFrames, TaskStackKey};

use crate::{output::comm_str, stacks::RawStack};

/// The frames behind one stack id of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frames {
    /// Not collected (the tool did not ask, or the task has no such stack).
    None,
    /// `bpf_get_stackid` failed with this errno, or the id is no longer in the map.
    Lost(i32),
    /// Instruction pointers, leaf first.
    Ips(Vec<u64>),
}

/// Stack ids from here up name stacks unwound in userspace (`StackMap::intern`), not
/// entries of the kernel's stack store (whose ids are below: `STACK_ID_MASK`).
pub const UNWOUND_BASE: i32 = 1 << 30;

/// A tool's kernel stack store (`STACKS`: frames by id, tracer-ebpf's stacks.rs), and the user stacks unwound in
/// userspace (`--call-graph dwarf`), under ids of their own from `UNWOUND_BASE`.
pub struct StackMap {
    map: BpfHashMap<MapData, u32, StackFrames>,
    /// Unwound stacks by id, and the id of each (one id per distinct stack).
    unwound: HashMap<i32, Rc<[u64]>>,
    unwound_ids: HashMap<Rc<[u64]>, i32>,
    next_unwound: i32,
    /// Frames of ids this map deleted (`remove_unreferenced`), kept while some key still names
    /// them: a kernel program can take an id just before its delete and store a key with it
    /// just after (the stack is stored again only at its next hit).
    deleted: HashMap<u32, Vec<u64>>,
}

impl StackMap {
    /// Takes the map called `name` out of the loaded object.
    pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<Self> {
        let map = ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("{name} map missing (build bug)"))?;
        Ok(Self {
            map: BpfHashMap::try_from(map)?,
            unwound: HashMap::new(),
            unwound_ids: HashMap::new(),
            next_unwound: UNWOUND_BASE,
            deleted: HashMap::new(),
        })
    }

    /// The id of an unwound user stack (frames leaf first), the same for the same frames.
    pub fn intern(&mut self, frames: Vec<u64>) -> i32 {
        let frames: Rc<[u64]> = frames.into();
        if let Some(&id) = self.unwound_ids.get(&frames) {
            return id;
        }
        let id = self.next_unwound;
        // Ids of stacks removed since are not reused: 2^30 distinct stacks is far off.
        self.next_unwound = self.next_unwound.checked_add(1).unwrap_or(UNWOUND_BASE);
        self.unwound_ids.insert(frames.clone(), id);
        self.unwound.insert(id, frames);
        id
    }

    /// Every stack id in the map now, and of the unwound stacks.
    pub fn ids(&self) -> Vec<i32> {
        self.map
            .keys()
            .filter_map(|id| id.ok())
            .map(|id| id as i32)
            .chain(self.unwound.keys().copied())
            .collect()
    }

    /// The frames for a key's stack field (an id, `STACK_NONE`, or a negative errno).
    pub fn frames(&self, id: i32) -> Frames {
        match id {
            STACK_NONE => Frames::None,
            id if id < 0 => Frames::Lost(-id),
            id if id >= UNWOUND_BASE => match self.unwound.get(&id) {
                Some(frames) => Frames::Ips(frames.to_vec()),
                None => Frames::Lost(libc::ENOENT),
            },
            id => match self.map.get(&(id as u32), 0) {
                Ok(frames) => Frames::Ips(ips_of(&frames)),
                Err(_) => match self.deleted.get(&(id as u32)) {
                    Some(ips) => Frames::Ips(ips.clone()),
                    None => Frames::Lost(libc::ENOENT),
                },
            },
        }
    }

    /// Deletes the stack ids among `candidates` that no key in `referenced` uses any more (the
    /// stacks of evicted keys, and those no key ever used). A stack id derives from the
    /// stack's hash, so should a task hit the same stack again, the kernel stores it again
    /// under the same id (or the next free one).
    ///
    /// `referenced` must be read after the keys were deleted. A key stored between that read
    /// and the delete of one of its ids still resolves: the frames of deleted ids are kept until
    /// a later call finds no key naming them.
    pub fn remove_unreferenced(
        &mut self,
        candidates: impl IntoIterator<Item = i32>,
        referenced: impl IntoIterator<Item = i32>,
    ) {
        let referenced: HashSet<i32> = referenced.into_iter().filter(|&id| id >= 0).collect();
        self.deleted
            .retain(|&id, _| referenced.contains(&(id as i32)));
        let candidates: HashSet<i32> = candidates
            .into_iter()
            .filter(|&id| id >= 0 && !referenced.contains(&id))
            .collect();
        for id in candidates {
            if id >= UNWOUND_BASE {
                if let Some(frames) = self.unwound.remove(&id) {
                    self.unwound_ids.remove(&frames);
                }
                continue;
            }
            let id = id as u32;
            let Ok(frames) = self.map.get(&id, 0) else {
                continue;
            };
            if self.map.remove(&id).is_ok() {
                self.deleted.insert(id, ips_of(&frames));
            }
        }
    }

    /// A per-task key (profile, kstacks, offcputime) with its value, ready to symbolize.
    pub fn raw(&self, key: &TaskStackKey, value: u64) -> RawStack {
        RawStack {
            comm: comm_str(&key.comm),
            pid: key.tgid,
            tid: key.pid,
            kernel: self.frames(key.kstack),
            user: self.frames(key.ustack),
            value,
        }
    }
}

/// A stored stack's frames, up to the first zero.
fn ips_of(frames: &StackFrames) -> Vec<u64> {
    frames.iter().copied().take_while(|&ip| ip != 0).collect()
}
