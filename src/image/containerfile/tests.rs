use super::*;

fn ok(text: &str) -> Containerfile {
    match parse(text) {
        Ok(file) => file,
        Err(e) => panic!("{text:?} should parse: {e}"),
    }
}

fn steps(body: &str) -> Vec<Step> {
    ok(&format!("FROM base\n{body}")).steps
}

/// The error for `text`, which must say each of `wanted`.
fn refused(text: &str, line: usize, wanted: &[&str]) -> ContainerfileError {
    let err = parse(text).expect_err(text);
    assert_eq!(err.line, line, "{err}");
    let message = err.to_string();
    assert!(message.starts_with(&format!("line {line}: ")), "{message}");
    for want in wanted {
        assert!(message.contains(want), "{message:?} should say {want:?}");
    }
    err
}

fn shell(text: &str) -> Command {
    Command::Shell(text.into())
}

fn exec(argv: &[&str]) -> Command {
    Command::Exec(argv.iter().map(|s| s.to_string()).collect())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn copy(sources: &[&str], dest: &str, chown: Option<&str>) -> Step {
    Step::Copy {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.into(),
        chown: chown.map(Into::into),
    }
}

#[test]
fn parses_a_typical_file() {
    let file = ok(r#"# syntax=docker/dockerfile:1
ARG RELEASE=12
FROM debian@${RELEASE}

LABEL org.opencontainers.image.title="web server" maintainer=me
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && \
    # comments inside a continuation are dropped
    apt-get install -y nginx
COPY --chown=www-data:www-data site/ /var/www/
WORKDIR /var/www
USER www-data
EXPOSE 80
ENTRYPOINT ["nginx", "-g", "daemon off;"]
CMD ["-c", "/etc/nginx/nginx.conf"]
"#);
    assert_eq!(file.from, ("debian".into(), Some("12".into())));
    assert_eq!(
        file.steps,
        [
            Step::Label(pairs(&[
                ("org.opencontainers.image.title", "web server"),
                ("maintainer", "me")
            ])),
            Step::Env(pairs(&[("DEBIAN_FRONTEND", "noninteractive")])),
            Step::Run(shell("apt-get update &&     apt-get install -y nginx")),
            copy(&["site/"], "/var/www/", Some("www-data:www-data")),
            Step::Workdir("/var/www".into()),
            Step::User("www-data".into()),
            Step::Entrypoint(exec(&["nginx", "-g", "daemon off;"])),
            Step::Cmd(exec(&["-c", "/etc/nginx/nginx.conf"])),
        ]
    );
    assert_eq!(file.warnings.len(), 1);
    assert!(file.warnings[0].starts_with("line 13: EXPOSE is ignored"));
}

#[test]
fn syntax_case_comments_blank_lines_and_continuations() {
    let file = ok(
        "\u{feff}\r\n  # comment\r\nfrom base\r\n\r\nrun echo a \\\r\n\r\n  # dropped\r\n  b\r\n\tEnV A=1\nRUN echo \\",
    );
    assert_eq!(file.from, ("base".into(), None));
    assert_eq!(
        file.steps,
        [
            Step::Run(shell("echo a   b")),
            Step::Env(pairs(&[("A", "1")])),
            Step::Run(shell("echo")),
        ]
    );
    // A '#' after the start of a line is the shell's, and errors name the first line.
    assert_eq!(
        steps("RUN echo hi # there"),
        [Step::Run(shell("echo hi # there"))]
    );
    refused(
        "FROM base\nRUN a \\\n b\nBOGUS x",
        4,
        &["unknown instruction 'BOGUS'"],
    );
    refused(
        "FROM base\n\nSHELL \\\n [\"/bin/bash\"]",
        3,
        &["SHELL is not supported"],
    );
}

#[test]
fn shell_and_exec_forms() {
    assert_eq!(
        steps("RUN [\"/bin/echo\", \"a b\", \"$HOME\"]\nCMD [ ]\nENTRYPOINT []"),
        [
            Step::Run(exec(&["/bin/echo", "a b", "$HOME"])),
            Step::Cmd(exec(&[])),
            Step::Entrypoint(exec(&[])),
        ]
    );
    // Not JSON (single quotes): Docker runs it with the shell, and berth says so.
    let file = ok("FROM base\nCMD ['sleep', '1']\nRUN [ -f /x ] || touch /x");
    assert_eq!(
        file.steps,
        [
            Step::Cmd(shell("['sleep', '1']")),
            Step::Run(shell("[ -f /x ] || touch /x")),
        ]
    );
    assert_eq!(file.warnings.len(), 1, "{:?}", file.warnings);
    assert!(file.warnings[0].contains("line 2: CMD is not a JSON array"));

    assert_eq!(shell("echo $A").argv(), ["/bin/sh", "-c", "echo $A"]);
    assert_eq!(exec(&["/bin/true", "x"]).argv(), ["/bin/true", "x"]);

    refused("FROM base\nRUN", 2, &["RUN needs a command"]);
    refused("FROM base\nRUN []", 2, &["runs nothing"]);
    refused("FROM base\nCMD   ", 2, &["CMD needs a command"]);
    refused(
        "FROM base\nRUN --mount=type=cache,target=/x make",
        2,
        &["'--mount=type=cache"],
    );
    refused("FROM base\nRUN cat <<EOF > /x\nhi\nEOF", 2, &["heredocs"]);
    assert_eq!(steps("RUN cat <<<hi"), [Step::Run(shell("cat <<<hi"))]);
}

#[test]
fn env_forms_quotes_and_escapes() {
    assert_eq!(
        steps(concat!(
            "ENV A=1 B=\"two words\" C='$A \\n' D=a\\ b E=\"q\\\"\\$A\\x\"\n",
            "ENV LEGACY  value with  spaces\n",
            "ENV F=\"\" G=x=y",
        )),
        [
            Step::Env(pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "$A \\n"),
                ("D", "a b"),
                ("E", "q\"$A\\x"),
            ])),
            Step::Env(pairs(&[("LEGACY", "value with  spaces")])),
            Step::Env(pairs(&[("F", ""), ("G", "x=y")])),
        ]
    );
    // Values see the variables from before the instruction (Docker's rule).
    assert_eq!(
        steps("ENV A=old\nENV A=new B=$A\nWORKDIR /$A/$B"),
        [
            Step::Env(pairs(&[("A", "old")])),
            Step::Env(pairs(&[("A", "new"), ("B", "old")])),
            Step::Workdir("/new/old".into()),
        ]
    );
    refused("FROM base\nENV", 2, &["ENV needs KEY=VALUE"]);
    refused("FROM base\nENV A", 2, &["ENV A needs a value"]);
    refused("FROM base\nENV A=1 B", 2, &["'B'", "KEY=VALUE"]);
    refused("FROM base\nENV 1A=x", 2, &["'1A'", "variable name"]);
    refused("FROM base\nENV A=\"open", 2, &["no closing \""]);
    refused("FROM base\nLABEL =x", 2, &["empty key"]);
    assert_eq!(
        steps("LABEL \"com.example.vendor\"=\"ACME Inc\" version=1.0"),
        [Step::Label(pairs(&[
            ("com.example.vendor", "ACME Inc"),
            ("version", "1.0")
        ]))]
    );
}

