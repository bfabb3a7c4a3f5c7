//! The child partition states the management shell shows, and which
//! commands may move a partition between them.

/// A child partition's state as the root manages it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// Built (memory, VPs, image loaded) but never started.
    Created,
    /// Its VPs are scheduled.
    Running,
    /// Kept, but not scheduled.
    Paused,
    /// Powered off; memory kept; `start` boots it again.
    Stopped,
    /// Stopped by a fault (triple fault, bad access); memory kept for
    /// inspection until `stop`/`start` or `destroy`.
    Crashed,
}

impl ChildState {
    /// The lower-case name shown by `list`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Crashed => "crashed",
        }
    }
}

/// What a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Boot (or reboot) from the image.
    Start,
    /// Stop scheduling.
    Pause,
    /// Schedule again.
    Resume,
    /// Power off.
    Stop,
    /// Remove and return every page.
    Destroy,
}

impl Action {
    /// The command word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Stop => "stop",
            Self::Destroy => "destroy",
        }
    }
}

/// A refused transition, with the reason to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Current state.
    pub state: ChildState,
    /// Requested action.
    pub action: Action,
    /// Why, for the user.
    pub reason: &'static str,
}

/// The state after `action`, `None` if the partition is gone (destroy).
pub fn transition(state: ChildState, action: Action) -> Result<Option<ChildState>, Refusal> {
    use Action::*;
    use ChildState::*;
    let refuse = |reason| {
        Err(Refusal {
            state,
            action,
            reason,
        })
    };
    match (action, state) {
        (Start, Created | Stopped | Crashed) => Ok(Some(Running)),
        (Start, Running) => refuse("it is already running"),
        (Start, Paused) => refuse("it is paused: use 'resume'"),
        (Pause, Running) => Ok(Some(Paused)),
        (Pause, Paused) => refuse("it is already paused"),
        (Pause, _) => refuse("it is not running"),
        (Resume, Paused) => Ok(Some(Running)),
        (Resume, Running) => refuse("it is already running"),
        (Resume, _) => refuse("it is not paused: use 'start'"),
        (Stop, Running | Paused | Crashed) => Ok(Some(Stopped)),
        (Stop, Created | Stopped) => refuse("it is not running"),
        (Destroy, Created | Stopped | Crashed) => Ok(None),
        (Destroy, Running | Paused) => refuse("it is running: 'stop' it first"),
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::ChildState::*;
    use super::*;

    #[test]
    fn the_usual_paths() {
        assert_eq!(transition(Created, Start), Ok(Some(Running)));
        assert_eq!(transition(Running, Pause), Ok(Some(Paused)));
        assert_eq!(transition(Paused, Resume), Ok(Some(Running)));
        assert_eq!(transition(Running, Stop), Ok(Some(Stopped)));
        assert_eq!(transition(Stopped, Start), Ok(Some(Running)));
        assert_eq!(transition(Crashed, Stop), Ok(Some(Stopped)));
        assert_eq!(transition(Crashed, Destroy), Ok(None));
        assert_eq!(transition(Stopped, Destroy), Ok(None));
    }

    #[test]
    fn refusals_say_why() {
        let r = transition(Running, Resume).unwrap_err();
        assert_eq!(r.reason, "it is already running");
        assert_eq!(
            transition(Running, Destroy).unwrap_err().reason,
            "it is running: 'stop' it first"
        );
        assert!(transition(Stopped, Pause).is_err());
        assert!(transition(Created, Stop).is_err());
        assert!(transition(Paused, Start).is_err());
    }

    #[test]
    fn every_pair_is_decided() {
        let states = [Created, Running, Paused, Stopped, Crashed];
        let actions = [Start, Pause, Resume, Stop, Destroy];
        let mut allowed = 0;
        for s in states {
            for a in actions {
                if transition(s, a).is_ok() {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, 11);
    }
}
