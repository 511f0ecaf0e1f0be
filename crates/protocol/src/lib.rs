//! Serde types shared by every NeuroDiff process (audit specs, shard specs, result schema).
//! No libtorch here: the API and scheduler link this crate without linking torch.
