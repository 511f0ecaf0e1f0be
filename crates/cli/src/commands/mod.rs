//! One module per subcommand.
pub mod admin;
pub mod audit;
pub mod inspect;
pub mod organisms;
pub mod serve;
pub mod task_vector;
