//! GGUF files (llama.cpp's single-file checkpoints), read without libtorch: the header, the
//! metadata and the tensor table checked against the file ([`reader`]), and ggml's block types
//! dequantized to f32 ([`quant`]). `neurodiff-core` decodes checkpoints with it; the scheduler's
//! scans use it to tell a complete GGUF from one still being written.
pub mod quant;
pub mod reader;
