//! A machine's timezone and locale, written into its own /etc the way the guest's own tools
//! (timedatectl, localectl, update-locale) write them: `/etc/localtime` a symlink into the
//! guest's own tzdata (not a bind mount, so `timedatectl set-timezone` inside works),
//! `/etc/timezone` kept in step where the guest has one (Debian), and `LANG=` in
//! `/etc/locale.conf` and `/etc/default/locale`. The guest's /etc stays the truth: berth
//! writes a fixed setting once (at create or `berth set`) and refreshes only settings that
//! follow the host, at each start.
//!
//! Writes go through [`TreeWriter`] (never outside the root, never through a symlink);
//! reads resolve symlinks inside the root (`RESOLVE_IN_ROOT`), as the guest would.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

use super::RuntimeError;
use crate::image::tree::{Metadata, TreePath, TreeWriter};

/// The setting that follows the host: refreshed from the host at each start.
pub const HOST: &str = "host";
/// The setting that leaves the guest's /etc as its image has it: berth never writes it.
pub const IMAGE: &str = "image";

/// Values to write into a guest's /etc now (`None`: leave it as it is).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestEtc {
    /// A zone of the tz database, e.g. `Europe/Berlin`.
    pub timezone: Option<String>,
    /// A locale name for LANG, e.g. `de_DE.UTF-8`.
    pub locale: Option<String>,
    /// /etc/resolv.conf of a private machine (left alone when the guest's is a symlink).
    #[serde(default)]
    pub resolv_conf: Option<String>,
}

impl GuestEtc {
    pub fn is_empty(&self) -> bool {
        self.timezone.is_none() && self.locale.is_none() && self.resolv_conf.is_none()
    }
}

fn bad(message: String) -> RuntimeError {
    RuntimeError::Setting(message)
}

/// `host` or a zone name as the tz database spells it (`Europe/Berlin`, `Etc/GMT+5`, `UTC`).
pub fn validate_timezone(zone: &str) -> Result<(), RuntimeError> {
    let fine = !zone.is_empty()
        && zone.len() <= 255
        && !zone.starts_with('/')
        && zone
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-.".contains(c));
    if fine {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid timezone '{zone}': give 'host' or a zone of the tz database such as \
             Europe/Berlin or UTC (see 'timedatectl list-timezones')"
        )))
    }
}

/// `host` or a locale name (`de_DE.UTF-8`, `C.UTF-8`, `sr_RS@latin`).
pub fn validate_locale(locale: &str) -> Result<(), RuntimeError> {
    let fine = !locale.is_empty()
        && locale.len() <= 128
        && !locale.starts_with(['.', '-', '@'])
        && locale
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if fine {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid locale '{locale}': give 'host' or a locale name such as de_DE.UTF-8 or \
             C.UTF-8 (see 'locale -a')"
        )))
    }
}

/// The host's zone: the target of `ETC/localtime` below `zoneinfo/`, else `ETC/timezone`.
pub fn host_timezone(etc: &Path) -> Option<String> {
    if let Ok(target) = fs::read_link(etc.join("localtime")) {
        let target = target.to_string_lossy().into_owned();
        if let Some((_, zone)) = target.rsplit_once("zoneinfo/") {
            let zone = zone
                .strip_prefix("posix/")
                .or_else(|| zone.strip_prefix("right/"))
                .unwrap_or(zone);
            if validate_timezone(zone).is_ok() {
                return Some(zone.to_owned());
            }
        }
    }
    let text = fs::read_to_string(etc.join("timezone")).ok()?;
    let zone = text.lines().next()?.trim();
    validate_timezone(zone).is_ok().then(|| zone.to_owned())
}

/// The host's LANG: `ETC/locale.conf`, else `ETC/default/locale`, else berthd's own LANG.
pub fn host_locale(etc: &Path) -> Option<String> {
    let from_file = |path: &Path| {
        let text = fs::read_to_string(path).ok()?;
        parse_env_file(&text)
            .into_iter()
            .find(|(k, _)| k == "LANG")
            .map(|(_, v)| v)
    };
    from_file(&etc.join("locale.conf"))
        .or_else(|| from_file(&etc.join("default/locale")))
        .or_else(|| std::env::var("LANG").ok())
        .filter(|l| validate_locale(l).is_ok())
}

