//! sea-orm entities, one module per table. Times are Unix milliseconds; enums are stored as the proto
//! enum's number so the database and the API share one vocabulary.

pub mod application;
pub mod audit_checkpoint;
pub mod audit_checkpoint_key;
pub mod audit_record;
pub mod key;
pub mod key_version;
pub mod refresh_token;
pub mod registration;
pub mod revocation;
pub mod rewrap_job;
pub mod signing_key;
pub mod tenant;
