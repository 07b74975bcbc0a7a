//! Checks the hand-written declarations in src/lib.rs against the installed
//! singleflight.h.  The Rust declarations are translated into C++ types and
//! compared with the header's own with `std::is_same`, so a wrong parameter,
//! a missing `const` or a wrong return type fails to compile; constants and
//! struct layouts are compared with static_asserts whose expected values come
//! from the compiled Rust crate.  Finally the sets of names must be equal:
//! every function and constant of the header is declared, and nothing more.

use libsingleflight_sys as sys;
use std::collections::BTreeSet;
use std::mem::{align_of, size_of, MaybeUninit};
use std::path::PathBuf;
use std::process::Command;

const RUST_SOURCE: &str = include_str!("../src/lib.rs");

fn header_dir() -> PathBuf {
    PathBuf::from(env!("SINGLEFLIGHT_INCLUDE_DIR"))
}

/// The installed header with its comments removed, since they mention names
/// and contain semicolons.
fn header_text() -> String {
    let path = header_dir().join("singleflight.h");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {}", path.display(), e));
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("*/").expect("unterminated comment");
        out.push(' ');
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The C++ spelling of a Rust FFI type, east-const so that nested pointers
/// come out right (`*const *mut T` is `T * const *`).
fn c_type(rust: &str) -> String {
    let t = rust.trim();
    if let Some(inner) = t.strip_prefix("*mut ") {
        return format!("{} *", c_type(inner));
    }
    if let Some(inner) = t.strip_prefix("*const ") {
        return format!("{} const *", c_type(inner));
    }
    match t {
        "" | "()" => "void".to_string(),
        "c_int" => "int".to_string(),
        "c_uint" => "unsigned int".to_string(),
        "c_char" => "char".to_string(),
        "c_void" => "void".to_string(),
        "usize" => "size_t".to_string(),
        other if other.starts_with("sf_") => other.to_string(),
        other => panic!("no C spelling for Rust type {:?}", other),
    }
}

/// "name: ty, name: ty" into the C++ parameter list.
fn c_params(params: &str) -> String {
    let list: Vec<String> = params
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (_, ty) = p
                .split_once(':')
                .unwrap_or_else(|| panic!("parameter {:?}", p));
            c_type(ty)
        })
        .collect();
    if list.is_empty() {
        "void".to_string()
    } else {
        list.join(", ")
    }
}

/// `RET (*)(PARAMS)` from "(params) -> ret" or "(params)".
fn c_fn_pointer(sig: &str) -> String {
    let open = sig.find('(').expect("(");
    let close = sig.rfind(')').expect(")");
    let ret = sig[close + 1..].trim().trim_start_matches("->").trim();
    format!("{} (*)({})", c_type(ret), c_params(&sig[open + 1..close]))
}

struct Decls {
    functions: Vec<(String, String)>, // name, C++ pointer type
    callbacks: Vec<(String, String)>, // typedef name, C++ pointer type
    constants: BTreeSet<String>,
}

fn parse_rust(source: &str) -> Decls {
    let mut functions = Vec::new();
    let externs = &source[source.find("extern \"C\" {").expect("extern block")..];
    for item in externs.split(';') {
        let item = squash(item);
        if let Some(pos) = item.find("pub fn ") {
            let decl = &item[pos + "pub fn ".len()..];
            let name = decl[..decl.find('(').unwrap()].to_string();
            functions.push((name, c_fn_pointer(decl)));
        }
    }
    let mut callbacks = Vec::new();
    for item in source.split(';') {
        // rustfmt may break a long alias after `Option<` and add a comma.
        let item = squash(item).replace("< ", "<").replace(", >", ">");
        let start = match item.find("pub type ") {
            Some(p) => p,
            None => continue,
        };
        let item = &item[start..];
        if let Some(pos) = item.find("Option<unsafe extern \"C\" fn") {
            let name = item["pub type ".len()..item.find('=').unwrap()]
                .trim()
                .to_string();
            let sig = &item[pos + "Option<unsafe extern \"C\" fn".len()..item.rfind('>').unwrap()];
            callbacks.push((name, c_fn_pointer(sig)));
        }
    }
    let constants = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|l| l[..l.find(':').unwrap()].trim().to_string())
        .collect();
    Decls {
        functions,
        callbacks,
        constants,
    }
}

