//! The operator's commands: `inspect` (what SQL and Redis hold for a few ids) and `tail` (the
//! output and DLQ topics as they are written).

pub mod inspect;
pub mod tail;
