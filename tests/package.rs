//! The Debian package (deploy/debian/build-deb.sh, `cargo xtask package`): built from the
//! binary under test, read back with dpkg-deb as dpkg would see it (fields, files,
//! owners, modes, conffiles, maintainer scripts), unpacked into a fresh root whose
//! binary checks the installed config, and whose unit passes `systemd-analyze verify`.

use std::{path::Path, process::Command};

use edge_tests::{edge_node_bin, privileged, unique};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the package from the binary under test into `dir`; its path.
fn build(dir: &Path) -> std::path::PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/debian/build-deb.sh");
    let deb = run(Command::new(script)
        .arg(edge_node_bin())
        .arg(dir.join("out"))
        .env("EDGE_DEB_COMPRESSION", "none"));
    let deb = Path::new(deb.trim()).to_path_buf();
    assert!(deb.is_file(), "{deb:?}");
    deb
}

#[test]
fn the_debian_package_installs_a_checked_config_a_unit_and_a_dedicated_user() {
    let dir = TempDir(std::env::temp_dir().join(unique("edge-deb-")));
    let deb = build(&dir.0);
    let deb = deb.as_path();

    let field = |name: &str| run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name));
    assert_eq!(field("Package").trim(), "edge-node");
    assert_eq!(field("Version").trim(), env!("CARGO_PKG_VERSION"));
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture").trim(), arch.trim());

    // Files, owned by root, with the modes an operator relies on: the config (it may
    // hold secrets) unreadable by others.
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/edge-node"),
        ("-rw-r--r--", "./lib/systemd/system/edge-node.service"),
        ("-rw-r-----", "./etc/edge-node/edge-node.toml"),
        ("-rw-r--r--", "./usr/share/doc/edge-node/copyright"),
    ] {
        let line = contents
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} missing:\n{contents}"));
        assert!(line.starts_with(&format!("{mode} root/root")), "{line}");
    }

    // The control files: the config is a conffile (upgrades keep edits); the scripts
    // are valid shell and create the dedicated user.
    let control = dir.0.join("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/edge-node/edge-node.toml");
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("useradd --system") && postinst.contains("chgrp edge-node"),
        "{postinst}"
    );

    // Unpacked into a fresh root: the installed binary checks the installed config.
    let root = dir.0.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    let bin = root.join("usr/bin/edge-node");
    let config = root.join("etc/edge-node/edge-node.toml");
    let checked = run(Command::new(&bin).arg("check").arg("-c").arg(&config));
    assert!(checked.contains("OK"), "{checked}");

    // The unit runs the installed paths as the dedicated user, and verifies.
    let unit_path = root.join("lib/systemd/system/edge-node.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "User=edge-node",
        "ExecStart=/usr/bin/edge-node -c /etc/edge-node/edge-node.toml",
        "AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} not in:\n{unit}");
    }
    assert!(!unit.contains("/usr/local/"), "{unit}");
    let verify = dir.0.join("edge-node.service");
    std::fs::write(
        &verify,
        unit.replace("/usr/bin/edge-node", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&verify)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The package's `postinst`, run for real in a mount namespace of its own over a copy of
/// /etc (the host's users are never touched): it makes the group and the user once
/// (also when the group exists already), gives the config to the group on the first
/// install, and leaves an operator's mode alone on an upgrade.
#[test]
fn the_maintainer_script_makes_the_user_once_and_keeps_an_operators_modes() {
    if !privileged("the_maintainer_script_makes_the_user_once_and_keeps_an_operators_modes") {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(unique("edge-postinst-")));
    let deb = build(&dir.0);
    let control = dir.0.join("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control));
    let etc = dir.0.join("etc");
    let script = format!(
        "set -e\n\
         cp -a /etc/. {etc}/ && mount --bind {etc} /etc\n\
         for u in edge-node; do userdel $u 2>/dev/null || true; groupdel $u 2>/dev/null || true; done\n\
         groupadd --system edge-node\n\
         mkdir -p /etc/edge-node && echo 'x = 1' > /etc/edge-node/edge-node.toml\n\
         chmod 0644 /etc/edge-node/edge-node.toml\n\
         sh {postinst} configure ''\n\
         echo \"first: $(stat -c '%a %G' /etc/edge-node/edge-node.toml)\"\n\
         echo \"user: $(getent passwd edge-node | cut -d: -f1,6,7)\"\n\
         chmod 0600 /etc/edge-node/edge-node.toml\n\
         sh {postinst} configure 0.1.0\n\
         echo \"upgrade: $(stat -c '%a %G' /etc/edge-node/edge-node.toml)\"\n\
         rm /etc/edge-node/edge-node.toml\n\
         sh {postinst} configure 0.1.0\n\
         echo users: $(getent passwd | grep -c '^edge-node:')\n",
        etc = etc.display(),
        postinst = control.join("postinst").display(),
    );
    std::fs::create_dir_all(&etc).unwrap();
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(&script));
    assert!(out.contains("first: 640 edge-node"), "{out}");
    assert!(
        out.contains("user: edge-node:/var/lib/edge-node:/usr/sbin/nologin"),
        "{out}"
    );
    assert!(out.contains("upgrade: 600 edge-node"), "{out}");
    assert!(out.contains("users: 1"), "{out}");
}