fn header_functions(header: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // Preprocessor lines define SF_API itself; only declarations count.
    let code: String = header
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{}\n", l))
        .collect();
    for stmt in code.split(';') {
        let stmt = squash(stmt);
        if let Some(pos) = stmt.find("SF_API ") {
            let decl = &stmt[pos..];
            if let Some(paren) = decl.find('(') {
                let head = decl[..paren].trim_end();
                let name = head.rsplit([' ', '*']).next().unwrap();
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Every SF_* value the header defines: macros and the status table's names.
/// Names ending in `_` are the header's private helpers.
fn header_constants(header: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in header.lines() {
        let line = line.trim_start();
        let rest = if let Some(r) = line.strip_prefix("#define ") {
            r
        } else if let Some(r) = line.strip_prefix("X(") {
            r
        } else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.starts_with("SF_")
            && !name.ends_with('_')
            && name != "SF_API"
            && name != "SF_STATUS_MAP"
        {
            names.insert(name);
        }
    }
    names
}

/// Offsets of a struct's fields, as the Rust compiler lays them out.
macro_rules! offsets {
    ($t:ty { $($f:ident),* }) => {{
        let v = MaybeUninit::<$t>::uninit();
        let base = v.as_ptr() as usize;
        // SAFETY: addr_of! takes a field's address without reading it.
        vec![$((stringify!($f), unsafe { std::ptr::addr_of!((*v.as_ptr()).$f) } as usize - base)),*]
    }};
}

fn integer_constants() -> Vec<(&'static str, i64)> {
    vec![
        ("SF_VERSION_MAJOR", sys::SF_VERSION_MAJOR as i64),
        ("SF_VERSION_MINOR", sys::SF_VERSION_MINOR as i64),
        ("SF_VERSION_PATCH", sys::SF_VERSION_PATCH as i64),
        ("SF_VERSION_NUMBER", sys::SF_VERSION_NUMBER as i64),
        ("SF_OK", sys::SF_OK as i64),
        ("SF_LEADER", sys::SF_LEADER as i64),
        ("SF_FOLLOWER", sys::SF_FOLLOWER as i64),
        ("SF_EINVAL", sys::SF_EINVAL as i64),
        ("SF_ENOMEM", sys::SF_ENOMEM as i64),
        ("SF_EPANIC", sys::SF_EPANIC as i64),
        ("SF_EGOEXIT", sys::SF_EGOEXIT as i64),
        ("SF_EDEADLK", sys::SF_EDEADLK as i64),
        ("SF_ETIMEDOUT", sys::SF_ETIMEDOUT as i64),
        ("SF_EBUSY", sys::SF_EBUSY as i64),
        ("SF_ESTATE", sys::SF_ESTATE as i64),
        ("SF_ECANCELED", sys::SF_ECANCELED as i64),
        ("SF_EPERM", sys::SF_EPERM as i64),
        ("SF_EINCOMPAT", sys::SF_EINCOMPAT as i64),
        (
            "SF_SHARED_OPTIONS_VERSION",
            sys::SF_SHARED_OPTIONS_VERSION as i64,
        ),
        ("SF_SHARED_RUN_UNSHARED", sys::SF_SHARED_RUN_UNSHARED as i64),
        (
            "SF_GROUP_OPTIONS_VERSION",
            sys::SF_GROUP_OPTIONS_VERSION as i64,
        ),
        ("SF_GROUP_STATS_VERSION", sys::SF_GROUP_STATS_VERSION as i64),
        ("SF_POOL_DEFAULT_THREADS", sys::SF_POOL_DEFAULT_THREADS as i64),
        ("SF_POOL_MAX_THREADS", sys::SF_POOL_MAX_THREADS as i64),
    ]
}

/// Names checked outside `integer_constants`, by the generated program.
const OTHER_CONSTANTS: &[&str] = &[
    "SF_VERSION_STRING",
    "SF_GROUP_OPTIONS_INIT",
    "SF_SHARED_OPTIONS_INIT",
];

fn generate_program(decls: &Decls) -> String {
    let mut p = String::from(
        "#include <singleflight.h>\n#include <cstddef>\n#include <cstdint>\n#include <cstring>\n#include <type_traits>\n\n",
    );
    for (name, ty) in &decls.functions {
        p += &format!(
            "static_assert(std::is_same<decltype(&{n}), {t}>::value, \"{n}: Rust declares {t}\");\n",
            n = name,
            t = ty
        );
    }
    for (name, ty) in &decls.callbacks {
        p += &format!(
            "static_assert(std::is_same<{n}, {t}>::value, \"{n}: Rust declares {t}\");\n",
            n = name,
            t = ty
        );
    }
    p += "static_assert(std::is_same<sf_i64, std::int64_t>::value, \"sf_i64\");\n";
    p += "static_assert(std::is_same<sf_u64, std::uint64_t>::value, \"sf_u64\");\n";
    p += &format!(
        "static_assert(sizeof(sf_status) == {}, \"sf_status size\");\n",
        size_of::<sys::sf_status>()
    );
    for (name, value) in integer_constants() {
        p += &format!(
            "static_assert((long long)({n}) == {v}LL, \"{n} is {v} in Rust\");\n",
            n = name,
            v = value
        );
    }
    let layouts = [
        (
            "sf_group_options",
            size_of::<sys::sf_group_options>(),
            align_of::<sys::sf_group_options>(),
            offsets!(sys::sf_group_options {
                version,
                shards,
                executor,
                executor_payload,
                max_threads
            }),
        ),
        (
            "sf_group_stats",
            size_of::<sys::sf_group_stats>(),
            align_of::<sys::sf_group_stats>(),
            offsets!(sys::sf_group_stats {
                version,
                calls,
                leaders,
                followers,
                panics,
                goexits,
                timeouts,
                forgets,
                in_flight,
                abandons,
                cancels,
                in_flight_high,
                arena_used,
                arena_high,
                processes
            }),
        ),
        (
            "sf_shared_options",
            size_of::<sys::sf_shared_options>(),
            align_of::<sys::sf_shared_options>(),
            offsets!(sys::sf_shared_options {
                version,
                flags,
                path,
                table_slots,
                max_processes,
                arena_bytes,
                max_value_bytes,
                mode
            }),
        ),
    ];
    for (name, size, align, fields) in layouts.iter() {
        p += &format!(
            "static_assert(sizeof({n}) == {s}, \"{n} size\");\n",
            n = name,
            s = size
        );
        p += &format!(
            "static_assert(alignof({n}) == {a}, \"{n} align\");\n",
            n = name,
            a = align
        );
        for (field, off) in fields {
            p += &format!(
                "static_assert(offsetof({n}, {f}) == {o}, \"{n}.{f} offset\");\n",
                n = name,
                f = field,
                o = off
            );
        }
    }
    let version = std::str::from_utf8(sys::SF_VERSION_STRING)
        .unwrap()
        .trim_end_matches('\0');
    let init = sys::SF_GROUP_OPTIONS_INIT;
    let shared = sys::SF_SHARED_OPTIONS_INIT;
    p += &format!(
        "int main() {{\n  if (std::strcmp(SF_VERSION_STRING, \"{v}\") != 0) return 1;\n  \
         sf_group_options o = SF_GROUP_OPTIONS_INIT;\n  \
         if (o.version != {ver}u || o.shards != {sh}u || (o.executor != NULL) != {ex} || (o.executor_payload != NULL) != {ep}) return 2;\n  \
         sf_shared_options s = SF_SHARED_OPTIONS_INIT;\n  \
         if (s.version != {sver}u || s.flags != {sfl}u || (s.path != NULL) != {spath} || s.table_slots != {sts}u || \
         s.max_processes != {smp}u || s.arena_bytes != {sab}u || s.max_value_bytes != {smv}u || s.mode != {smode}u) return 3;\n  \
         return 0;\n}}\n",
        v = version,
        ver = init.version,
        sh = init.shards,
        ex = init.executor.is_some(),
        ep = !init.executor_payload.is_null(),
        sver = shared.version,
        sfl = shared.flags,
        spath = !shared.path.is_null(),
        sts = shared.table_slots,
        smp = shared.max_processes,
        sab = shared.arena_bytes,
        smv = shared.max_value_bytes,
        smode = shared.mode
    );
    p
}

/// Compiles (and when it compiles, runs) the program; Err carries the output.
fn compile_and_run(program: &str, tag: &str) -> Result<(), String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join(format!("header_check_{}_{}.cpp", tag, std::process::id()));
    let exe = dir.join(format!("header_check_{}_{}", tag, std::process::id()));
    std::fs::write(&src, program).unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let out = Command::new(&cxx)
        .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(header_dir())
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {}", cxx, e));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let status = Command::new(&exe).status().unwrap();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&exe);
    if status.success() {
        Ok(())
    } else {
        Err(format!("runtime check failed: {}", status))
    }
}

#[test]
fn every_header_function_is_declared_and_nothing_else() {
    let header = header_functions(&header_text());
    let rust: BTreeSet<String> = parse_rust(RUST_SOURCE)
        .functions
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert!(
        header.len() >= 20,
        "found only {} functions in the header: parser broken?",
        header.len()
    );
    assert_eq!(rust, header, "functions: Rust vs header");
}

#[test]
fn every_header_constant_is_declared_and_checked() {
    let header = header_constants(&header_text());
    let rust = parse_rust(RUST_SOURCE).constants;
    assert_eq!(rust, header, "constants: Rust vs header");
    let mut checked: BTreeSet<String> = integer_constants()
        .into_iter()
        .map(|c| c.0.to_string())
        .collect();
    checked.extend(OTHER_CONSTANTS.iter().map(|s| s.to_string()));
    assert_eq!(checked, header, "constants this test compares vs header");
}

#[test]
fn declarations_match_the_header_types_values_and_layouts() {
    let decls = parse_rust(RUST_SOURCE);
    assert_eq!(
        decls.callbacks.len(),
        6,
        "callback typedefs found: {:?}",
        decls.callbacks
    );
    compile_and_run(&generate_program(&decls), "real").unwrap_or_else(|e| panic!("{}", e));
}

// The check above is only worth something if a mismatch fails it.
#[test]
fn a_wrong_declaration_is_caught() {
    let wrong = RUST_SOURCE.replace(
        "pub fn sf_call_finish(call: *mut sf_call, error: c_int) -> c_int;",
        "pub fn sf_call_finish(call: *const sf_call, error: c_int) -> c_int;",
    );
    assert_ne!(
        wrong, RUST_SOURCE,
        "the declaration to corrupt was not found"
    );
    let err = compile_and_run(&generate_program(&parse_rust(&wrong)), "wrong")
        .expect_err("a const-qualified call handle must not match the header");
    assert!(
        err.contains("sf_call_finish"),
        "compiler output should name the function: {}",
        err
    );
}

#[test]
fn linked_library_matches_the_header_version() {
    // SAFETY: both functions take no arguments and return static data.
    let (number, string) = unsafe {
        (
            sys::sf_version_number(),
            std::ffi::CStr::from_ptr(sys::sf_version_string()),
        )
    };
    assert_eq!(number, sys::SF_VERSION_NUMBER);
    assert_eq!(string.to_bytes_with_nul(), sys::SF_VERSION_STRING);
}