/// `KEY=VALUE` lines as /etc/locale.conf, /etc/default/locale and /etc/environment hold them:
/// comments and blank lines skipped, an `export ` prefix and matching quotes removed.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let value = value.trim();
            let value = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
                .unwrap_or(value);
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// `text` with its `LANG=` line set to `locale` (appended when it has none); other lines
/// (LC_*, LANGUAGE, comments) are kept.
pub fn with_lang(text: &str, locale: &str) -> String {
    let mut out = String::new();
    let mut replaced = false;
    for line in text.lines() {
        let key = line
            .trim_start()
            .strip_prefix("export ")
            .unwrap_or(line.trim_start());
        if key.starts_with("LANG=") {
            if !replaced {
                out.push_str(&format!("LANG={locale}\n"));
                replaced = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !replaced {
        out.push_str(&format!("LANG={locale}\n"));
    }
    out
}

/// glibc's normalized codeset: lowercase letters and digits only (`UTF-8` → `utf8`).
fn normalized_locale(locale: &str) -> String {
    let (base, modifier) = match locale.split_once('@') {
        Some((b, m)) => (b, Some(m)),
        None => (locale, None),
    };
    let mut name = match base.split_once('.') {
        Some((lang, codeset)) => {
            let codeset: String = codeset
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            format!("{lang}.{codeset}")
        }
        None => base.to_owned(),
    };
    if let Some(m) = modifier {
        name.push('@');
        name.push_str(m);
    }
    name
}

/// Opens `path` of the guest for reading, symlinks resolved inside the root as the guest
/// would resolve them; never waiting on a FIFO the guest put there (NONBLOCK).
pub(crate) fn open_in_root(root: &impl AsFd, path: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// At most `limit` bytes of the guest's regular file `path` (anything else is an error).
pub(crate) fn read_in_root(root: &impl AsFd, path: &str, limit: u64) -> io::Result<Vec<u8>> {
    let file = fs::File::from(open_in_root(root, path)?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the guest's {path} is not a regular file"),
        ));
    }
    let mut content = Vec::new();
    file.take(limit).read_to_end(&mut content)?;
    Ok(content)
}

/// Whether the guest's `path` holds `content` already (then it is not written again: a start
/// rewrites nothing that is right, and the files keep their times).
fn holds(root: &impl AsFd, path: &str, content: &str) -> bool {
    read_in_root(root, path, content.len() as u64 + 1).is_ok_and(|old| old == content.as_bytes())
}

fn exists_in_root(root: &impl AsFd, path: &str) -> bool {
    open_in_root(root, path).is_ok()
}

/// Whether the guest's tzdata has `zone` (a TZif file).
pub fn has_zone(root: &impl AsFd, zone: &str) -> bool {
    validate_timezone(zone).is_ok()
        && read_in_root(root, &format!("usr/share/zoneinfo/{zone}"), 4)
            .is_ok_and(|magic| magic == b"TZif")
}

/// Whether the guest has `locale` compiled (a directory of /usr/lib/locale or an entry of
/// its locale-archive); C and POSIX always exist.
pub fn has_locale(root: &impl AsFd, locale: &str) -> bool {
    let normalized = normalized_locale(locale);
    if matches!(locale, "C" | "POSIX") || normalized == "C.utf8" {
        return true;
    }
    if [locale, normalized.as_str()]
        .iter()
        .any(|name| exists_in_root(root, &format!("usr/lib/locale/{name}/LC_CTYPE")))
    {
        return true;
    }
    // The archive's name table holds each locale's normalized name, NUL-terminated.
    let needle = format!("{normalized}\0").into_bytes();
    read_in_root(root, "usr/lib/locale/locale-archive", 64 << 20)
        .is_ok_and(|archive| archive.windows(needle.len()).any(|w| w == needle))
}

/// `/etc/locale.gen` with `locale`'s line enabled (uncommented, or added), when the guest
/// has glibc's sources for it; `None` when it can't generate it.
fn locale_gen_with(root: &impl AsFd, locale: &str) -> Option<String> {
    let (base, charset) = match locale.split_once('.') {
        Some((lang, rest)) => (lang, rest.split('@').next().unwrap_or(rest)),
        None => (locale, "ISO-8859-1"),
    };
    let lang = base.split('@').next().unwrap_or(base);
    if !exists_in_root(root, "usr/sbin/locale-gen")
        || !exists_in_root(root, &format!("usr/share/i18n/locales/{lang}"))
    {
        return None;
    }
    let text = String::from_utf8(read_in_root(root, "etc/locale.gen", 1 << 20).ok()?).ok()?;
    let wanted = format!("{locale} {charset}");
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        let uncommented = line.trim_start_matches(['#', ' ']);
        if !found && uncommented.split_whitespace().next() == Some(locale) {
            out.push_str(uncommented);
            found = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        out.push_str(&wanted);
        out.push('\n');
    }
    Some(out)
}

fn settle(tree: &mut TreeWriter, path: &str, result: Result<(), crate::image::tree::EntryError>) {
    if let Err(e) = tree.settle(path, result) {
        tree.refuse(
            path,
            crate::image::tree::RefuseReason::UnsupportedType(e.to_string()),
        );
    }
}

fn tree_path(path: &str) -> TreePath {
    TreePath::parse(path.as_bytes()).unwrap_or_else(|_| TreePath::root())
}

/// Writes `etc` into the guest tree `tree` is confined to. Returns warnings: what the guest
/// lacks (a zone, a compiled locale) and what could not be written; nothing here stops a
/// machine from starting.
pub fn apply(tree: &mut TreeWriter, etc: &GuestEtc, mtime: i64) -> Vec<String> {
    let mut warnings = Vec::new();
    let root = match tree.root().try_clone_to_owned() {
        Ok(root) => root,
        Err(e) => return vec![format!("opening the machine's root: {e}")],
    };
    let meta = Metadata {
        mode: 0o644,
        mtime,
        ..Metadata::default()
    };
    if let Some(zone) = &etc.timezone {
        if has_zone(&root, zone) {
            let target = format!("../usr/share/zoneinfo/{zone}");
            let current = rustix::fs::readlinkat(&root, "etc/localtime", Vec::new());
            if !current.is_ok_and(|link| link.as_bytes() == target.as_bytes()) {
                let result = tree.symlink(&tree_path("etc/localtime"), OsStr::new(&target), &meta);
                settle(tree, "etc/localtime", result);
            }
            // Debian's tzdata also reads /etc/timezone; keep it in step where it exists.
            if exists_in_root(&root, "etc/timezone")
                && !holds(&root, "etc/timezone", &format!("{zone}\n"))
            {
                let result = tree.file(
                    &tree_path("etc/timezone"),
                    &meta,
                    crate::image::tree::Content::Reader(&mut format!("{zone}\n").as_bytes()),
                );
                settle(tree, "etc/timezone", result);
            }
        } else if exists_in_root(&root, "usr/share/zoneinfo") {
            // (A guest without tzdata at all runs in UTC; nothing to say about that.)
            warnings.push(format!(
                "the machine has no timezone '{zone}' in its /usr/share/zoneinfo; its \
                 /etc/localtime was left as it is"
            ));
        }
    }
    if let Some(locale) = &etc.locale {
        let mut files = vec!["etc/locale.conf"];
        if exists_in_root(&root, "etc/default") {
            files.push("etc/default/locale");
        }
        for file in files {
            // A symlink (e.g. /etc/locale.conf -> default/locale) is the guest's choice:
            // the file it points to is written through its own name.
            let is_link = rustix::fs::statat(&root, file, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
                });
            if is_link {
                continue;
            }
            let old = read_in_root(&root, file, 1 << 20)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let new = with_lang(&old, locale);
            if new == old {
                continue;
            }
            let result = tree.file(
                &tree_path(file),
                &meta,
                crate::image::tree::Content::Reader(&mut new.as_bytes()),
            );
            settle(tree, file, result);
        }
        if !has_locale(&root, locale) {
            match locale_gen_with(&root, locale) {
                Some(locale_gen) => {
                    let result = tree.file(
                        &tree_path("etc/locale.gen"),
                        &meta,
                        crate::image::tree::Content::Reader(&mut locale_gen.as_bytes()),
                    );
                    settle(tree, "etc/locale.gen", result);
                    warnings.push(format!(
                        "the machine has no compiled locale '{locale}'; it is enabled in its \
                         /etc/locale.gen and is generated at its next start (locale-gen)"
                    ));
                }
                None => warnings.push(format!(
                    "the machine has no locale '{locale}' and no way to generate it \
                     (locale-gen and glibc's locale sources); LANG is set, but programs will \
                     fall back to C: install the locale in the machine"
                )),
            }
        }
    }
    if let Some(resolv_conf) = &etc.resolv_conf {
        let is_link = rustix::fs::statat(
            &root,
            "etc/resolv.conf",
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
        });
        if !is_link && exists_in_root(&root, "etc") && !holds(&root, "etc/resolv.conf", resolv_conf)
        {
            let result = tree.file(
                &tree_path("etc/resolv.conf"),
                &meta,
                crate::image::tree::Content::Reader(&mut resolv_conf.as_bytes()),
            );
            settle(tree, "etc/resolv.conf", result);
        }
    }
    warnings
}

