use std::collections::{HashMap, HashSet, VecDeque};

use super::{
    scheduler::{PauseReason, Tracker},
    ConnectionEvents,
};

/// State of disconnected clients, by client id, each with the order it was saved in. Every
/// client id that ever disconnected has an entry until it connects again: with `max` set, the
/// oldest entries are dropped beyond it, so a peer cycling through client ids cannot grow it
/// without bound.
pub struct Graveyard {
    connections: HashMap<String, (u64, SavedState)>,
    saved: u64,
    max: Option<usize>,
}

impl Graveyard {
    pub fn new(max: Option<usize>) -> Graveyard {
        Graveyard {
            connections: HashMap::new(),
            saved: 0,
            max,
        }
    }

    /// Add a new connection.
    /// Return tracker of previous connection if connection id already exists
    pub fn retrieve(&mut self, id: &str) -> Option<SavedState> {
        self.connections.remove(id).map(|(_, state)| state)
    }

    /// Save connection tracker. Returns the client ids whose saved state was dropped to stay
    /// within `max` (the oldest saved).
    pub fn save(
        &mut self,
        mut tracker: Tracker,
        subscriptions: HashSet<String>,
        metrics: ConnectionEvents,
        unacked_pubrels: VecDeque<u16>,
    ) -> Vec<String> {
        tracker.pause(PauseReason::Busy);
        let id = tracker.id.clone();

        self.saved += 1;
        self.connections.insert(
            id,
            (
                self.saved,
                SavedState {
                    tracker,
                    subscriptions,
                    metrics,
                    unacked_pubrels,
                },
            ),
        );

        let mut dropped = Vec::new();
        let Some(max) = self.max else {
            return dropped;
        };
        while self.connections.len() > max {
            let oldest = self
                .connections
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    self.connections.remove(&id);
                    dropped.push(id);
                }
                None => break,
            }
        }
        dropped
    }
}

#[derive(Debug)]
pub struct SavedState {
    pub tracker: Tracker,
    pub subscriptions: HashSet<String>,
    pub metrics: ConnectionEvents,
    // used for pubrel in qos2
    pub unacked_pubrels: VecDeque<u16>,
}

impl SavedState {
    pub fn new(client_id: String) -> SavedState {
        SavedState {
            tracker: Tracker::new(client_id),
            subscriptions: HashSet::new(),
            metrics: ConnectionEvents::default(),
            unacked_pubrels: VecDeque::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(g: &mut Graveyard, id: &str) -> Vec<String> {
        g.save(
            Tracker::new(id.to_owned()),
            HashSet::new(),
            ConnectionEvents::default(),
            VecDeque::new(),
        )
    }

    #[test]
    fn the_oldest_saved_sessions_are_dropped_beyond_the_maximum() {
        let mut g = Graveyard::new(Some(2));
        assert!(save(&mut g, "a").is_empty());
        assert!(save(&mut g, "b").is_empty());
        assert!(save(&mut g, "a").is_empty(), "saved again: still two");
        assert_eq!(save(&mut g, "c"), ["b"]);
        assert!(g.retrieve("b").is_none());
        assert!(g.retrieve("a").is_some());
        assert!(g.retrieve("c").is_some());
        let mut unbounded = Graveyard::new(None);
        for i in 0..100 {
            assert!(save(&mut unbounded, &i.to_string()).is_empty());
        }
    }
}
