//! The machine's users and the environment a login of one gets, read from the machine's own
//! /etc (the callers run inside the machine): shared by `berth exec`, app machines' init and
//! build steps.

use std::fs;
use std::path::Path;

use nix::unistd::{Gid, Uid};

use super::RuntimeError;

/// A user of the machine's /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    pub groups: Vec<u32>,
}

impl User {
    /// Looks `spec` (`USER[:GROUP]`, names or numbers; empty for root) up in the machine's
    /// /etc/passwd and /etc/group.
    pub fn lookup(spec: &str) -> Result<Self, RuntimeError> {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = fs::read_to_string("/etc/group").unwrap_or_default();
        Self::find_spec(&passwd, &group, spec).map_err(RuntimeError::Exec)
    }

    /// `USER[:GROUP]` as Docker's USER and `--user` take it: a group given replaces the
    /// user's primary group and its supplementary groups.
    pub fn find_spec(passwd: &str, group: &str, spec: &str) -> Result<Self, String> {
        let (who, group_name) = match spec.split_once(':') {
            Some((who, g)) => (who, Some(g)),
            None => (spec, None),
        };
        let who = if who.is_empty() { "root" } else { who };
        let found = Self::find(passwd, group, who).or_else(|| {
            // root is root even in an image without /etc/passwd (a bare app image).
            (who == "root").then(|| Self {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
                shell: "/bin/sh".into(),
                groups: Vec::new(),
            })
        });
        let mut user = found.ok_or_else(|| {
            format!("no user '{who}' in the machine's /etc/passwd; give a name or UID it has")
        })?;
        if let Some(name) = group_name {
            user.gid = find_group(group, name).ok_or_else(|| {
                format!("no group '{name}' in the machine's /etc/group; give a name or GID it has")
            })?;
            user.groups.clear();
        }
        Ok(user)
    }

    pub fn find(passwd: &str, group: &str, who: &str) -> Option<Self> {
        let numeric: Option<u32> = who.parse().ok();
        let mut user = passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [name, _, uid, gid, _, home, rest @ ..] = fields.as_slice() else {
                return None;
            };
            let uid: u32 = uid.parse().ok()?;
            (*name == who || numeric == Some(uid)).then(|| Self {
                name: (*name).to_owned(),
                uid,
                gid: gid.parse().unwrap_or(uid),
                home: (*home).to_owned(),
                shell: rest
                    .first()
                    .filter(|s| !s.is_empty())
                    .map_or("/bin/sh", |s| *s)
                    .to_owned(),
                groups: Vec::new(),
            })
        });
        if user.is_none()
            && let Some(uid) = numeric
        {
            // A number the machine doesn't name still works, as with `setpriv`.
            user = Some(Self {
                name: uid.to_string(),
                uid,
                gid: uid,
                home: "/".into(),
                shell: "/bin/sh".into(),
                groups: Vec::new(),
            });
        }
        let mut user = user?;
        user.groups = group
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let [_, _, gid, members] = fields.as_slice() else {
                    return None;
                };
                members
                    .split(',')
                    .any(|m| m == user.name)
                    .then(|| gid.parse().ok())
                    .flatten()
            })
            .collect();
        Some(user)
    }
}

/// A group of /etc/group by name or number (a number it doesn't name still works).
fn find_group(group: &str, name: &str) -> Option<u32> {
    group
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let (n, _, gid) = (fields.next()?, fields.next()?, fields.next()?);
            (n == name).then(|| gid.parse().ok()).flatten()
        })
        .or_else(|| name.parse().ok())
}

/// In a forked child about to exec: takes `user`'s groups, GID and UID (in that order, while
/// still allowed to), then changes to `working_dir` (empty: the user's home, or / when it has
/// none). Returns the home directory used for HOME.
pub fn become_user(user: &User, working_dir: &str) -> Result<String, String> {
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let gid = Gid::from_raw(user.gid);
    let uid = Uid::from_raw(user.uid);
    nix::unistd::setgroups(&groups)
        .and_then(|()| nix::unistd::setresgid(gid, gid, gid))
        .and_then(|()| nix::unistd::setresuid(uid, uid, uid))
        .map_err(|e| format!("becoming user {} (UID {}): {e}", user.name, user.uid))?;
    let home = if Path::new(&user.home).is_dir() {
        user.home.clone()
    } else {
        "/".to_owned()
    };
    if working_dir.is_empty() {
        let _ = std::env::set_current_dir(&home);
    } else {
        std::env::set_current_dir(working_dir)
            .map_err(|e| format!("changing to the directory {working_dir}: {e}"))?;
    }
    Ok(home)
}

/// The guest files a login reads its environment from (empty when missing).
#[derive(Debug, Default)]
pub struct GuestFiles {
    pub environment: String,
    pub locale_conf: String,
    pub default_locale: String,
    pub login_defs: String,
}

impl GuestFiles {
    /// Reads them from the machine's /etc (the caller runs inside the machine).
    pub fn read() -> Self {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        Self {
            environment: read("/etc/environment"),
            locale_conf: read("/etc/locale.conf"),
            default_locale: read("/etc/default/locale"),
            login_defs: read("/etc/login.defs"),
        }
    }
}

