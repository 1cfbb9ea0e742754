//! `wsgate check --as-user USER`: can the service's user read every file the configuration
//! names? Run as root, `check` reads anything; the service (`User=wsgate`) may not, and then
//! fails at its next start or reload (a 0600 TLS key owned by root).
//!
//! The evaluation is the classic permission-bit rule, without forking or changing identity:
//! every directory on the path must be searchable (`x`) and the file readable (`r`) by the
//! owner, group or other class the user falls into (its uid, its primary group and its
//! supplementary groups from the group database, plus groups the unit adds). POSIX ACLs and
//! capabilities are not evaluated; uid 0 reads everything.
//!
//! It also points out log-view files under `/tmp`, `/var/tmp`, `/home`, `/root` and
//! `/run/user`: the packaged unit's `PrivateTmp=yes` and `ProtectHome=yes` hide them from
//! the service, whatever their permissions.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::Config;

/// A user the files are checked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// As given (a name or a number).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (from the group database and `extra_groups`).
    pub groups: Vec<u32>,
}

impl User {
    /// Looks `name` (or a numeric uid) up in the user database (`getent passwd`, else
    /// `/etc/passwd`), with its groups (`getent group`, else `/etc/group`) and the named
    /// `extra_groups` (names or numbers, like the unit's `SupplementaryGroups=`).
    pub fn lookup(name: &str, extra_groups: &[String]) -> Result<User, String> {
        let passwd = database("passwd");
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && (f[0] == name || f[2] == name))
            .ok_or_else(|| format!("no user {name:?} in the user database"))?;
        let uid = entry[2].parse().map_err(|_| format!("user {name:?}: bad uid {:?}", entry[2]))?;
        let gid = entry[3].parse().map_err(|_| format!("user {name:?}: bad gid {:?}", entry[3]))?;
        let login = entry[0];
        let group_db = database("group");
        let groups_table: Vec<Vec<&str>> = group_db.lines().map(|l| l.split(':').collect()).collect();
        let mut groups: Vec<u32> = groups_table
            .iter()
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == login))
            .filter_map(|f| f[2].parse().ok())
            .collect();
        for extra in extra_groups {
            let id = match extra.parse::<u32>() {
                Ok(id) => id,
                Err(_) => groups_table
                    .iter()
                    .find(|f| f.len() >= 3 && f[0] == extra)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| format!("no group {extra:?} in the group database"))?,
            };
            groups.push(id);
        }
        Ok(User { name: name.to_string(), uid, gid, groups })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether the mode bits of `meta` grant this user every bit of `want` (4 read, 1 search).
    fn granted(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.in_group(meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }
}

/// `getent DB` (NSS: also LDAP or systemd users), else the file `/etc/DB`.
fn database(db: &str) -> String {
    if let Ok(out) = Command::new("getent").arg(db).output() {
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    std::fs::read_to_string(format!("/etc/{db}")).unwrap_or_default()
}

/// A file the configuration names, with the key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// Dotted key path: `listen.0.tls.key`, `apps.logs.files.1`.
    pub key: String,
    /// The path as written.
    pub path: PathBuf,
    /// A log-view file: may be missing (the viewer says so), may sit where the unit hides it.
    pub log_view: bool,
}