#[test]
fn arg_substitution_follows_docker() {
    let file = ok(concat!(
        "ARG IMAGE=debian\nARG TAG\n",
        "FROM ${IMAGE}@${TAG:-12}\n",
        "ARG IMAGE\nARG USER_NAME=app DIR=/srv\n",
        "ENV HOME=/home/$USER_NAME FLAVOR=${IMAGE:+is-$IMAGE} EMPTY=${NOPE}X\n",
        "ARG HOME=/ignored\n",
        "COPY $DIR/a ${HOME}/b\n",
        "USER ${USER_NAME}:$USER_NAME\n",
        "WORKDIR $HOME\n",
        "RUN echo $HOME ${DIR}\n",
        "LABEL cost=\\$5 tag=$TAG",
    ));
    assert_eq!(file.from, ("debian".into(), Some("12".into())));
    assert_eq!(
        file.steps,
        [
            Step::Env(pairs(&[
                ("HOME", "/home/app"),
                ("FLAVOR", "is-debian"),
                ("EMPTY", "X")
            ])),
            copy(&["/srv/a"], "/home/app/b", None),
            Step::User("app:app".into()),
            Step::Workdir("/home/app".into()),
            Step::Run(shell("echo $HOME ${DIR}")),
            Step::Label(pairs(&[("cost", "$5"), ("tag", "")])),
        ]
    );
    // TAG was declared before FROM only, so it is empty after FROM: berth warns.
    assert_eq!(file.warnings.len(), 1, "{:?}", file.warnings);
    assert!(
        file.warnings[0].starts_with("line 12: $TAG is empty here")
            && file.warnings[0].contains("'ARG TAG'"),
        "{:?}",
        file.warnings
    );

    refused("ARG", 1, &["ARG needs a name"]);
    refused("ARG A-B=1\nFROM x", 1, &["'A-B'"]);
    refused("FROM x\nENV A=${B", 2, &["bad substitution"]);
    refused(
        "FROM x\nENV A=${B%%x}",
        2,
        &["bad substitution", "${NAME:-DEFAULT}"],
    );
    refused("FROM x\nENV A=${}", 2, &["bad substitution"]);
    let deep = format!("FROM x\nENV A={}x{}", "${A:-".repeat(20), "}".repeat(20));
    refused(&deep, 2, &["nest too deeply"]);
    assert_eq!(
        steps("ENV A=${X:-${Y:-in}ner} B=$ C=$1 D=${X:-a\\}b}"),
        [Step::Env(pairs(&[
            ("A", "inner"),
            ("B", "$"),
            ("C", "$1"),
            ("D", "a}b")
        ]))]
    );
}

