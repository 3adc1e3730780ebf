//! `berth shell`: a real login session in a boot machine. The machine's own systemd runs the
//! command as a transient service with `PAMName=login`, as machined's OpenMachineShell does,
//! so logind registers a session (XDG_SESSION_ID, XDG_RUNTIME_DIR) and pam_env applies the
//! guest's /etc/environment and locale. berth starts it with the guest's own `systemd-run`
//! (its version always matches the guest's systemd), run as root inside the machine through
//! the exec helper; `--wait` makes the command's exit status systemd-run's. The service has a
//! name of berth's choosing, so that a hangup reaches it (see [`super::exec::ExecConfig`]).

/// A user name or UID as systemd's User= takes it (empty: root).
pub fn validate_user(user: &str) -> Result<(), super::RuntimeError> {
    let fine = user.is_empty()
        || (user.len() <= 256
            && !user.starts_with('-')
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    if fine {
        Ok(())
    } else {
        Err(super::RuntimeError::Setting(format!(
            "invalid user name '{user}': give a user name or UID of the machine"
        )))
    }
}

/// A fresh name for a shell's transient service (`berth-shell-<16 hex digits>.service`),
/// random so that it can't meet a session that outlived an earlier berthd.
pub fn new_unit_name() -> Result<String, super::RuntimeError> {
    let bytes = super::random_bytes::<8>().map_err(|e| {
        super::RuntimeError::step("reading /dev/urandom for a shell's unit name", e)
    })?;
    Ok(format!(
        "berth-shell-{:016x}.service",
        u64::from_ne_bytes(bytes)
    ))
}

/// The command the exec helper runs inside the machine for a shell of `user` (empty: root)
/// running `command` (empty: the user's login shell), on a terminal or on pipes, with the
/// caller's `environment` (TERM, COLORTERM), as the transient service `unit`.
pub fn systemd_run_command(
    user: &str,
    command: &[String],
    tty: bool,
    environment: &[(String, String)],
    unit: &str,
) -> Vec<String> {
    let user = if user.is_empty() { "root" } else { user };
    let mut argv: Vec<String> = [
        "systemd-run",
        "--quiet",
        "--wait",
        "--collect",
        "--service-type=exec",
        "--property=PAMName=login",
        "--property=WorkingDirectory=-~",
        "--property=SendSIGHUP=yes",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.push(format!("--unit={unit}"));
    argv.push(format!("--property=User={user}"));
    argv.push(format!("--description=berth shell of {user}"));
    for (key, value) in environment {
        argv.push(format!("--setenv={key}={value}"));
    }
    argv.push(if tty { "--pty" } else { "--pipe" }.to_owned());
    argv.push("--".to_owned());
    if command.is_empty() {
        // systemd sets SHELL from the user's passwd entry; -l makes it a login shell.
        argv.extend(["/bin/sh", "-c", "exec \"$SHELL\" -l"].map(str::to_owned));
    } else {
        argv.extend(command.iter().map(|arg| escape_dollars(arg)));
    }
    argv
}

/// `arg` as systemd passes it on literally: the service manager expands `$NAME`, `${NAME}`
/// and `$$` in a service's command line (systemd-run's --expand-environment=no, from v254 on,
/// is not there in older guests), so each `$` is doubled. `berth shell m -- sh -c 'echo $$'`
/// then gets the shell's PID, as on a terminal.
fn escape_dollars(arg: &str) -> String {
    arg.replace('$', "$$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_a_pam_login_service_of_the_guest() {
        let argv = systemd_run_command(
            "alice",
            &["sh".into(), "-c".into(), "exit 42".into()],
            false,
            &[("TERM".into(), "xterm-256color".into())],
            "berth-shell-0123456789abcdef.service",
        );
        assert_eq!(argv[0], "systemd-run");
        for wanted in [
            "--wait",
            "--property=PAMName=login",
            "--property=User=alice",
            "--setenv=TERM=xterm-256color",
            "--pipe",
            "--unit=berth-shell-0123456789abcdef.service",
        ] {
            assert!(
                argv.iter().any(|a| a == wanted),
                "{wanted} missing: {argv:?}"
            );
        }
        assert_eq!(argv[argv.len() - 4..], ["--", "sh", "-c", "exit 42"]);
    }

    #[test]
    fn dollars_in_the_command_reach_it_as_they_are() {
        let command = ["/bin/echo", "$HOME", "${HOME}", "$$", "a$b$"].map(str::to_owned);
        let argv = systemd_run_command("", &command, false, &[], "berth-shell-1.service");
        assert_eq!(
            argv[argv.len() - 5..],
            ["/bin/echo", "$$HOME", "$${HOME}", "$$$$", "a$$b$$"]
        );
    }

    #[test]
    fn shell_unit_names_are_fresh_service_names() {
        let (a, b) = (new_unit_name().expect("a"), new_unit_name().expect("b"));
        assert_ne!(a, b);
        assert!(
            a.starts_with("berth-shell-") && a.ends_with(".service"),
            "{a}"
        );
        assert_eq!(a.len(), "berth-shell-.service".len() + 16, "{a}");
    }

    #[test]
    fn user_names_are_checked() {
        for user in ["", "alice", "1000", "svc-web.1"] {
            validate_user(user).expect(user);
        }
        for user in ["a b", "-x", "a\nb", "a=b"] {
            validate_user(user).expect_err(user);
        }
    }

    #[test]
    fn no_command_is_the_users_login_shell_on_a_pty() {
        let argv = systemd_run_command("", &[], true, &[], "berth-shell-1.service");
        assert!(argv.iter().any(|a| a == "--property=User=root"));
        assert!(argv.iter().any(|a| a == "--pty"));
        assert_eq!(argv.last().map(String::as_str), Some("exec \"$SHELL\" -l"));
    }
}
