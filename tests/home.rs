//! The home-lab installers against real disks and real systemd tooling:
//! `bramble image prepare-sd` on synthetic Raspberry Pi OS images built here
//! (an MBR table from sfdisk, a FAT32 boot partition from mkfs.vfat, an ext4
//! root from mkfs.ext4, loop devices from losetup), read back through this
//! test's own loop devices (the root mounted read-only, the boot partition
//! through mtools, as this VM's kernel has no vfat); `bramble install` into a
//! directory, its units checked by `systemd-analyze verify`.
//!
//! Needs root (loop devices, mounts). Every loop device and mount is
//! released by a guard, also when an assertion fails.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bramble::config::{WorkerFile, load_toml};
use sha2::{Digest, Sha256};

const TOKEN: &str = "BRAMBLE1.0123456789abcdef0123456789abcdef.abc123.0123456789abcdef";
const BROKER: &str = "mqtt://192.168.1.10:1883";

fn bramble(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bramble"))
        .args(args)
        .output()
        .expect("run bramble")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd}: {e} (scripts/deps installs the tools these tests need)")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device this test attached; detached on drop.
struct Loop(String);

impl Loop {
    fn attach(image: &Path, read_only: bool) -> Loop {
        let img = image.to_str().unwrap();
        let mut args = vec!["--find", "--show", "--partscan"];
        if read_only {
            args.push("--read-only");
        }
        args.push(img);
        let dev = Loop(sh("losetup", &args).trim().to_string());
        // Kernels without the MBR parser (minimal VM kernels, this one)
        // scan nothing: partx adds the partitions from user space.
        if !Path::new(&dev.part(1)).exists() {
            let _ = Command::new("partx").args(["--add", &dev.0]).output();
        }
        dev
    }
    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["--detach", &self.0]).status();
        // A detach is deferred while another program has the device open.
        let name = Path::new(&self.0).file_name().unwrap().to_owned();
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        for _ in 0..250 {
            if !backing.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A mount this test made; unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(dev: &str, dir: &Path, opts: &str) -> Mount {
        fs::create_dir_all(dir).unwrap();
        sh("mount", &["-o", opts, dev, dir.to_str().unwrap()]);
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.0).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        let _ = fs::remove_dir(&self.0);
    }
}

fn mtools(tool: &str, dev: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(tool)
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(dev)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (mtools package)"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fat_write(dev: &str, name: &str, bytes: &[u8], scratch: &Path) {
    let tmp = scratch.join("fat-upload");
    fs::write(&tmp, bytes).unwrap();
    mtools(
        "mcopy",
        dev,
        &["-o", tmp.to_str().unwrap(), &format!("::/{name}")],
    );
}

/// What the synthetic image holds.
struct Spec {
    cloud_init: bool,
    kernel: &'static str,
    user_data: Option<&'static str>,
    fstab_boot: Option<&'static str>,
    /// The root partition's filesystem: "ext4", or "vfat" for a bad layout.
    root_fs: &'static str,
    partitions: u32,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            cloud_init: false,
            kernel: "6.6.51+rpt-rpi-v8",
            user_data: None,
            fstab_boot: Some("/boot/firmware"),
            root_fs: "ext4",
            partitions: 2,
        }
    }
}

const CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet\n";

