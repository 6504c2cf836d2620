//! The pure part of preparing a Raspberry Pi OS image: what goes into the
//! boot partition's `cmdline.txt`, `user-data` (cloud-init) or `firstrun.sh`,
//! which kernel arguments a kernel needs for containers, and which
//! architecture an ELF program is for. Text in, text out; [`super::sd`] does
//! the reading and writing.

use std::fmt;

/// The kernel argument that turns the memory cgroup controller on. Raspberry
/// Pi kernels build it in but switch it off: at boot from 4.9 to 4.18 and
/// from 5.4 on (on 6.12 through `cgroup_disable=memory` in the device tree's
/// bootargs, which `cmdline.txt` comes after and overrides).
pub const CGROUP_ENABLE_MEMORY: &str = "cgroup_enable=memory";
/// The older spelling the 4.9–4.14 kernels read.
pub const CGROUP_MEMORY_1: &str = "cgroup_memory=1";
/// Dropped from `cmdline.txt`: it would switch the controller off again.
pub const CGROUP_DISABLE_MEMORY: &str = "cgroup_disable=memory";

/// A kernel's version, from a `/lib/modules/<version>` directory name such as
/// `6.6.51+rpt-rpi-v8` or `5.10.103-v7l+`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    pub fn parse(dir_name: &str) -> Option<KernelVersion> {
        let mut it = dir_name.split(['.', '-', '+']);
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The arguments the image's kernels need so that pods get memory limits.
/// Every kernel the image holds counts (a Pi boots the one for its model);
/// with none recognised, both arguments (each is harmless where unneeded).
pub fn cgroup_args(kernels: &[KernelVersion]) -> Vec<&'static str> {
    let v = |major, minor| KernelVersion { major, minor };
    let mut enable = kernels.is_empty();
    let mut legacy = kernels.is_empty();
    for &k in kernels {
        if k < v(4, 19) {
            enable = true;
            legacy = true;
        } else if k >= v(5, 4) {
            enable = true;
        }
    }
    let mut args = Vec::new();
    if enable {
        args.push(CGROUP_ENABLE_MEMORY);
    }
    if legacy {
        args.push(CGROUP_MEMORY_1);
    }
    args
}

/// Kernel arguments that make the first boot run a script and reboot (what
/// Raspberry Pi Imager writes for its `firstrun.sh`).
pub fn firstrun_args(script: &str) -> [String; 3] {
    [
        format!("systemd.run={script}"),
        "systemd.run_success_action=reboot".to_string(),
        "systemd.unit=kernel-command-line.target".to_string(),
    ]
}

/// The script `systemd.run=` names in `cmdline`, if any.
pub fn firstrun_script(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|t| t.strip_prefix("systemd.run="))
}

/// `cmdline.txt` with `add` present once each and `cgroup_disable=memory`
/// gone; when `firstrun` is given and no `systemd.run=` is there yet, its
/// arguments are appended. Added arguments go before any `systemd.run`
/// argument, because a first-run script removes everything from
/// ` systemd.run` to the end of the line when it finishes (Imager's does).
/// The file stays one line. Idempotent.
pub fn edit_cmdline(cmdline: &str, add: &[&str], firstrun: Option<&str>) -> String {
    let mut tokens: Vec<String> = cmdline
        .split_whitespace()
        .filter(|t| *t != CGROUP_DISABLE_MEMORY)
        .map(str::to_string)
        .collect();
    for arg in add {
        if tokens.iter().any(|t| t == arg) {
            continue;
        }
        let at = tokens
            .iter()
            .position(|t| t.starts_with("systemd.run"))
            .unwrap_or(tokens.len());
        tokens.insert(at, arg.to_string());
    }
    if let Some(script) = firstrun
        && firstrun_script(cmdline).is_none()
    {
        tokens.extend(firstrun_args(script));
    }
    let mut out = tokens.join(" ");
    out.push('\n');
    out
}

