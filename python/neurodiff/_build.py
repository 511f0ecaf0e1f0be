"""The versions this package is built for; tests check them against pyproject.toml, the torch
pin in scripts/requirements.txt and the workspace's version in Cargo.toml."""

# The Rust workspace's version, with the torch it links as a local label.
PACKAGE_VERSION = "0.1.0+torch2.11.0"
# tch 0.24.0 links libtorch 2.11.0 exactly.
TORCH_VERSION = "2.11.0"