/// Builds a 128 MiB Raspberry Pi OS–shaped image: MBR, FAT32 `bootfs`
/// (cmdline.txt, config.txt), ext4 `rootfs` (merged /usr, the host's static
/// busybox as /bin/sh, fstab, /lib/modules/<kernel>).
fn build_image(dir: &Path, name: &str, spec: &Spec) -> PathBuf {
    let staging = dir.join(format!("{name}-rootfs"));
    let w = |p: &str, s: &[u8]| {
        let path = staging.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, s).unwrap();
    };
    let mut fstab =
        "proc            /proc           proc    defaults          0       0\n".to_string();
    if let Some(b) = spec.fstab_boot {
        fstab.push_str(&format!(
            "PARTUUID=4e639091-01  {b}  vfat    defaults          0       2\n"
        ));
    }
    fstab.push_str("PARTUUID=4e639091-02  /               ext4    defaults,noatime  0       1\n");
    w("etc/fstab", fstab.as_bytes());
    w("etc/hostname", b"raspberrypi\n");
    w(
        "etc/hosts",
        b"127.0.0.1\tlocalhost\n127.0.1.1\t\traspberrypi\n",
    );
    w("usr/bin/busybox", &fs::read("/bin/busybox").unwrap());
    fs::set_permissions(
        staging.join("usr/bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("busybox", staging.join("usr/bin/sh")).unwrap();
    std::os::unix::fs::symlink("usr/bin", staging.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", staging.join("lib")).unwrap();
    w(&format!("usr/lib/modules/{}/modules.dep", spec.kernel), b"");
    fs::create_dir_all(staging.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    if spec.cloud_init {
        w(
            "etc/cloud/cloud.cfg",
            b"datasource_list: [ NoCloud, None ]\n",
        );
    }

    let image = dir.join(format!("{name}.img"));
    let f = fs::File::create(&image).unwrap();
    f.set_len(128 << 20).unwrap();
    drop(f);
    let table = match spec.partitions {
        1 => "label: dos\nstart=8192, size=131072, type=c\n",
        _ => "label: dos\nstart=8192, size=131072, type=c\nstart=139264, type=83\n",
    };
    let mut child = Command::new("sfdisk")
        .args(["--quiet", image.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk package)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), table.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk");

    let lo = Loop::attach(&image, false);
    sh(
        "mkfs.vfat",
        &["-F", "32", "-s", "1", "-n", "bootfs", &lo.part(1)],
    );
    if spec.partitions > 1 {
        match spec.root_fs {
            "ext4" => sh(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-L",
                    "rootfs",
                    "-d",
                    staging.to_str().unwrap(),
                    &lo.part(2),
                ],
            ),
            other => sh(&format!("mkfs.{other}"), &[&lo.part(2)]),
        };
    }
    fat_write(&lo.part(1), "cmdline.txt", CMDLINE.as_bytes(), dir);
    fat_write(&lo.part(1), "config.txt", b"arm_64bit=1\n", dir);
    if let Some(u) = spec.user_data {
        fat_write(&lo.part(1), "user-data", u.as_bytes(), dir);
    }
    drop(lo);
    fs::remove_dir_all(staging).unwrap();
    image
}

/// One file of a snapshot: mode and content hash, or a link's target.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    File { mode: u32, sha: String },
    Link(String),
}

/// Everything on both partitions, read through a read-only loop mount.
struct Snapshot {
    boot: BTreeMap<String, Entry>,
    root: BTreeMap<String, Entry>,
    boot_text: BTreeMap<String, String>,
    worker_toml: Option<(WorkerFile, u32)>,
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            out.insert(
                rel,
                Entry::Link(fs::read_link(&p).unwrap().display().to_string()),
            );
        } else if m.is_dir() {
            if rel != "lost+found" {
                walk(base, &p, out);
            }
        } else {
            let sha = hex::encode(Sha256::digest(fs::read(&p).unwrap()));
            out.insert(
                rel,
                Entry::File {
                    mode: m.permissions().mode() & 0o7777,
                    sha,
                },
            );
        }
    }
}

fn snapshot(image: &Path, scratch: &Path) -> Snapshot {
    let lo = Loop::attach(image, true);
    let root = Mount::new(&lo.part(2), &scratch.join("snap-root"), "ro,noload");
    let mut s = Snapshot {
        boot: BTreeMap::new(),
        root: BTreeMap::new(),
        boot_text: BTreeMap::new(),
        worker_toml: None,
    };
    walk(&root.0, &root.0, &mut s.root);
    let listing = mtools("mdir", &lo.part(1), &["-/", "-b", "::/"]);
    for line in String::from_utf8(listing).unwrap().lines() {
        let Some(name) = line.strip_prefix("::/") else {
            continue;
        };
        if name.ends_with('/') {
            continue;
        }
        let bytes = mtools("mcopy", &lo.part(1), &["-n", line, "-"]);
        let sha = hex::encode(Sha256::digest(&bytes));
        s.boot
            .insert(name.to_string(), Entry::File { mode: 0, sha });
        s.boot_text.insert(
            name.to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        );
    }
    let toml = root.0.join("etc/bramble/worker.toml");
    if toml.exists() {
        let mode = fs::metadata(&toml).unwrap().permissions().mode() & 0o777;
        s.worker_toml = Some((load_toml(&toml).unwrap(), mode));
    }
    s
}