/// Whether the guest needs `locale-gen` run for `locale`: it can generate it and hasn't.
pub fn needs_locale_gen(root: &impl AsFd, locale: &str) -> bool {
    !has_locale(root, locale) && exists_in_root(root, "usr/sbin/locale-gen")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_and_locales_are_checked_by_shape() {
        for zone in [
            "Europe/Berlin",
            "UTC",
            "Etc/GMT+5",
            "America/Port-au-Prince",
            HOST,
        ] {
            validate_timezone(zone).expect(zone);
        }
        for zone in [
            "",
            "/etc/passwd",
            "../x",
            "Europe//Berlin",
            "a b",
            "Europe/..",
        ] {
            validate_timezone(zone).expect_err(zone);
        }
        for locale in ["de_DE.UTF-8", "C.UTF-8", "C", "sr_RS@latin", HOST] {
            validate_locale(locale).expect(locale);
        }
        for locale in ["", "-x", "de DE", "../x", "de/DE", ".UTF-8"] {
            validate_locale(locale).expect_err(locale);
        }
    }

    #[test]
    fn settings_already_in_place_are_not_written_again() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc/default")).expect("etc");
        fs::create_dir_all(root.join("usr/share/zoneinfo/Europe")).expect("zoneinfo");
        fs::write(root.join("usr/share/zoneinfo/Europe/Berlin"), b"TZif2").expect("zone");
        fs::write(root.join("etc/timezone"), b"Etc/UTC\n").expect("timezone");
        let etc = GuestEtc {
            timezone: Some("Europe/Berlin".into()),
            locale: Some("C.UTF-8".into()),
            resolv_conf: Some("nameserver 10.89.0.1\n".into()),
        };
        let apply_once = |mtime: i64| {
            let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .expect("open");
            let mut tree = TreeWriter::new(fd);
            let warnings = apply(&mut tree, &etc, mtime);
            tree.finish().expect("finish");
            warnings
        };
        assert_eq!(apply_once(1_000_000), Vec::<String>::new());
        assert_eq!(
            fs::read_link(root.join("etc/localtime")).expect("localtime"),
            Path::new("../usr/share/zoneinfo/Europe/Berlin")
        );
        assert_eq!(
            fs::read(root.join("etc/timezone")).expect("tz"),
            b"Europe/Berlin\n"
        );
        let files = [
            "etc/localtime",
            "etc/timezone",
            "etc/locale.conf",
            "etc/default/locale",
            "etc/resolv.conf",
        ];
        let mtimes = || -> Vec<i64> {
            files
                .iter()
                .map(|f| fs::symlink_metadata(root.join(f)).expect(f).mtime())
                .collect()
        };
        assert_eq!(mtimes(), vec![1_000_000; files.len()]);
        // A later start, with the same settings, finds them in place.
        assert_eq!(apply_once(2_000_000), Vec::<String>::new());
        assert_eq!(
            mtimes(),
            vec![1_000_000; files.len()],
            "a second start rewrote what was right"
        );
    }

    #[test]
    fn codesets_are_normalized_as_glibc_does() {
        assert_eq!(normalized_locale("de_DE.UTF-8"), "de_DE.utf8");
        assert_eq!(normalized_locale("sr_RS.UTF-8@latin"), "sr_RS.utf8@latin");
        assert_eq!(normalized_locale("en_US"), "en_US");
    }

    #[test]
    fn env_files_parse_like_pam_env() {
        let text = "# comment\nLANG=de_DE.UTF-8\nexport LC_TIME=\"en_GB.UTF-8\"\n\nbad line\nPATH='/a:/b'\n";
        assert_eq!(
            parse_env_file(text),
            vec![
                ("LANG".into(), "de_DE.UTF-8".into()),
                ("LC_TIME".into(), "en_GB.UTF-8".into()),
                ("PATH".into(), "/a:/b".into()),
            ]
        );
    }

    #[test]
    fn lang_is_replaced_and_other_lines_kept() {
        assert_eq!(
            with_lang("#  File generated by update-locale\n", "de_DE.UTF-8"),
            "#  File generated by update-locale\nLANG=de_DE.UTF-8\n"
        );
        assert_eq!(
            with_lang("LANG=C\nLC_TIME=C\nLANG=x\n", "fr_FR.UTF-8"),
            "LANG=fr_FR.UTF-8\nLC_TIME=C\n"
        );
    }

    #[test]
    fn host_settings_come_from_etc() {
        let dir = std::env::temp_dir().join(format!("berth-etc-{}", std::process::id()));
        fs::create_dir_all(dir.join("default")).expect("dir");
        std::os::unix::fs::symlink("/usr/share/zoneinfo/Asia/Tokyo", dir.join("localtime"))
            .expect("link");
        fs::write(dir.join("default/locale"), "LANG=\"pt_BR.UTF-8\"\n").expect("write");
        assert_eq!(host_timezone(&dir).as_deref(), Some("Asia/Tokyo"));
        assert_eq!(host_locale(&dir).as_deref(), Some("pt_BR.UTF-8"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
