//! Identifiers the core hands out.

use std::fmt;

macro_rules! id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id!(
    /// A participant in a room (one session of one identity).
    ParticipantId,
    "P"
);
id!(
    /// A published track (an up track).
    TrackId,
    "T"
);
id!(
    /// One subscriber's copy of one track (a down track).
    DownTrackId,
    "D"
);