/// sha256sum's: hashing whole images in a debug build would take seconds each.
fn sha_file(p: &Path) -> String {
    let out = sh("sha256sum", &[p.to_str().unwrap()]);
    out.split_whitespace().next().unwrap().to_string()
}

fn busybox_sha() -> String {
    sha_file(Path::new("/bin/busybox"))
}

/// No loop device is left over `image`. A detach while another program
/// has the device open completes at its last close, so this waits a little.
fn assert_released(image: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let held = sh("losetup", &["--associated", image.to_str().unwrap()]);
        if held.trim().is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "loop devices left over: {held}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn assert_installed_worker(s: &Snapshot) {
    assert_eq!(
        s.root.get("usr/local/bin/bramble"),
        Some(&Entry::File {
            mode: 0o755,
            sha: busybox_sha()
        })
    );
    let unit = hex::encode(Sha256::digest(bramble::install::WORKER_UNIT));
    assert_eq!(
        s.root.get("etc/systemd/system/bramble-worker.service"),
        Some(&Entry::File {
            mode: 0o644,
            sha: unit
        })
    );
    assert_eq!(
        s.root
            .get("etc/systemd/system/multi-user.target.wants/bramble-worker.service"),
        Some(&Entry::Link(
            "/etc/systemd/system/bramble-worker.service".into()
        ))
    );
}