#[test]
fn workdir_is_resolved_and_user_is_required() {
    assert_eq!(
        steps("WORKDIR app\nWORKDIR src/\nWORKDIR lib\nWORKDIR /opt\nWORKDIR x"),
        [
            Step::Workdir("/app".into()),
            Step::Workdir("/app/src/".into()),
            Step::Workdir("/app/src/lib".into()),
            Step::Workdir("/opt".into()),
            Step::Workdir("/opt/x".into()),
        ]
    );
    assert_eq!(steps("WORKDIR /a b"), [Step::Workdir("/a b".into())]);
    refused("FROM x\nWORKDIR", 2, &["WORKDIR needs a directory"]);
    refused("FROM x\nUSER ", 2, &["USER needs a user"]);
    refused("FROM x\nUSER $NOBODY", 2, &["USER needs a user"]);
}

#[test]
fn copy_and_add_of_local_files() {
    assert_eq!(
        steps(concat!(
            "COPY a b /dst/\n",
            "copy [\"with space\", \"$HOME/x\", \"/d/\"]\n",
            "ADD --chown=1000 conf.txt /etc/\n",
            "COPY my\\ file \"other file\" /d/\n",
            "COPY one /file",
        )),
        [
            copy(&["a", "b"], "/dst/", None),
            copy(&["with space", "/x"], "/d/", None),
            copy(&["conf.txt"], "/etc/", Some("1000")),
            copy(&["my file", "other file"], "/d/", None),
            copy(&["one"], "/file", None),
        ]
    );
    refused(
        "FROM x\nCOPY only",
        2,
        &["at least one source and a destination"],
    );
    refused(
        "FROM x\nCOPY --from=build /out /",
        2,
        &["--from", "not supported"],
    );
    refused(
        "FROM x\nCOPY --chmod=644 a /",
        2,
        &["--chmod", "only --chown"],
    );
    refused("FROM x\nCOPY --chown a /", 2, &["--chown needs a value"]);
    refused("FROM x\nCOPY --chown= a /", 2, &["--chown needs a value"]);
    refused("FROM x\nCOPY <<EOF /a", 2, &["heredocs"]);
    for url in [
        "https://example.com/f",
        "git@github.com:a/b.git",
        "ftp://x/y",
    ] {
        refused(&format!("FROM x\nADD {url} /"), 2, &["URL", "COPY"]);
    }
    for archive in ["root.tar", "a/b.tar.gz", "B.TGZ", "x.tar.zst", "y.txz"] {
        refused(
            &format!("FROM x\nADD ok {archive} /"),
            2,
            &["unpack", "COPY"],
        );
    }
    // COPY never unpacks, so archives are fine there.
    assert_eq!(steps("COPY r.tar.gz /"), [copy(&["r.tar.gz"], "/", None)]);
}

