//! The one clock every time-dependent rule reads. Production uses the system clock; tests drive a
//! manual clock forward and everything waiting on it (retry back-off, deadlines) wakes up.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

/// A cheap, cloneable handle to the time source.
#[derive(Clone)]
pub struct Clock(Arc<Source>);

enum Source {
    System,
    Manual {
        now: Mutex<Timestamp>,
        changed: watch::Sender<Timestamp>,
    },
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Source::System => f.write_str("Clock::System"),
            Source::Manual { .. } => write!(f, "Clock::Manual({})", self.now()),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(Source::System))
    }

    /// A clock that stands still at `start` until [`Clock::advance`] or [`Clock::set`] moves it.
    pub fn manual(start: Timestamp) -> Self {
        let (changed, _) = watch::channel(start);
        Self(Arc::new(Source::Manual {
            now: Mutex::new(start),
            changed,
        }))
    }

    pub fn now(&self) -> Timestamp {
        match &*self.0 {
            Source::System => Timestamp::now(),
            Source::Manual { now, .. } => *now.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(&*self.0, Source::Manual { .. })
    }

    /// Moves a manual clock forward. Panics on the system clock: only tests drive time.
    pub fn advance(&self, by: SignedDuration) {
        let now = self.now() + by;
        self.set(now);
    }

    /// Sets a manual clock. Panics on the system clock.
    pub fn set(&self, to: Timestamp) {
        match &*self.0 {
            Source::System => panic!("the system clock cannot be set"),
            Source::Manual { now, changed } => {
                *now.lock().unwrap_or_else(|e| e.into_inner()) = to;
                changed.send_replace(to);
            }
        }
    }

    /// Waits until the clock reads `deadline` or later.
    pub async fn sleep_until(&self, deadline: Timestamp) {
        match &*self.0 {
            Source::System => {
                let wait = deadline.duration_since(Timestamp::now());
                if wait.is_positive() {
                    tokio::time::sleep(wait.unsigned_abs()).await;
                }
            }
            Source::Manual { changed, .. } => {
                let mut rx = changed.subscribe();
                // `wait_for` checks the current value first, so a deadline already passed returns at once.
                let _ = rx.wait_for(|now| *now >= deadline).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let start: Timestamp = "2026-11-20T09:00:00Z".parse().unwrap();
        let clock = Clock::manual(start);
        let deadline = start + SignedDuration::from_mins(5);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(deadline).await })
        };
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(SignedDuration::from_mins(5));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), deadline);
    }
}