/// Every file `config` names: TLS certificates and keys, the admin token, the Redis password
/// and CA files, log-view files.
pub fn named_files(config: &Config) -> Vec<NamedFile> {
    let mut out = Vec::new();
    let mut add =
        |key: String, path: &Path, log_view: bool| out.push(NamedFile { key, path: path.to_path_buf(), log_view });
    for (i, listen) in config.listen.iter().enumerate() {
        if let Some(tls) = &listen.tls {
            add(format!("listen.{i}.tls.cert"), &tls.cert, false);
            add(format!("listen.{i}.tls.key"), &tls.key, false);
        }
    }
    if let Some(path) = &config.admin.token_file {
        add("admin.token_file".into(), path, false);
    }
    if let Some(path) = &config.broker.password_file {
        add("broker.password_file".into(), path, false);
    }
    if let Some(path) = &config.broker.ca_file {
        add("broker.ca_file".into(), path, false);
    }
    if let Some(path) = &config.broker.sentinel_password_file {
        add("broker.sentinel_password_file".into(), path, false);
    }
    for (name, app) in &config.apps {
        for (i, path) in app.files.iter().enumerate() {
            add(format!("apps.{name}.files.{i}"), path, true);
        }
        if let Some(jwt) = &app.jwt {
            if let Some(path) = &jwt.hmac_secret_file {
                add(format!("apps.{name}.jwt.hmac_secret_file"), path, false);
            }
            if let Some(path) = &jwt.public_key_file {
                add(format!("apps.{name}.jwt.public_key_file"), path, false);
            }
        }
    }
    out
}

/// Why `user` cannot read `path`, or `Ok` when it can. A missing file is an error here;
/// callers decide whether that matters.
pub fn check_readable(user: &User, path: &Path) -> Result<(), String> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| format!("cannot resolve the relative path: {e}"))?.join(path)
    };
    // Symbolic links resolved, so each real directory is judged.
    let real = std::fs::canonicalize(&absolute).map_err(|e| format!("{e}"))?;
    let mut dir = PathBuf::new();
    let components: Vec<Component<'_>> = real.components().collect();
    let (file_part, dirs) = components.split_last().ok_or("empty path")?;
    for component in dirs {
        dir.push(component);
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !user.granted(&meta, 1) {
            return Err(format!(
                "directory {} cannot be searched by user {} (mode {:04o}, owner {}:{})",
                dir.display(),
                user.name,
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ));
        }
    }
    dir.push(file_part);
    let meta = std::fs::metadata(&dir).map_err(|e| format!("{e}"))?;
    if !user.granted(&meta, 4) {
        return Err(format!(
            "not readable by user {} (uid {}): mode {:04o}, owner {}:{}",
            user.name,
            user.uid,
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        ));
    }
    Ok(())
}

/// The unit setting that hides `path` from the service, when it lies under a directory the
/// packaged unit makes private (`PrivateTmp=yes`) or inaccessible (`ProtectHome=yes`).
pub fn hidden_by_unit(path: &Path) -> Option<&'static str> {
    const HIDDEN: [(&str, &str); 5] = [
        ("/tmp", "PrivateTmp=yes"),
        ("/var/tmp", "PrivateTmp=yes"),
        ("/home", "ProtectHome=yes"),
        ("/root", "ProtectHome=yes"),
        ("/run/user", "ProtectHome=yes"),
    ];
    HIDDEN.iter().find(|(dir, _)| path.starts_with(dir)).map(|(_, setting)| *setting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hidden_directories() {
        assert_eq!(hidden_by_unit(Path::new("/tmp/app.log")), Some("PrivateTmp=yes"));
        assert_eq!(hidden_by_unit(Path::new("/home/me/x.log")), Some("ProtectHome=yes"));
        assert_eq!(hidden_by_unit(Path::new("/tmpfoo/x.log")), None);
        assert_eq!(hidden_by_unit(Path::new("/var/log/nginx/error.log")), None);
    }

    #[test]
    fn mode_bits_decide() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.pem");
        std::fs::write(&file, "x").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let stranger = User { name: "s".into(), uid: meta.uid().wrapping_add(12345), gid: 54321, groups: vec![] };
        let group_member = User { groups: vec![meta.gid()], ..stranger.clone() };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_readable(&stranger, &file).unwrap_err().contains("mode 0600"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(check_readable(&stranger, &file).is_err());
        if meta.gid() != 54321 {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(check_readable(&group_member, &file), Ok(()));
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_readable(&stranger, &file).unwrap_err().contains("cannot be searched"));
        let root = User { uid: 0, ..stranger };
        assert_eq!(check_readable(&root, &file), Ok(()));
    }
}