#[test]
fn from_rules() {
    refused("", 1, &["there is no FROM"]);
    refused("# just a comment\nARG A=1\n", 2, &["there is no FROM"]);
    refused("RUN true\nFROM x", 1, &["RUN comes before FROM"]);
    refused("EXPOSE 80\nFROM x", 1, &["EXPOSE comes before FROM"]);
    refused("FROM a\nRUN x\nFROM b", 3, &["second FROM", "multi-stage"]);
    refused("FROM scratch", 1, &["scratch", "berth image"]);
    refused("FROM Scratch", 1, &["scratch"]);
    refused("FROM", 1, &["FROM needs an image"]);
    refused("FROM a b", 1, &["FROM takes one image"]);
    refused("FROM --platform=linux/arm64 a", 1, &["--platform"]);
    refused(
        "FROM debian:12",
        1,
        &["'debian:12'", "NAME@VERSION, not NAME:TAG"],
    );
    refused("FROM docker.io/debian", 1, &["'berth images'"]);
    refused("FROM debian@1_2", 1, &["version '1_2'", "'_'"]);
    refused("FROM debian@", 1, &["version is empty"]);
    refused("FROM -x", 1, &["must not start with '-'"]);
    assert_eq!(ok("FROM base AS build").from, ("base".into(), None));
    assert_eq!(
        ok("from base@2~rc1").from,
        ("base".into(), Some("2~rc1".into()))
    );
    // An ARG without a default is empty.
    refused("ARG N\nFROM $N", 2, &["FROM needs an image"]);
}

#[test]
fn ignored_and_unsupported_instructions() {
    let file = ok("FROM x\nEXPOSE 80/tcp\nVOLUME /data\nstopsignal SIGTERM");
    assert!(file.steps.is_empty());
    let lines: Vec<&str> = file.warnings.iter().map(String::as_str).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("line 2: EXPOSE is ignored"));
    assert!(lines[1].starts_with("line 3: VOLUME is ignored"));
    assert!(lines[2].starts_with("line 4: STOPSIGNAL is ignored"));

    for keyword in [
        "HEALTHCHECK NONE",
        "ONBUILD RUN x",
        "SHELL [\"sh\"]",
        "maintainer me",
    ] {
        let name = keyword.split(' ').next().unwrap_or_default().to_uppercase();
        refused(
            &format!("FROM x\n{keyword}"),
            2,
            &[
                &format!("{name} is not supported"),
                "FROM, ARG, RUN, COPY",
                "LABEL",
            ],
        );
    }
    refused(
        "FROM x\nFROBNICATE",
        2,
        &["unknown instruction 'FROBNICATE'", "ENTRYPOINT"],
    );
    refused("FROM x\n\u{1}\u{7f}", 2, &["'\\u{1}\\u{7f}'"]);
    refused("FROM x\nRUN a\0b", 2, &["NUL"]);
    let long = format!("FROM x\n{}", "Y".repeat(500));
    let err = refused(&long, 2, &["..."]);
    assert!(err.message.len() < 300, "{}", err.message);
}

/// A deterministic xorshift generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn never_panics_on_mutated_or_random_input() {
    let seeds = [
        "ARG V=1\nFROM img@$V\nENV A=\"x y\" B=${A:-z} C='q'\nRUN [\"a\", \"b\"]\nCMD x \\\n  y\n",
        "FROM a\nCOPY --chown=u [\"s\", \"d\"]\nADD f.txt /\nLABEL k=\"v\\\"\" \nWORKDIR rel\n",
        "FROM a\nUSER ${U:-${V:+x}w}\nEXPOSE 1\nENTRYPOINT [\"\\u00e9\"]\n# c\nSTOPSIGNAL 9\n",
    ];
    let interesting = b"\\\"'$ {}[]:-+=@\n\r\t#<>/.~^\0";
    for seed in seeds {
        ok(seed);
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..=rng.below(8) {
            let at = rng.below(bytes.len() + 1);
            let byte = if rng.below(2) == 0 {
                interesting[rng.below(interesting.len())]
            } else {
                (rng.next() & 0xff) as u8
            };
            match rng.below(3) {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        if round % 10 == 0 {
            let len = rng.below(200);
            bytes = (0..len)
                .map(|_| interesting[rng.below(interesting.len())])
                .collect();
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = parse(&text) {
            assert!(e.line >= 1, "{e}");
        }
    }
}
