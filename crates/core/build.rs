//! Bakes libtorch's directory into test binaries (rpath) and keeps libtorch_cuda linked.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // The linker would drop libtorch_cuda as "unused": nothing references its symbols
        // directly, yet without it `tch::Cuda::is_available()` is false even on a GPU.
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
