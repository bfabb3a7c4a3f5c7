//! Fixed-capacity slots with ids that are never reused while the table lives,
//! so a stale id from a guest can never name a newer partition.

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// Every slot is taken.
    Full,
    /// Ids ran out (after 2^64 creations).
    IdsExhausted,
}

/// Up to `N` values of `T`, each under a `u64` id.
pub struct Table<T, const N: usize> {
    slots: [Option<(u64, T)>; N],
    next_id: u64,
}

impl<T, const N: usize> Table<T, N> {
    /// An empty table handing out ids from `first_id`.
    pub const fn new(first_id: u64) -> Self {
        Self {
            slots: [const { None }; N],
            next_id: first_id,
        }
    }

    /// Insert, returning the new id.
    pub fn insert(&mut self, value: T) -> Result<u64, TableError> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(TableError::Full)?;
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(TableError::IdsExhausted)?;
        *slot = Some((id, value));
        Ok(id)
    }

    /// The value under `id`.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.slots
            .iter()
            .flatten()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v)
    }

    /// The value under `id`, mutably.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.slots
            .iter_mut()
            .flatten()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v)
    }

    /// Remove and return the value under `id`.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| matches!(s, Some((i, _)) if *i == id))?;
        slot.take().map(|(_, v)| v)
    }

    /// Live entries.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slots.iter().flatten().map(|(i, v)| (*i, v))
    }

    /// Live entries, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        self.slots.iter_mut().flatten().map(|(i, v)| (*i, v))
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_not_reused_and_capacity_is_enforced() {
        let mut t: Table<&str, 2> = Table::new(2);
        let a = t.insert("a").unwrap();
        let b = t.insert("b").unwrap();
        assert_eq!((a, b), (2, 3));
        assert_eq!(t.insert("c"), Err(TableError::Full));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.remove(a), None);
        let c = t.insert("c").unwrap();
        assert_eq!(c, 4, "a freed slot gets a fresh id");
        assert_eq!(t.get(a), None);
        assert_eq!(t.get(c), Some(&"c"));
        assert_eq!(t.len(), 2);
        *t.get_mut(b).unwrap() = "B";
        assert_eq!(t.iter().map(|(_, v)| *v).collect::<Vec<_>>().len(), 2);
        assert_eq!(t.get(b), Some(&"B"));
    }
}
