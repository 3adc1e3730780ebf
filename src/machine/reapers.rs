//! The machines whose PID 1 this berthd reaps, and a way to wait until a reaper is done: its
//! PID 1 has exited, the exit status is recorded, the registration and the scope are gone (and
//! an ephemeral machine is removed). Waiters wake on that event instead of polling machined.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;

static REAPERS: Mutex<BTreeMap<String, watch::Receiver<bool>>> = Mutex::new(BTreeMap::new());

/// One machine's reaper, registered while it lives; dropping it tells the waiters.
#[derive(Debug)]
pub struct Reaping {
    name: String,
    done: watch::Sender<bool>,
}

/// Registers the reaper of machine `name` (replacing that of an earlier start).
pub fn begin(name: &str) -> Reaping {
    let (done, waiting) = watch::channel(false);
    if let Ok(mut reapers) = REAPERS.lock() {
        reapers.insert(name.to_owned(), waiting);
    }
    Reaping {
        name: name.to_owned(),
        done,
    }
}

impl Drop for Reaping {
    fn drop(&mut self) {
        if let Ok(mut reapers) = REAPERS.lock()
            && reapers
                .get(&self.name)
                .is_some_and(|r| r.same_channel(&self.done.subscribe()))
        {
            reapers.remove(&self.name);
        }
        self.done.send_replace(true);
    }
}

/// Resolves once the reaper of machine `name` is done; `None` when this berthd has none (the
/// machine isn't running, or it was started by an earlier berthd).
pub fn finished(name: &str) -> Option<impl Future<Output = ()> + Send + 'static> {
    let mut waiting = REAPERS.lock().ok()?.get(name)?.clone();
    Some(async move {
        // An error means the reaper is gone, which is done as well.
        let _ = waiting.wait_for(|done| *done).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_the_reaper_is_dropped() {
        let reaping = begin("reaped-one");
        let done = finished("reaped-one").expect("registered");
        let waiter = tokio::spawn(done);
        drop(reaping);
        waiter.await.expect("woke");
        assert!(finished("reaped-one").is_none());
    }

    #[tokio::test]
    async fn an_earlier_reaper_does_not_unregister_a_later_one() {
        let first = begin("restarted");
        let second = begin("restarted");
        drop(first);
        assert!(finished("restarted").is_some());
        drop(second);
        assert!(finished("restarted").is_none());
    }

    #[test]
    fn unknown_machines_have_no_reaper() {
        assert!(finished("never-started").is_none());
    }
}
