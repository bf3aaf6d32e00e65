//! The discord service against a fake Discord API.

mod delivery;