/// The environment a login of `user` gets from the guest's own files, as login(1) and
/// pam_env build it: PATH from login.defs (ENV_SUPATH for root, ENV_PATH for others), then
/// /etc/environment, the locale (LANG, LANGUAGE, LC_*) of /etc/locale.conf and
/// /etc/default/locale, HOME, SHELL, USER and LOGNAME from passwd; last the caller's TERM
/// and COLORTERM.
pub fn login_environment(
    user: &User,
    home: &str,
    files: &GuestFiles,
    caller: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    };
    let path_key = if user.uid == 0 {
        "ENV_SUPATH"
    } else {
        "ENV_PATH"
    };
    let path = files
        .login_defs
        .lines()
        .filter_map(|line| line.trim().strip_prefix(path_key))
        .filter_map(|rest| rest.trim().strip_prefix("PATH="))
        .next_back()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if user.uid == 0 {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            } else {
                "/usr/local/bin:/usr/bin:/bin".into()
            }
        });
    set("PATH", &path);
    for (key, value) in super::guest_etc::parse_env_file(&files.environment) {
        set(&key, &value);
    }
    for text in [&files.locale_conf, &files.default_locale] {
        for (key, value) in super::guest_etc::parse_env_file(text) {
            if key == "LANG" || key == "LANGUAGE" || key.starts_with("LC_") {
                set(&key, &value);
            }
        }
    }
    set("HOME", home);
    set("SHELL", &user.shell);
    set("USER", &user.name);
    set("LOGNAME", &user.name);
    for (key, value) in caller {
        if (key == "TERM" || key == "COLORTERM") && !value.is_empty() {
            set(key, value);
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_environment_comes_from_the_guests_files() {
        let alice = User::find(PASSWD, GROUP, "alice").expect("alice");
        let files = GuestFiles {
            environment: "EDITOR=vi\n".into(),
            locale_conf: String::new(),
            default_locale: "LANG=de_DE.UTF-8\nLC_TIME=en_GB.UTF-8\nFOO=bar\n".into(),
            login_defs: "ENV_SUPATH\tPATH=/sbin:/bin\nENV_PATH\tPATH=/usr/bin:/bin:/usr/games\n"
                .into(),
        };
        let env = login_environment(
            &alice,
            "/home/alice",
            &files,
            &[
                ("TERM".into(), "xterm-256color".into()),
                ("COLORTERM".into(), "truecolor".into()),
                ("LD_PRELOAD".into(), "/x.so".into()),
            ],
        );
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some("/usr/bin:/bin:/usr/games"));
        assert_eq!(get("LANG"), Some("de_DE.UTF-8"));
        assert_eq!(get("LC_TIME"), Some("en_GB.UTF-8"));
        assert_eq!(get("FOO"), None);
        assert_eq!(get("EDITOR"), Some("vi"));
        assert_eq!(get("HOME"), Some("/home/alice"));
        assert_eq!(get("SHELL"), Some("/bin/sh"));
        assert_eq!(get("LOGNAME"), Some("alice"));
        assert_eq!(get("TERM"), Some("xterm-256color"));
        assert_eq!(get("COLORTERM"), Some("truecolor"));
        assert_eq!(get("LD_PRELOAD"), None);
        let root = User::find(PASSWD, GROUP, "root").expect("root");
        let env = login_environment(&root, "/root", &files, &[]);
        assert!(env.contains(&("PATH".into(), "/sbin:/bin".into())));
        assert!(env.contains(&("SHELL".into(), "/bin/bash".into())));
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\nalice:x:1000:\n";

    #[test]
    fn users_are_found_by_name_or_number() {
        let alice = User::find(PASSWD, GROUP, "alice").expect("alice");
        assert_eq!(
            (alice.uid, alice.gid, alice.home.as_str()),
            (1000, 1000, "/home/alice")
        );
        assert_eq!(alice.groups, vec![10]);
        assert_eq!(
            User::find(PASSWD, GROUP, "1000").expect("1000").name,
            "alice"
        );
        assert_eq!(User::find(PASSWD, GROUP, "root").expect("root").uid, 0);
        assert_eq!(User::find(PASSWD, GROUP, "4242").expect("number").uid, 4242);
        assert!(User::find(PASSWD, GROUP, "mallory").is_none());
    }

    #[test]
    fn user_and_group_specs() {
        let spec = |s: &str| User::find_spec(PASSWD, GROUP, s);
        let alice = spec("alice:wheel").expect("alice:wheel");
        assert_eq!((alice.uid, alice.gid), (1000, 10));
        assert!(alice.groups.is_empty());
        assert_eq!(spec("1000:4242").expect("numbers").gid, 4242);
        assert_eq!(spec("").expect("root").uid, 0);
        let bare = User::find_spec("", "", "").expect("root without /etc/passwd");
        assert_eq!(
            (bare.name.as_str(), bare.uid, bare.home.as_str()),
            ("root", 0, "/root")
        );
        assert_eq!(spec("alice").expect("alice").groups, vec![10]);
        let err = spec("alice:nogroup").expect_err("no such group");
        assert!(err.contains("no group 'nogroup'"), "{err}");
        let err = spec("mallory").expect_err("no such user");
        assert!(err.contains("no user 'mallory'"), "{err}");
    }
}
