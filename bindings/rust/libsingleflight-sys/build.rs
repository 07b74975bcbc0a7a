//! Finds the installed libsingleflight through pkg-config and tells rustc how
//! to link it.  The pkg-config program is run directly, so the crate has no
//! build dependencies; PKG_CONFIG and PKG_CONFIG_PATH are honoured as usual.

use std::env;
use std::process::Command;

fn pkg_config(args: &[&str]) -> String {
    let program = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out = Command::new(&program)
        .args(args)
        .arg("singleflight")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {} (install pkg-config)", program, e));
    if !out.status.success() {
        panic!(
            "{} {:?} singleflight failed: {}\nSet PKG_CONFIG_PATH to the directory holding singleflight.pc.",
            program,
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("pkg-config printed non-UTF-8")
}

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-changed=build.rs");

    for flag in pkg_config(&["--libs"]).split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={}", dir);
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={}", lib);
        }
    }
    // Dependent crates (as DEP_SINGLEFLIGHT_INCLUDE) and this crate's header
    // test find the header here.
    let include = pkg_config(&["--variable=includedir"]);
    let include = include.trim();
    println!("cargo:include={}", include);
    println!("cargo:rustc-env=SINGLEFLIGHT_INCLUDE_DIR={}", include);
}
