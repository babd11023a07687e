//! The faults the daemon shows (FAULT/CLEAR on the sinks, `status`, metrics) as a set that
//! returns the event each change causes; the caller emits it. FAULT DISK has several causes,
//! each with its own end: it is on while any cause is.

use std::collections::HashSet;

use crate::alert::{Cleared, Event, FaultKind};

/// What FAULT DISK is on for; each cause ends on its own (free space back, a write that works).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum DiskCause {
    /// Free space under `disk.min_free_mb`.
    Space,
    /// The journal cannot be written.
    Journal,
    /// The verdict feed cannot be written.
    Feed,
    /// A file cannot be moved to done/ or quarantine/.
    Move,
    /// A series result cannot be written.
    Result,
    /// The export spool cannot be written.
    Spool,
}

/// The faults on now, and FAULT DISK's causes.
#[derive(Debug, Default)]
pub(super) struct Faults {
    on: HashSet<FaultKind>,
    disk: HashSet<DiskCause>,
}

impl Faults {
    /// Turns `kind` on or off; the event to emit when that changes anything.
    pub(super) fn set(&mut self, kind: FaultKind, on: bool) -> Option<Event> {
        let changed = if on { self.on.insert(kind) } else { self.on.remove(&kind) };
        changed.then_some(if on { Event::Fault { kind } } else { Event::Clear { what: Cleared::Fault(kind) } })
    }

    /// Turns one cause of FAULT DISK on or off; the event when FAULT DISK itself changes.
    pub(super) fn disk(&mut self, cause: DiskCause, on: bool) -> Option<Event> {
        let changed = if on { self.disk.insert(cause) } else { self.disk.remove(&cause) };
        if changed {
            let any = !self.disk.is_empty();
            self.set(FaultKind::Disk, any)
        } else {
            None
        }
    }

    /// Whether `kind` is on.
    pub(super) fn has(&self, kind: FaultKind) -> bool {
        self.on.contains(&kind)
    }

    /// Whether FAULT DISK is on for `cause`.
    pub(super) fn disk_for(&self, cause: DiskCause) -> bool {
        self.disk.contains(&cause)
    }

    /// The faults on, sorted by wire name.
    pub(super) fn kinds(&self) -> Vec<FaultKind> {
        let mut v: Vec<FaultKind> = self.on.iter().copied().collect();
        v.sort_by_key(|k| k.name());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_stays_on_while_any_cause_is_and_each_change_is_one_event() {
        let mut f = Faults::default();
        assert!(matches!(f.disk(DiskCause::Space, true), Some(Event::Fault { kind: FaultKind::Disk })));
        assert!(f.disk(DiskCause::Journal, true).is_none(), "already on");
        assert!(f.disk(DiskCause::Space, false).is_none(), "the journal still holds it");
        assert!(f.has(FaultKind::Disk) && f.disk_for(DiskCause::Journal) && !f.disk_for(DiskCause::Space));
        assert!(matches!(f.disk(DiskCause::Journal, false), Some(Event::Clear { what: Cleared::Fault(FaultKind::Disk) })));
        assert!(f.set(FaultKind::Export, false).is_none(), "off already: nothing to say");
        assert!(f.set(FaultKind::Export, true).is_some() && f.set(FaultKind::Export, true).is_none());
        assert!(f.set(FaultKind::Engine, true).is_some());
        assert_eq!(f.kinds(), vec![FaultKind::Engine, FaultKind::Export]);
    }
}
