//! What can be checked of the cross builds on an x86_64 machine with no ARM
//! toolchain and no ARM std: the configuration in `cross/` parses and names
//! both Pi targets, the release profile is size-optimised and stripped,
//! rustc knows the targets, and the source has none of the assumptions that
//! compile on x86_64 only (arch-gated code, inline assembly, raw syscall
//! numbers, 32-bit `statvfs` counters multiplied unwidened, `timespec`
//! fields assigned as `i64`).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGETS: [(&str, &str, &str, &str); 2] = [
    // (triple, Debian arch, GNU triple, target_arch)
    (
        "aarch64-unknown-linux-gnu",
        "arm64",
        "aarch64-linux-gnu",
        "aarch64",
    ),
    (
        "armv7-unknown-linux-gnueabihf",
        "armhf",
        "arm-linux-gnueabihf",
        "arm",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn toml_file(rel: &str) -> toml::Table {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn cross_toml_installs_libseccomp_for_each_target() {
    let t = toml_file("cross/Cross.toml");
    let passthrough = t["build"]["env"]["passthrough"].as_array().unwrap();
    assert!(
        passthrough
            .iter()
            .any(|v| v.as_str() == Some("LIBSECCOMP_LIB_PATH"))
    );
    for (triple, deb, _, _) in TARGETS {
        let pre: Vec<&str> = t["target"][triple]["pre-build"]
            .as_array()
            .unwrap_or_else(|| panic!("{triple}: no pre-build"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            pre.iter()
                .any(|c| c.contains(&format!("--add-architecture {deb}"))),
            "{triple}"
        );
        assert!(
            pre.iter()
                .any(|c| c.contains(&format!("libseccomp-dev:{deb}"))),
            "{triple}"
        );
    }
}

#[test]
fn cargo_config_names_a_linker_and_c_compiler_per_target() {
    let t = toml_file("cross/config.toml");
    for (triple, _, gnu, _) in TARGETS {
        assert_eq!(
            t["target"][triple]["linker"].as_str(),
            Some(format!("{gnu}-gcc").as_str()),
            "{triple}"
        );
        let cc = format!("CC_{}", triple.replace('-', "_"));
        assert_eq!(t["env"][&cc].as_str(), Some(format!("{gnu}-gcc").as_str()));
    }
}

#[test]
fn release_profile_is_small_and_stripped() {
    let t = toml_file("Cargo.toml");
    let release = &t["profile"]["release"];
    assert!(
        matches!(release["opt-level"].as_str(), Some("s" | "z")),
        "{release:?}"
    );
    assert!(
        release["strip"].as_bool() == Some(true) || release["strip"].as_str() == Some("symbols"),
        "{release:?}"
    );
    assert!(
        release
            .get("lto")
            .is_some_and(|l| l.as_str() == Some("fat") || l.as_bool() == Some(true))
    );
    assert_eq!(release["codegen-units"].as_integer(), Some(1));
}

#[test]
fn the_build_script_parses_and_knows_both_targets() {
    let script = root().join("cross/build");
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n cross/build");
    let out = Command::new(&script).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for (triple, ..) in TARGETS {
        assert!(help.contains(triple), "{help}");
    }
    let out = Command::new(&script).arg("riscv").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn rustc_knows_the_targets() {
    // `--print cfg` needs no std for the target: it says what `cfg`s the
    // code will see there (32-bit pointers on armv7).
    for (triple, _, _, arch) in TARGETS {
        let out = Command::new("rustc")
            .args(["--print", "cfg", "--target", triple])
            .output()
            .unwrap();
        let cfg = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{triple}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(cfg.contains(&format!("target_arch=\"{arch}\"")), "{cfg}");
        assert!(cfg.contains("target_os=\"linux\""), "{cfg}");
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// One finding: a pattern that compiles or behaves right on x86_64 only.
fn portability_problems(line: &str) -> Option<&'static str> {
    let code = line.split("//").next().unwrap_or_default();
    if code.contains("target_arch") {
        return Some("code gated on target_arch: give aarch64 and arm their own path, or none");
    }
    if ["asm!", "global_asm!", "std::arch::", "core::arch::"]
        .iter()
        .any(|p| code.contains(p))
    {
        return Some("architecture-specific code (assembly, intrinsics)");
    }
    if let Some(i) = code.find("syscall(") {
        let args = &code[i + "syscall(".len()..];
        if !args.trim_start().starts_with("libc::SYS_") && !args.trim().is_empty() {
            return Some("a raw syscall number: use libc::SYS_* (numbers differ per architecture)");
        }
    }
    // statvfs's counters are c_ulong (32-bit) on armv7: multiplying them
    // unwidened fails to compile there, or overflows past 4 GiB.
    let statvfs = [
        ".blocks()",
        ".blocks_available()",
        ".blocks_free()",
        ".fragment_size()",
        ".block_size()",
    ];
    if statvfs.iter().any(|p| code.contains(p))
        && !["as u64", "as i64", "as u128", "u64::from(", "i64::from("]
            .iter()
            .any(|w| code.contains(w))
    {
        return Some("statvfs counters are 32-bit on armv7: widen them (as u64) before arithmetic");
    }
    // time_t and c_long are 32-bit on armv7.
    if (code.contains("tv_sec:") || code.contains("tv_nsec:"))
        && !["as libc::time_t", "as libc::c_long", "as _"]
            .iter()
            .any(|w| code.contains(w))
    {
        return Some("timespec fields are 32-bit on armv7: cast to libc::time_t / c_long");
    }
    if code.contains("x86_64-linux-gnu") {
        return Some("an x86_64 library path");
    }
    None
}

#[test]
fn the_source_has_no_x86_only_assumptions() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if let Some(why) = portability_problems(line) {
                problems.push(format!(
                    "{}:{}: {why}\n    {}",
                    f.strip_prefix(root()).unwrap().display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_checks_catch_what_they_are_for() {
    for bad in [
        "#[cfg(target_arch = \"x86_64\")]",
        "unsafe { std::arch::asm!(\"nop\") }",
        "let r = unsafe { libc::syscall(434, pid, 0) };",
        "total: st.blocks() * frag,",
        "let t = libc::timespec { tv_sec: secs as i64, tv_nsec: 0 };",
        "let lib = \"/usr/lib/x86_64-linux-gnu/libseccomp.so\";",
    ] {
        assert!(portability_problems(bad).is_some(), "missed: {bad}");
    }
    for good in [
        "let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };",
        "total: st.blocks() as u64 * frag,",
        "\"x86_64\" => \"amd64\",",
        "// target_arch is fine in a comment",
    ] {
        assert!(portability_problems(good).is_none(), "flagged: {good}");
    }
}