/// Marks the line of a first-run script (or the cloud-init command) that is
/// ours, so a second preparation replaces it instead of adding another.
pub const MARKER: &str = "bramble-first-boot";

/// The command the first boot runs: names the node by `rule` when the
/// settings file has no name yet, and sets the hostname to the node's name.
pub fn first_boot_command(rule: Option<&str>) -> Vec<String> {
    let mut cmd = vec![
        super::BINARY_PATH.to_string(),
        "install".to_string(),
        "first-boot".to_string(),
    ];
    if let Some(rule) = rule {
        cmd.push("--node-name-rule".to_string());
        cmd.push(rule.to_string());
    }
    cmd
}

/// Quotes a word for `sh` (single quotes; words here never hold one, but a
/// quote is escaped anyway).
fn sh_quote(word: &str) -> String {
    if word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.=".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn first_boot_line(rule: Option<&str>) -> String {
    let cmd: Vec<String> = first_boot_command(rule)
        .iter()
        .map(|w| sh_quote(w))
        .collect();
    format!("{} # {MARKER}", cmd.join(" "))
}

/// A `firstrun.sh` of our own, for images without cloud-init: runs the first
/// boot step once, then removes itself and its kernel arguments (so the next
/// boot is a normal one) and lets systemd reboot.
pub fn firstrun_sh(boot_path: &str, script: &str, rule: Option<&str>) -> String {
    format!(
        "#!/bin/sh\n\
         # Written by `bramble image prepare-sd`. The first boot runs it once\n\
         # (systemd.run= in cmdline.txt), then reboots into a normal boot.\n\
         set +e\n\
         {line}\n\
         rm -f {script}\n\
         sed -i 's| systemd\\.run=[^ ]*||g; s| systemd\\.run_success_action=[^ ]*||g; \
         s| systemd\\.unit=kernel-command-line\\.target||g' {boot}/cmdline.txt\n\
         exit 0\n",
        line = first_boot_line(rule),
        script = sh_quote(script),
        boot = sh_quote(boot_path),
    )
}

/// An existing first-run script (Imager's, or ours from an earlier
/// preparation) with our line in it exactly once, right after the `#!` line,
/// so it runs before the script's own cleanup. Idempotent.
pub fn merge_firstrun(existing: &str, rule: Option<&str>) -> Result<String, String> {
    if !existing.starts_with("#!") {
        return Err("not a script (no #! line)".into());
    }
    let ours = first_boot_line(rule);
    let is_ours = |l: &str| l.trim_end().ends_with(&format!("# {MARKER}"));
    let mut lines: Vec<&str> = existing.lines().collect();
    // Where our line already is, it stays (replaced if the rule changed).
    let at = lines.iter().position(|l| is_ours(l)).unwrap_or(1);
    lines.retain(|l| !is_ours(l));
    lines.insert(at.min(lines.len()), &ours);
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

/// `user-data` for cloud-init with our first-boot command in `bootcmd`
/// (which runs early on every boot, before the network is online and so
/// before the worker starts; the command does its work once). An existing
/// file keeps its content: without a `bootcmd` our block is appended as text
/// (comments survive); with one, the document is rewritten with our entry
/// replaced or added. Idempotent.
pub fn merge_user_data(existing: Option<&str>, rule: Option<&str>) -> Result<String, String> {
    use serde_yaml_ng::Value;
    let ours = Value::Sequence(
        first_boot_command(rule)
            .into_iter()
            .map(Value::String)
            .collect(),
    );
    let is_ours = |v: &Value| {
        v.as_sequence().is_some_and(|s| {
            s.first().and_then(Value::as_str) == Some(super::BINARY_PATH)
                && s.get(2).and_then(Value::as_str) == Some("first-boot")
        })
    };
    let block = {
        let words: Vec<String> = first_boot_command(rule)
            .iter()
            .map(|w| format!("'{}'", w.replace('\'', "''")))
            .collect();
        format!(
            "# {MARKER}: name this node and set its hostname before the worker starts\n\
             bootcmd:\n  - [{}]\n",
            words.join(", ")
        )
    };
    let Some(text) = existing.filter(|t| !t.trim().is_empty()) else {
        return Ok(format!("#cloud-config\n{block}"));
    };
    if !text.starts_with("#cloud-config") {
        return Err("not a #cloud-config document (add the bootcmd by hand)".into());
    }
    let mut doc: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if doc.is_null() {
        doc = Value::Mapping(Default::default());
    }
    let map = doc
        .as_mapping_mut()
        .ok_or("the document is not a mapping of cloud-config keys")?;
    match map.get_mut("bootcmd") {
        None => {
            let mut out = text.to_string();
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&block);
            Ok(out)
        }
        Some(Value::Sequence(cmds)) => {
            if cmds.iter().filter(|c| is_ours(c)).count() == 1 && cmds.contains(&ours) {
                return Ok(text.to_string());
            }
            cmds.retain(|c| !is_ours(c));
            cmds.push(ours);
            let body = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
            Ok(format!("#cloud-config\n{body}"))
        }
        Some(_) => Err("bootcmd is not a list".into()),
    }
}

