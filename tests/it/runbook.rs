//! Every command `ops/RUNBOOK.md` tells an operator to run exists: each `chronicle …` line of
//! its code blocks parses (run with `--help` appended: an unknown subcommand or option fails),
//! and each `ops/…` script it names is there and executable.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The shell lines of the runbook's fenced code blocks, continuation lines joined.
fn code_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.trim();
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        if !pending.is_empty() && !pending.starts_with('#') {
            lines.push(std::mem::take(&mut pending));
        }
        pending.clear();
    }
    lines
}

/// The inline code spans of the prose that are commands (`chronicle …`, `ops/….sh`).
fn inline_commands(markdown: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut in_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        for (n, span) in line.split('`').enumerate() {
            let script = span
                .split_whitespace()
                .next()
                .is_some_and(|word| word.starts_with("ops/") && word.ends_with(".sh"));
            if n % 2 == 1 && (span.starts_with("chronicle ") || script) {
                spans.push(span.to_owned());
            }
        }
    }
    spans
}

/// Each simple command of a line: split at pipes, `&&`, `;` and redirections, leading
/// `VAR=value` assignments dropped.
fn commands(line: &str) -> Vec<Vec<String>> {
    line.split(['|', ';'])
        .flat_map(|part| part.split("&&"))
        .map(|part| {
            part.split_whitespace()
                .take_while(|word| !word.starts_with(['<', '>']) && *word != "2>&1")
                .skip_while(|word| {
                    word.split_once('=').is_some_and(|(name, _)| {
                        !name.is_empty()
                            && name
                                .chars()
                                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    })
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|words| !words.is_empty())
        .collect()
}

#[test]
fn every_command_in_the_runbook_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let runbook = std::fs::read_to_string(root.join("ops/RUNBOOK.md")).expect("ops/RUNBOOK.md");
    let mut chronicle_commands = 0;
    let mut scripts = 0;
    let lines = code_lines(&runbook)
        .into_iter()
        .chain(inline_commands(&runbook));
    for line in lines {
        for words in commands(&line) {
            let program = words[0].as_str();
            if program == "chronicle" {
                chronicle_commands += 1;
                let output = Command::new(env!("CARGO_BIN_EXE_chronicle"))
                    .args(&words[1..])
                    .arg("--help")
                    .env_remove("CHRONICLE_CONFIG")
                    .output()
                    .expect("run chronicle");
                assert!(
                    output.status.success(),
                    "`{}` does not parse: {}",
                    words.join(" "),
                    String::from_utf8_lossy(&output.stderr)
                );
            } else if program.starts_with("ops/") {
                scripts += 1;
                let script = root.join(program);
                let mode = std::fs::metadata(&script)
                    .unwrap_or_else(|_| panic!("{program} does not exist"))
                    .permissions()
                    .mode();
                assert!(mode & 0o111 != 0, "{program} is not executable");
            }
        }
    }
    assert!(
        chronicle_commands >= 10,
        "{chronicle_commands} chronicle commands"
    );
    assert!(scripts >= 2, "{scripts} ops scripts");
}

#[test]
fn the_runbook_commands_are_read_as_an_operator_types_them() {
    let lines = code_lines("text\n```sh\n# a comment\nX=1 chronicle audit verify > out.json\nops/backup.sh \\\n  /backups/now\n```\n");
    assert_eq!(
        lines,
        [
            "X=1 chronicle audit verify > out.json",
            "ops/backup.sh  /backups/now"
        ]
    );
    assert_eq!(commands(&lines[0]), [["chronicle", "audit", "verify"]]);
    assert_eq!(
        commands("chronicle events export | gzip && ops/restore.sh dir"),
        [
            vec!["chronicle", "events", "export"],
            vec!["gzip"],
            vec!["ops/restore.sh", "dir"]
        ]
    );
}