#[test]
fn prepare_sd_on_a_firstrun_image_then_its_block_device_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image(tmp.path(), "firstrun", &Spec::default());
    let out = bramble(&[
        "image",
        "prepare-sd",
        image.to_str().unwrap(),
        "--binary",
        "/bin/busybox",
        "--broker",
        BROKER,
        "--token",
        TOKEN,
        "--label",
        "room=attic",
        "--label",
        "bramble.io/board=pi4",
    ]);
    let text = ok(&out);
    assert!(text.contains("firstrun.sh"), "{text}");
    assert_released(&image);

    let first = snapshot(&image, tmp.path());
    assert_installed_worker(&first);
    let (file, mode) = first.worker_toml.clone().expect("worker.toml");
    assert_eq!(mode, 0o600, "the join token must not be world-readable");
    assert_eq!(file.broker, BROKER);
    assert_eq!(file.join_token.as_deref(), Some(TOKEN));
    assert_eq!(file.node_name, None);
    assert_eq!(file.labels["room"], "attic");
    assert_eq!(file.labels["bramble.io/board"], "pi4");

    // The boot partition: the kernel arguments ahead of the first run's, on one line.
    let cmdline = &first.boot_text["cmdline.txt"];
    assert_eq!(cmdline.lines().count(), 1, "{cmdline}");
    assert!(
        cmdline.starts_with(CMDLINE.trim_end()),
        "original arguments kept: {cmdline}"
    );
    assert!(
        cmdline.ends_with(
            " cgroup_enable=memory systemd.run=/boot/firmware/firstrun.sh \
             systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
        ),
        "{cmdline}"
    );
    let firstrun = &first.boot_text["firstrun.sh"];
    assert!(firstrun.starts_with("#!/bin/sh\n"));
    assert!(
        firstrun.contains(
            "/usr/local/bin/bramble install first-boot --node-name-rule 'pi-{serial}' # bramble-first-boot\n"
        ),
        "{firstrun}"
    );
    assert!(firstrun.contains("rm -f /boot/firmware/firstrun.sh\n"));
    assert!(!first.boot.contains_key("user-data"));
    // The rest of the boot partition is as it was.
    assert_eq!(first.boot_text["config.txt"], "arm_64bit=1\n");

    // Again, through the block device this time: nothing changes.
    let again = {
        let lo = Loop::attach(&image, false);
        ok(&bramble(&[
            "image",
            "prepare-sd",
            &lo.0,
            "--binary",
            "/bin/busybox",
            "--broker",
            BROKER,
            "--token",
            TOKEN,
            "--label",
            "room=attic",
            "--label",
            "bramble.io/board=pi4",
        ]))
    };
    assert!(again.contains("nothing changed"), "{again}");
    let second = snapshot(&image, tmp.path());
    assert_eq!(first.boot, second.boot);
    assert_eq!(first.root, second.root);
    assert_released(&image);

    // The Pi's first boot, played on the prepared root filesystem: the
    // binary's own `install first-boot` with the rule firstrun.sh names,
    // reading a board serial from a stand-in for /proc/cpuinfo.
    {
        let lo = Loop::attach(&image, false);
        let root = Mount::new(&lo.part(2), &tmp.path().join("pi-root"), "rw");
        fs::create_dir_all(root.0.join("proc")).unwrap();
        fs::write(
            root.0.join("proc/cpuinfo"),
            "Hardware\t: BCM2835\nSerial\t\t: 10000000c0ffee42\n",
        )
        .unwrap();
        let out = ok(&bramble(&[
            "install",
            "first-boot",
            "--root",
            root.0.to_str().unwrap(),
            "--node-name-rule",
            "pi-{serial}",
        ]));
        assert!(out.contains("pi-c0ffee42"), "{out}");
        let file: WorkerFile = load_toml(&root.0.join("etc/bramble/worker.toml")).unwrap();
        assert_eq!(file.node_name.as_deref(), Some("pi-c0ffee42"));
        assert_eq!(file.join_token.as_deref(), Some(TOKEN));
        assert_eq!(
            fs::metadata(root.0.join("etc/bramble/worker.toml"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_to_string(root.0.join("etc/hostname")).unwrap(),
            "pi-c0ffee42\n"
        );
        assert!(
            fs::read_to_string(root.0.join("etc/hosts"))
                .unwrap()
                .contains("127.0.1.1\tpi-c0ffee42\n")
        );
        let again = ok(&bramble(&[
            "install",
            "first-boot",
            "--root",
            root.0.to_str().unwrap(),
        ]));
        assert!(again.contains("already done"), "{again}");
        fs::remove_dir_all(root.0.join("proc")).unwrap();
    }
    assert_released(&image);

    // A device with a mounted partition is refused, and left alone.
    let lo = Loop::attach(&image, false);
    let mounted = Mount::new(&lo.part(2), &tmp.path().join("busy"), "ro,noload");
    let out = bramble(&[
        "image",
        "prepare-sd",
        &lo.0,
        "--binary",
        "/bin/busybox",
        "--broker",
        BROKER,
        "--token",
        TOKEN,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is mounted at") && err.contains("unmount it first"),
        "{err}"
    );
    drop(mounted);
    drop(lo);
    assert_released(&image);
}

#[test]
fn prepare_sd_on_a_cloud_init_xz_image_keeps_imagers_user_data() {
    let tmp = tempfile::tempdir().unwrap();
    let imager = "#cloud-config\n# written by Raspberry Pi Imager\nhostname: attic\nusers:\n  - name: pi\n    groups: users,adm,sudo\n";
    let image = build_image(
        tmp.path(),
        "cloud",
        &Spec {
            cloud_init: true,
            kernel: "6.12.34+rpt-rpi-2712",
            user_data: Some(imager),
            ..Spec::default()
        },
    );
    sh("xz", &["-0", "--threads=0", image.to_str().unwrap()]);
    let xz = tmp.path().join("cloud.img.xz");
    let xz_sha = sha_file(&xz);
    assert!(!image.exists());

    let prepare = |target: &Path| {
        bramble(&[
            "image",
            "prepare-sd",
            target.to_str().unwrap(),
            "--binary",
            "/bin/busybox",
            "--broker",
            BROKER,
            "--token",
            TOKEN,
            "--node-name",
            "pi-7",
        ])
    };
    let text = ok(&prepare(&xz));
    assert!(text.contains("cloud-init"), "{text}");
    assert_eq!(sha_file(&xz), xz_sha, "the .xz is the original, untouched");
    assert!(image.exists(), "unpacked beside the .xz");
    assert_released(&image);

    let first = snapshot(&image, tmp.path());
    assert_installed_worker(&first);
    let (file, mode) = first.worker_toml.clone().unwrap();
    assert_eq!(mode, 0o600);
    assert_eq!(file.node_name.as_deref(), Some("pi-7"));

    // Imager's user-data word for word, then our bootcmd (no rule: the name is fixed).
    let user_data = &first.boot_text["user-data"];
    assert!(user_data.starts_with(imager), "{user_data}");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(user_data).unwrap();
    assert_eq!(doc["hostname"], "attic");
    assert_eq!(
        doc["bootcmd"][0],
        serde_yaml_ng::to_value(["/usr/local/bin/bramble", "install", "first-boot"]).unwrap()
    );
    assert!(first.boot_text["meta-data"].starts_with("instance-id: "));
    let cmdline = &first.boot_text["cmdline.txt"];
    assert!(cmdline.ends_with(" cgroup_enable=memory\n"), "{cmdline}");
    assert!(
        !cmdline.contains("systemd.run"),
        "cloud-init images need no first run: {cmdline}"
    );
    assert!(!first.boot.contains_key("firstrun.sh"));

    // The unpacked image once more: unchanged; the .xz again without --force: refused.
    let again = ok(&prepare(&image));
    assert!(again.contains("nothing changed"), "{again}");
    let second = snapshot(&image, tmp.path());
    assert_eq!(first.boot, second.boot);
    assert_eq!(first.root, second.root);
    let out = prepare(&xz);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --force"));
    assert_released(&image);
}

#[test]
fn unexpected_layouts_and_wrong_binaries_leave_the_image_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let good = build_image(tmp.path(), "good", &Spec::default());

    // A binary for another architecture: an aarch64 ELF header.
    let arm = tmp.path().join("bramble-aarch64");
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2;
    h[5] = 1;
    h[18..20].copy_from_slice(&183u16.to_le_bytes());
    fs::write(&arm, &h).unwrap();
    // A binary larger than the root filesystem's free space (sparse).
    let huge = tmp.path().join("bramble-huge");
    let mut big = fs::read("/bin/busybox").unwrap();
    big.truncate(64);
    fs::write(&huge, &big).unwrap();
    fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();

    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        (good.clone(), arm, "is built for arm64 (aarch64) but"),
        (good.clone(), huge, "bytes free"),
        (
            build_image(
                tmp.path(),
                "one",
                &Spec {
                    partitions: 1,
                    ..Spec::default()
                },
            ),
            "/bin/busybox".into(),
            "1 partition(s)",
        ),
        (
            build_image(
                tmp.path(),
                "fatroot",
                &Spec {
                    root_fs: "vfat",
                    ..Spec::default()
                },
            ),
            "/bin/busybox".into(),
            "partition 2 is not ext4",
        ),
        (
            build_image(
                tmp.path(),
                "nofstab",
                &Spec {
                    fstab_boot: None,
                    ..Spec::default()
                },
            ),
            "/bin/busybox".into(),
            "mounts no vfat boot partition",
        ),
    ];
    for (image, binary, want) in cases {
        let before = sha_file(&image);
        let out = bramble(&[
            "image",
            "prepare-sd",
            image.to_str().unwrap(),
            "--binary",
            binary.to_str().unwrap(),
            "--broker",
            BROKER,
            "--token",
            TOKEN,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", image.display());
        assert!(err.contains(want), "{}: {err}", image.display());
        assert!(err.contains("nothing was written"), "{err}");
        assert_eq!(sha_file(&image), before, "{} changed", image.display());
        assert_released(&image);
    }

    // Bad settings are refused before the image is even opened.
    for (flag, value, want) in [
        ("--token", "BRAMBLE1.nope", "--token"),
        ("--broker", "http://x", "--broker"),
        ("--label", "no equals", "--label"),
        ("--node-name-rule", "pi-{cpu}", "unknown placeholder"),
    ] {
        let mut args = vec![
            "image",
            "prepare-sd",
            good.to_str().unwrap(),
            "--binary",
            "/bin/busybox",
            "--broker",
            BROKER,
            "--token",
            TOKEN,
        ];
        args.extend([flag, value]);
        let out = bramble(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{flag} {value}: {err}"
        );
    }
}

/// `systemd-analyze verify` on an installed unit, under `root` (which gets a
/// copy of this machine's unit directory, so targets resolve): it must pass
/// and print nothing (unknown keys and bad values are only warnings).
fn verify_unit(root: &Path, unit: &str) {
    let units = root.join("usr/lib/systemd");
    fs::create_dir_all(&units).unwrap();
    sh(
        "cp",
        &["-a", "/usr/lib/systemd/system", units.to_str().unwrap()],
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(format!("/etc/systemd/system/{unit}"))
        .output()
        .expect("systemd-analyze (systemd package)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "{unit}: {err}"
    );
}

#[test]
fn install_writes_units_and_settings_that_systemd_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let root_s = root.to_str().unwrap();
    let install_worker = || {
        bramble(&[
            "install",
            "worker",
            "--root",
            root_s,
            "--binary",
            "/bin/busybox",
            "--broker",
            BROKER,
            "--token",
            TOKEN,
            "--node-name",
            "pi-1",
            "--label",
            "room=attic",
        ])
    };
    let text = ok(&install_worker());
    assert!(text.contains("systemd was not asked"), "{text}");
    let toml = root.join("etc/bramble/worker.toml");
    let file: WorkerFile = load_toml(&toml).unwrap();
    assert_eq!(file.node_name.as_deref(), Some("pi-1"));
    assert_eq!(file.join_token.as_deref(), Some(TOKEN));
    assert_eq!(
        fs::metadata(&toml).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/systemd/system/bramble-worker.service")).unwrap(),
        bramble::install::WORKER_UNIT
    );
    assert_eq!(
        fs::read_link(
            root.join("etc/systemd/system/multi-user.target.wants/bramble-worker.service")
        )
        .unwrap(),
        Path::new("/etc/systemd/system/bramble-worker.service")
    );
    assert_eq!(sha_file(&root.join("usr/local/bin/bramble")), busybox_sha());
    // Again: nothing rewritten.
    let again = ok(&install_worker());
    assert!(!again.contains("wrote "), "{again}");
    // Without settings, the existing file is kept.
    ok(&bramble(&[
        "install",
        "worker",
        "--root",
        root_s,
        "--binary",
        "/bin/busybox",
    ]));
    assert_eq!(load_toml::<WorkerFile>(&toml).unwrap(), file);

    let text = ok(&bramble(&[
        "install",
        "master",
        "--root",
        root_s,
        "--binary",
        "/bin/busybox",
        "--with-worker",
        "--listen",
        "0.0.0.0:1883",
    ]));
    assert!(text.contains("bramble-master.service"), "{text}");
    let master: bramble::config::MasterFile =
        load_toml(&root.join("etc/bramble/master.toml")).unwrap();
    assert!(master.with_worker);
    assert_eq!(master.listen, Some("0.0.0.0:1883".parse().unwrap()));

    verify_unit(&root, "bramble-worker.service");
    verify_unit(&root, "bramble-master.service");

    // A worker with no settings file and no --broker: refused, naming the flag.
    let empty = tmp.path().join("empty");
    let out = bramble(&[
        "install",
        "worker",
        "--root",
        empty.to_str().unwrap(),
        "--binary",
        "/bin/busybox",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--broker"));
}

#[test]
fn verify_catches_a_broken_unit() {
    // The check above is only worth something if a broken unit fails it.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    ok(&bramble(&[
        "install",
        "worker",
        "--root",
        root.to_str().unwrap(),
        "--binary",
        "/bin/busybox",
        "--broker",
        BROKER,
        "--token",
        TOKEN,
    ]));
    let unit = root.join("etc/systemd/system/bramble-worker.service");
    let text = fs::read_to_string(&unit)
        .unwrap()
        .replace("KillMode=process", "KillMode=proces");
    fs::write(&unit, text).unwrap();
    let units = root.join("usr/lib/systemd");
    fs::create_dir_all(&units).unwrap();
    sh(
        "cp",
        &["-a", "/usr/lib/systemd/system", units.to_str().unwrap()],
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/bramble-worker.service")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kill mode"), "{err}");
}
