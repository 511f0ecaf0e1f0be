//! One module per subcommand.
pub mod admin;
pub mod audit;
pub mod client;
pub mod inspect;
pub mod organisms;
pub mod serve;
pub mod services;
pub mod task_vector;
