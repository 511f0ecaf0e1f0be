//! The service processes that need no libtorch (API, scheduler, migrations, tokens), shared by
//! the `neurodiff-server` binary (the api and scheduler images) and the `neurodiff` CLI.
pub mod admin;
pub mod api;
pub mod policy;
pub mod services;
pub mod signals;
