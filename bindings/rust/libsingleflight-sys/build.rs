//! Links libsingleflight in one of two ways.
//!
//! * Default: the installed library, found with the `pkg-config` crate
//!   (PKG_CONFIG_PATH, PKG_CONFIG_SYSROOT_DIR, static linking with
//!   PKG_CONFIG_ALL_STATIC or SINGLEFLIGHT_STATIC, cross builds: all as
//!   that crate documents).
//! * Feature `bundled`: the C library's own sources (core/ and capi/),
//!   compiled with the `cc` crate into a static library linked into the
//!   crate.  A packaged crate carries them in csrc/ (staged there by
//!   scripts/package-rust-crates.sh before `cargo package`); a build from a
//!   checkout uses the repository's core/ and capi/ directly.
//!
//! Either way the header's directory is published to dependent crates as
//! DEP_SINGLEFLIGHT_INCLUDE and to this crate's header test as
//! SINGLEFLIGHT_INCLUDE_DIR.

use std::path::PathBuf;
#[cfg(feature = "bundled")]
use std::{env, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // cc is an optional build dependency, so the choice is made when this
    // script is compiled.
    #[cfg(feature = "bundled")]
    let include = bundled();
    #[cfg(not(feature = "bundled"))]
    let include = system();
    println!("cargo:include={}", include.display());
    println!(
        "cargo:rustc-env=SINGLEFLIGHT_INCLUDE_DIR={}",
        include.display()
    );
}

/// The installed library: pkg-config prints the link flags (and reruns the
/// build when its environment changes); the header is in its includedir.
#[cfg(not(feature = "bundled"))]
fn system() -> PathBuf {
    let lib = pkg_config::Config::new()
        .probe("singleflight")
        .unwrap_or_else(|e| {
            panic!(
                "{}\nSet PKG_CONFIG_PATH to the directory holding singleflight.pc, \
                 or enable the `bundled` feature to compile the library into the crate.",
                e
            )
        });
    pkg_config::get_variable("singleflight", "includedir")
        .ok()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| lib.include_paths.first().cloned())
        .expect("pkg-config names no include directory for singleflight")
}

/// The directory holding core/ and capi/: csrc/ in a packaged crate, else
/// the checkout this crate sits in (bindings/rust/libsingleflight-sys).
#[cfg(feature = "bundled")]
fn source_root() -> PathBuf {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let staged = manifest.join("csrc");
    let checkout = manifest.join("../../..");
    for root in [staged, checkout] {
        if root.join("capi/include/singleflight.h").is_file() && root.join("core").is_dir() {
            return root;
        }
    }
    panic!(
        "feature `bundled`: no C sources in {}/csrc (scripts/package-rust-crates.sh puts them \
         there) nor in the checkout above it",
        manifest.display()
    );
}

/// The .cpp files of a directory, sorted so that the build is reproducible.
#[cfg(feature = "bundled")]
fn cpp_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {}", dir.display(), e))
        .map(|entry| entry.expect("reading a directory entry").path())
        .filter(|p| p.extension().map_or(false, |e| e == "cpp"))
        .collect();
    files.sort();
    files
}

#[cfg(feature = "bundled")]
fn bundled() -> PathBuf {
    let root = source_root();
    let include = root.join("capi/include");
    let mut build = cc::Build::new();
    // As CMakeLists.txt builds the static library: C++17 without GNU
    // extensions, threads, hidden symbols except the API, SF_STATIC (no
    // dllimport/dllexport on Windows); no testing hooks.
    build
        .cpp(true)
        .flag("-std=c++17")
        .flag("-pthread")
        .flag_if_supported("-fvisibility=hidden")
        .flag_if_supported("-fvisibility-inlines-hidden")
        .define("SF_STATIC", None)
        .include(&include)
        .include(&root)
        .warnings(false);
    for dir in ["core", "capi"] {
        for file in cpp_files(&root.join(dir)) {
            println!("cargo:rerun-if-changed={}", file.display());
            build.file(file);
        }
    }
    for dir in ["core", "capi", "capi/include"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // cc links the C++ standard library (libstdc++ with GCC) after the
    // static library; the core's threads need libpthread too.
    build.compile("singleflight_bundled");
    println!("cargo:rustc-link-lib=pthread");
    include
}