/// cloud-init's NoCloud source needs a `meta-data` beside `user-data`.
pub fn meta_data(instance: &str) -> String {
    format!("instance-id: {instance}\n")
}

/// What an ELF program runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfArch {
    pub class64: bool,
    pub machine: u16,
}

impl ElfArch {
    /// Reads the identification and machine fields of an ELF header.
    pub fn parse(header: &[u8]) -> Option<ElfArch> {
        if header.len() < 20 || &header[..4] != b"\x7fELF" {
            return None;
        }
        let class64 = match header[4] {
            1 => false,
            2 => true,
            _ => return None,
        };
        let machine = match header[5] {
            1 => u16::from_le_bytes([header[18], header[19]]),
            2 => u16::from_be_bytes([header[18], header[19]]),
            _ => return None,
        };
        Some(ElfArch { class64, machine })
    }
}

impl fmt::Display for ElfArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.machine, self.class64) {
            (183, true) => f.write_str("arm64 (aarch64)"),
            (40, false) => f.write_str("32-bit ARM (armhf)"),
            (62, true) => f.write_str("amd64 (x86_64)"),
            (3, false) => f.write_str("386 (i686)"),
            (243, true) => f.write_str("riscv64"),
            (m, c) => write!(f, "ELF machine {m} ({}-bit)", if c { 64 } else { 32 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI_CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 \
         rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n";

    fn k(s: &str) -> KernelVersion {
        KernelVersion::parse(s).unwrap()
    }

    #[test]
    fn kernel_versions_from_module_dirs() {
        assert_eq!(k("6.6.51+rpt-rpi-v8"), KernelVersion { major: 6, minor: 6 });
        assert_eq!(
            k("5.10.103-v7l+"),
            KernelVersion {
                major: 5,
                minor: 10
            }
        );
        assert_eq!(
            k("4.19.97+"),
            KernelVersion {
                major: 4,
                minor: 19
            }
        );
        assert_eq!(KernelVersion::parse("extramodules"), None);
    }

    #[test]
    fn cgroup_args_by_kernel() {
        assert_eq!(cgroup_args(&[]), [CGROUP_ENABLE_MEMORY, CGROUP_MEMORY_1]);
        assert_eq!(
            cgroup_args(&[k("4.14.98-v7+")]),
            [CGROUP_ENABLE_MEMORY, CGROUP_MEMORY_1]
        );
        assert!(cgroup_args(&[k("4.19.97-v7l+")]).is_empty());
        assert_eq!(cgroup_args(&[k("5.4.51-v7l+")]), [CGROUP_ENABLE_MEMORY]);
        assert_eq!(
            cgroup_args(&[k("6.12.34+rpt-rpi-2712"), k("6.12.34+rpt-rpi-v8")]),
            [CGROUP_ENABLE_MEMORY]
        );
        // One image, two kernels of different eras: the union.
        assert_eq!(
            cgroup_args(&[k("4.19.97+"), k("5.10.103-v7l+")]),
            [CGROUP_ENABLE_MEMORY]
        );
    }

    #[test]
    fn cmdline_edit_is_idempotent_and_keeps_one_line() {
        let once = edit_cmdline(PI_CMDLINE, &[CGROUP_ENABLE_MEMORY, CGROUP_MEMORY_1], None);
        assert!(
            once.ends_with("firstboot cgroup_enable=memory cgroup_memory=1\n"),
            "{once}"
        );
        assert_eq!(once.lines().count(), 1);
        assert_eq!(
            edit_cmdline(&once, &[CGROUP_ENABLE_MEMORY, CGROUP_MEMORY_1], None),
            once
        );
        let off = edit_cmdline(
            "root=x cgroup_disable=memory rootwait",
            &[CGROUP_ENABLE_MEMORY],
            None,
        );
        assert_eq!(off, "root=x rootwait cgroup_enable=memory\n");
    }

    #[test]
    fn cmdline_args_go_before_a_first_run_and_survive_its_cleanup() {
        let with_run = edit_cmdline(
            PI_CMDLINE,
            &[CGROUP_ENABLE_MEMORY],
            Some("/boot/firmware/firstrun.sh"),
        );
        assert!(
            with_run.contains(
                "cgroup_enable=memory systemd.run=/boot/firmware/firstrun.sh \
                 systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
            ),
            "{with_run}"
        );
        assert_eq!(
            firstrun_script(&with_run),
            Some("/boot/firmware/firstrun.sh")
        );
        // Again: nothing doubles.
        let again = edit_cmdline(
            &with_run,
            &[CGROUP_ENABLE_MEMORY],
            Some("/boot/firmware/firstrun.sh"),
        );
        assert_eq!(again, with_run);
        // Imager's cleanup (`sed 's| systemd.run.*||g'`) keeps our argument.
        let cleaned = &with_run[..with_run.find(" systemd.run").unwrap()];
        assert!(cleaned.ends_with(CGROUP_ENABLE_MEMORY));
        // An existing Imager first run gets our args in front of it, and no second run.
        let imager = "root=x rootwait systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target";
        let merged = edit_cmdline(
            imager,
            &[CGROUP_ENABLE_MEMORY],
            Some("/boot/firmware/firstrun.sh"),
        );
        assert_eq!(
            merged,
            "root=x rootwait cgroup_enable=memory systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
        );
    }

    #[test]
    fn firstrun_script_cleans_up_after_itself() {
        let sh = firstrun_sh(
            "/boot/firmware",
            "/boot/firmware/firstrun.sh",
            Some("pi-{serial}"),
        );
        assert!(sh.starts_with("#!/bin/sh\n"));
        assert!(sh.contains(
            "/usr/local/bin/bramble install first-boot --node-name-rule 'pi-{serial}' # bramble-first-boot\n"
        ));
        assert!(sh.contains("rm -f /boot/firmware/firstrun.sh\n"));
        // Preparing again merges into our own script: nothing moves.
        assert_eq!(merge_firstrun(&sh, Some("pi-{serial}")).unwrap(), sh);
        let renamed = merge_firstrun(&sh, Some("node-{mac}")).unwrap();
        assert_eq!(renamed, sh.replace("pi-{serial}", "node-{mac}"));
        // The cleanup, run through sed, removes exactly our three arguments.
        let line = edit_cmdline(
            "root=x rootwait",
            &[CGROUP_ENABLE_MEMORY],
            Some("/boot/firmware/firstrun.sh"),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline.txt");
        std::fs::write(&path, &line).unwrap();
        let sed = sh.lines().find(|l| l.starts_with("sed ")).unwrap();
        let script = sed.replace("/boot/firmware/cmdline.txt", &path.display().to_string());
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "root=x rootwait cgroup_enable=memory\n"
        );
    }

    #[test]
    fn merging_into_imagers_firstrun_keeps_it_and_adds_us_once() {
        let imager = "#!/bin/bash\n\nset +e\n\nCURRENT_HOSTNAME=`cat /etc/hostname | tr -d \" \\t\\n\\r\"`\nrm -f /boot/firstrun.sh\nsed -i 's| systemd.run.*||g' /boot/cmdline.txt\nexit 0\n";
        let once = merge_firstrun(imager, Some("pi-{mac}")).unwrap();
        assert!(once.starts_with("#!/bin/bash\n/usr/local/bin/bramble install first-boot --node-name-rule 'pi-{mac}' # bramble-first-boot\n"), "{once}");
        assert!(once.ends_with("sed -i 's| systemd.run.*||g' /boot/cmdline.txt\nexit 0\n"));
        assert_eq!(merge_firstrun(&once, Some("pi-{mac}")).unwrap(), once);
        // A new rule replaces the old line.
        let changed = merge_firstrun(&once, None).unwrap();
        assert_eq!(changed.matches(MARKER).count(), 1);
        assert!(!changed.contains("pi-{mac}"));
        assert!(merge_firstrun("echo hi\n", None).is_err());
    }

    #[test]
    fn user_data_new_appended_and_rewritten() {
        let fresh = merge_user_data(None, Some("pi-{serial}")).unwrap();
        assert!(fresh.starts_with("#cloud-config\n"));
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&fresh).unwrap();
        assert_eq!(
            v["bootcmd"][0],
            serde_yaml_ng::to_value(first_boot_command(Some("pi-{serial}"))).unwrap()
        );
        assert_eq!(
            merge_user_data(Some(&fresh), Some("pi-{serial}")).unwrap(),
            fresh
        );

        // Imager's user-data: kept word for word, comments included.
        let imager = "#cloud-config\n# set by Imager\nhostname: attic\nusers:\n  - name: pi\n    groups: users,adm\n";
        let merged = merge_user_data(Some(imager), None).unwrap();
        assert!(merged.starts_with(imager), "{merged}");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&merged).unwrap();
        assert_eq!(v["hostname"], "attic");
        assert_eq!(v["bootcmd"].as_sequence().unwrap().len(), 1);
        assert_eq!(merge_user_data(Some(&merged), None).unwrap(), merged);

        // An existing bootcmd: ours replaced, theirs kept.
        let theirs = "#cloud-config\nbootcmd:\n  - echo hello\n  - [/usr/local/bin/bramble, install, first-boot, --node-name-rule, old]\n";
        let merged = merge_user_data(Some(theirs), Some("pi-{serial}")).unwrap();
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&merged).unwrap();
        let cmds = v["bootcmd"].as_sequence().unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0], "echo hello");
        assert_eq!(cmds[1][4], "pi-{serial}");
        assert_eq!(
            merge_user_data(Some(&merged), Some("pi-{serial}")).unwrap(),
            merged
        );

        assert!(merge_user_data(Some("#!/bin/sh\necho\n"), None).is_err());
        assert!(merge_user_data(Some("#cloud-config\nbootcmd: 3\n"), None).is_err());
    }

    #[test]
    fn elf_headers() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18..20].copy_from_slice(&183u16.to_le_bytes());
        let a = ElfArch::parse(&h).unwrap();
        assert_eq!(
            a,
            ElfArch {
                class64: true,
                machine: 183
            }
        );
        assert_eq!(a.to_string(), "arm64 (aarch64)");
        h[4] = 1;
        h[18..20].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(
            ElfArch::parse(&h).unwrap().to_string(),
            "32-bit ARM (armhf)"
        );
        assert_eq!(ElfArch::parse(b"#!/bin/sh\n echo hello there"), None);
        let me = std::fs::read("/proc/self/exe").unwrap();
        let host = ElfArch::parse(&me[..64]).unwrap();
        assert_eq!(host.class64, cfg!(target_pointer_width = "64"));
    }
}
