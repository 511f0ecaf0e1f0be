//! One module per subcommand.
pub mod audit;
pub mod client;
pub mod inspect;
pub mod organisms;
pub mod scope;
pub mod task_vector;
pub mod worker;
