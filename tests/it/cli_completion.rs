//! `vanectl completion SHELL`: a script each shell loads, printed without a
//! server; bash really loads it and completes a subcommand.

use vane_testkit::run_vanectl;

#[test]
fn each_shell_gets_its_script_without_a_server() {
    // Nothing listens on port 9: completion never connects.
    let env = [("VANE_SERVER", "http://127.0.0.1:9")];
    for (shell, marker) in [
        ("bash", "complete -F _vanectl"),
        ("zsh", "#compdef vanectl"),
        ("fish", "complete -c vanectl"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = run_vanectl(&["completion", shell], &env);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains(marker), "{shell}: no {marker:?}");
        for sub in [
            "push",
            "rollback",
            "rollout",
            "completion",
            "config",
            "diff",
        ] {
            assert!(out.stdout.contains(sub), "{shell}: no {sub}");
        }
    }
    let out = run_vanectl(&["completion", "tcsh"], &env);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("invalid value 'tcsh'"), "{out:?}");
}

#[test]
fn bash_loads_the_script_and_completes_subcommands() {
    let script = run_vanectl(&["completion", "bash"], &[]);
    assert_eq!(script.code, 0, "{script:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vanectl.bash");
    std::fs::write(&file, &script.stdout).expect("write the script");
    // What bash does on `vanectl roll<TAB>`.
    let probe = format!(
        "source {}; COMP_WORDS=(vanectl roll); COMP_CWORD=1; COMP_LINE='vanectl roll'; \
         COMP_POINT=${{#COMP_LINE}}; _vanectl vanectl roll vanectl; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .expect("run bash");
    let replies = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let replies: Vec<&str> = replies.lines().collect();
    assert!(
        replies.contains(&"rollback") && replies.contains(&"rollout"),
        "{replies:?}"
    );
    assert!(!replies.contains(&"push"), "{replies:?}");
}
