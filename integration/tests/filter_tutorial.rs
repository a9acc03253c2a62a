//! docs/filters.md's tutorial, run as written: every ```` ```sh tutorial ````
//! block in order, in one shell, in an empty directory with this build's
//! `weir` on the PATH; the ```` ```text tutorial-output ```` block after a
//! command block lists lines its output must contain, in that order. A page
//! that drifts from weir fails here.

use std::path::Path;
use std::process::Command;

use weir_integration::*;

struct Step {
    commands: String,
    expected: Vec<String>,
}

/// The tutorial's steps, from the page's fenced blocks.
fn steps(page: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let kind = match line.trim_end() {
            "```sh tutorial" => "sh",
            "```text tutorial-output" => "out",
            _ => continue,
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim_end() != "```").collect();
        match kind {
            "sh" => steps.push(Step { commands: body.join("\n"), expected: Vec::new() }),
            _ => {
                let step = steps.last_mut().expect("an output block follows a command block");
                assert!(step.expected.is_empty(), "two output blocks after one command block");
                step.expected = body.iter().filter(|l| !l.trim().is_empty()).map(|l| l.to_string()).collect();
            }
        }
    }
    steps
}

#[test]
fn the_filter_tutorial_runs_as_written() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/filters.md")).unwrap();
    let steps = steps(&page);
    assert!(steps.len() >= 8, "the tutorial's blocks were found: {}", steps.len());

    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(weir_bin(), bin.join("weir")).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    // one shell for every step (the page cd's and starts servers); what the
    // steps start in the background is stopped however the shell ends
    let mut script = String::from("set -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n");
    for (i, step) in steps.iter().enumerate() {
        script.push_str(&format!("echo '@@step {i}@@'\n{}\n", step.commands));
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("timeout")
        .args(["--signal=INT", "900", "bash", "-c", &script])
        .current_dir(&work)
        .env("PATH", path)
        // the filter crates' builds share the authoring test's target
        // directory (std and the SDK are built once per machine)
        .env("CARGO_TARGET_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/filter-authoring"))
        .env_remove("WEIR_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "the tutorial stopped: {:?}\n{stdout}\n{stderr}", out.status);

    for (i, step) in steps.iter().enumerate() {
        let marker = format!("@@step {i}@@");
        let from = stdout.find(&marker).unwrap_or_else(|| panic!("step {i} never ran:\n{stdout}")) + marker.len();
        let to = stdout[from..].find("@@step ").map_or(stdout.len(), |at| from + at);
        let said: Vec<&str> = stdout[from..to].lines().collect();
        // each expected line within one line of the output, in order
        let mut at = 0;
        for want in &step.expected {
            match said[at..].iter().position(|line| line.contains(want.as_str())) {
                Some(found) => at += found + 1,
                None => panic!(
                    "step {i}:\n{}\nprinted:\n{}\nwithout {want:?} (in this order: {:?})",
                    step.commands,
                    said.join("\n"),
                    step.expected
                ),
            }
        }
    }
}
